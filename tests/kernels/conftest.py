"""Kernel tests run on CPU through Triton's interpreter, with every wrapper-allocated buffer
poisoned (NaN / most negative ints) so unwritten elements fail the comparison."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # effective only if triton is not imported yet

import pytest  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    from specmoe.kernels import _common
    monkeypatch.setattr(_common, "POISON", True)
    yield
