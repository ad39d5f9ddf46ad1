"""The calibration grids (timed on CPU here, with shrunken grids) load in the simulator and
feed its compute model without falling back to the roofline inside the grid."""
import time

import numpy as np
import pytest

from specmoe.runtime import calibrate as cal


@pytest.fixture
def cpu_grids(monkeypatch):
    def time_us(fn, reps=1, warmup=0):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6
    monkeypatch.setattr(cal, "time_us", time_us)
    monkeypatch.setattr(cal, "GEMM_M", (1, 4))
    monkeypatch.setattr(cal, "GEMM_NK", ((64, 2048), (6720, 2048)))
    monkeypatch.setattr(cal, "GROUPED_TOKENS", (1, 4))
    monkeypatch.setattr(cal, "GROUPED_SHAPES", ((64, 32, (1, 2), 4),))
    monkeypatch.setattr(cal, "MLP_SHAPES", ((64, 96),))
    monkeypatch.setattr(cal, "ATTN_BATCH", (1, 2))
    monkeypatch.setattr(cal, "ATTN_CONTEXT", (4, 8))
    monkeypatch.setattr(cal, "ATTN_MODELS", ("deepseek-v2-lite",))
    monkeypatch.setattr(cal, "_randn", lambda shape, device, n=1: [
        __import__("torch").randn(shape, dtype=__import__("torch").bfloat16) for _ in range(n)])


def test_grids_load_in_simulator(cpu_grids):
    from specmoe.simulator.calibration import from_dict
    from specmoe.simulator.compute import ComputeModel
    from specmoe.specs import load_gpu, load_model

    data = {"device": "cpu", "date": "2026-11-30", "versions": {}, "command": "test",
            "gemm": cal.gemm_grid("cpu"), "grouped_gemm": cal.grouped_grid("cpu"),
            "attention": cal.attention_grid("cpu"),
            "collectives": {"all_to_all": {"nvlink": [[256.0, 50.0], [1024.0, 60.0]]}}}
    c = from_dict(data)
    assert len(c.tables["gemm"]) == 4 and len(c.tables["attention"]) == 4
    assert {(r["tokens"], r["experts"]) for r in data["grouped_gemm"] if r["ffn"] == 32} == {(1, 1), (4, 1), (4, 2)}
    cm = ComputeModel(load_model("deepseek-v2-lite"), load_gpu("h200"), c)
    # the attention lookup matches the absorbed-MLA rows (heads 16, kv 1, head_dim 576)
    t = cm.attention_us(np.array([1.0, 2.0]), 8, "decode")
    assert np.all(np.isfinite(t))
    assert not any("attention" in n and "roofline" in n for n in cm.notes), cm.notes
    assert not any("gemm n=6720" in n for n in cm.notes), cm.notes


def test_grouped_grid_times_the_triton_experts(cpu_grids, monkeypatch):
    """--experts triton: the grid times Experts.forward on the Triton kernel (what validate
    runs on CUDA); under TRITON_INTERPRET=1 the same shapes as the torch grid come out."""
    import os

    import torch

    from specmoe.runtime.model import Experts
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    seen = []
    real = Experts.forward

    def spy(self, *a):
        seen.append(self.backend)
        return real(self, *a)
    monkeypatch.setattr(Experts, "forward", spy)
    rows = cal.grouped_grid("cpu", "triton")
    assert {(r["tokens"], r["experts"]) for r in rows if r["ffn"] == 32} == {(1, 1), (4, 1), (4, 2)}
    assert seen and set(seen) == {"triton"} and all(r["us"] > 0 for r in rows)
