from pathlib import Path

import pytest

# The real data sits in ../shared/data beside the checkout (DESIGN.md); look upwards for it.
SHARED_DATA = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
                    if (p / "shared" / "data").is_dir()), Path("/nonexistent"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data (the real traces) is not beside this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def esft_intent(shared_data):
    from specmoe.traces.importers import import_esft
    return import_esft(shared_data / "routing" / "deepseek-v2-lite-esft" / "intent")


@pytest.fixture(scope="session")
def embedded_trace():
    from specmoe.traces import load
    from specmoe.traces.commands import DEFAULT_TRACE
    return load(DEFAULT_TRACE)
