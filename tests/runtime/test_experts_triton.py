"""The runtime's experts on the project's Triton grouped GEMM (specmoe.kernels.moe.fused_moe)
give the torch path's output; on CPU this runs under TRITON_INTERPRET=1 at tiny sizes."""
import os

import pytest
import torch

from specmoe.runtime.model import Experts, init_random

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="Triton needs a GPU or TRITON_INTERPRET=1")


def _experts(slots=5, h=16, f=12):
    torch.manual_seed(0)
    ex = Experts(slots, h, f)
    with torch.no_grad():
        for p in ex.parameters():
            p.normal_(0, 0.3)
    return ex.eval()


def test_triton_backend_equals_torch_backend():
    ex = _experts()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 16, generator=g)
    slots = torch.randint(0, 5, (7, 3), generator=g)
    slots[2, 1] = -1  # a row whose second choice is on no local slot (EP: another rank)
    slots[4] = -1     # a row with no local expert at all
    w = torch.rand(7, 3, generator=g)
    with torch.no_grad():
        ref = ex(x, slots, w)
        before = [p.clone() for p in (ex.w_gate, ex.w_up, ex.w_down)]
        ex.set_backend("triton")
        got = ex(x, slots, w)
    assert ex.w_gate.data_ptr() == ex.w13.data_ptr()  # views of w13, no second copy
    for a, b in zip(before, (ex.w_gate, ex.w_up, ex.w_down)):
        assert torch.equal(a, b)
    assert got[4].abs().max() == 0 and ref[4].abs().max() == 0
    err = (got - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, float(err)
    with torch.no_grad():  # and the weights stay shared: init after set_backend reaches w13
        init_random(ex, seed=3)
        assert torch.equal(ex.w13[:, :12], ex.w_gate)


def test_bad_backend_is_rejected():
    with pytest.raises(ValueError, match="torch or triton"):
        _experts().set_backend("cuda")


def test_probe_accepts_triton_here_and_reports_a_broken_kernel(monkeypatch):
    from specmoe.kernels import moe
    from specmoe.runtime.commands import experts_backend
    from specmoe.runtime.model import triton_experts_check
    assert triton_experts_check("cpu") is None
    assert experts_backend("triton", "cpu") == ("triton", None)
    assert experts_backend(None, "cpu") == ("torch", None)

    def broken(*a, **k):
        raise RuntimeError("PTX compile failed")
    monkeypatch.setattr(moe, "fused_moe", broken)
    assert "PTX compile failed" in triton_experts_check("cpu")
    backend, why = experts_backend("triton", "cpu")
    assert backend == "torch" and "RuntimeError" in why
