"""Helpers shared by the kernel tests."""
import torch


def rel_err(out, ref) -> float:
    """Relative Frobenius error in float64; a non-finite output (an unwritten poisoned element) fails."""
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite output (unwritten poisoned element?)"
    return ((out - ref).norm() / ref.norm()).item()
