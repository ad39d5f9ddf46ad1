"""Kernel tests run on CPU through Triton's interpreter, with every wrapper-allocated buffer
poisoned (NaN / large negative ints) so unwritten elements fail the comparison."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["SPECMOE_KERNELS_POISON"] = "1"

import pytest  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("triton")
