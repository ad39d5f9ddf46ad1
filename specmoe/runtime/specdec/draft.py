"""Layer-skipping self-draft (early exit) and its online-distillation (OSD) buffer.

The draft is the target's first `n_layers` decoder layers, then a small trainable low-rank
residual adapter, the target's final norm and its tied LM head (early exit, as in LayerSkip,
Elhoushi et al. 2024, without their training recipe). Because the first layers ARE the target's,
the draft reuses the target's KV cache for the committed prefix; it only writes the draft
tree's slots, which the verify pass then overwrites.

Online speculative decoding (Liu et al. 2023, arXiv:2310.07177): while serving, positions where
the draft's top candidate differed from the target's token are buffered with the draft's hidden
state and the target's logits; `distill` fits the adapter to the target there by forward KL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class EarlyExitDraft(torch.nn.Module):
    """logits = lm_head(norm(h + up(down(h)))), h = residual stream after `n_layers` layers."""

    def __init__(self, target, n_layers: int, rank: int = 64):
        super().__init__()
        if not 0 < n_layers < target.cfg.n_layers:
            raise ValueError(f"draft layers must be in 1..{target.cfg.n_layers - 1}, got {n_layers}")
        self.target, self.n_layers = target, n_layers
        dim = target.cfg.dim
        self.down = torch.nn.Linear(dim, rank, bias=False, device=target.device, dtype=target.dtype)
        self.up = torch.nn.Linear(rank, dim, bias=False, device=target.device, dtype=target.dtype)
        torch.nn.init.zeros_(self.up.weight)  # starts as the plain early-exit head

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """h [T, dim] -> logits [T, vocab] (float32)."""
        return self.target.logits(h + self.up(self.down(h)))


class MistakeBuffer:
    """Ring buffer of (draft hidden [dim], target logits [vocab]) at the draft's mistakes."""

    def __init__(self, capacity: int, dim: int, vocab: int, device, dtype=torch.bfloat16):
        self.h = torch.zeros(capacity, dim, device=device)
        self.z = torch.zeros(capacity, vocab, device=device, dtype=dtype)
        self.capacity, self.count, self.seen = capacity, 0, 0

    def add(self, h: torch.Tensor, z: torch.Tensor) -> None:
        """h [m, dim], z [m, vocab]."""
        for i in range(h.shape[0]):
            j = self.seen % self.capacity
            self.h[j], self.z[j] = h[i], z[i]
            self.seen += 1
        self.count = min(self.seen, self.capacity)


def distill(draft: EarlyExitDraft, buf: MistakeBuffer, steps: int = 30, batch: int = 64,
            lr: float = 1e-3, temperature: float = 1.0, seed: int = 0) -> float:
    """Fit the adapter by forward KL(p_target || q_draft) on buffered positions; returns last loss."""
    if buf.count == 0:
        return float("nan")
    params = list(draft.down.parameters()) + list(draft.up.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator(device="cpu").manual_seed(seed)
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, buf.count, (min(batch, buf.count),), generator=g).to(buf.h.device)
            h = buf.h[idx].to(draft.target.dtype)
            logp = F.log_softmax(buf.z[idx].float() / temperature, -1)
            logq = F.log_softmax(draft.head(h) / temperature, -1)
            loss = F.kl_div(logq, logp, log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=False)  # keep .grad storage: CUDA graphs read params in place
            loss.backward()
            opt.step()
    return float(loss.detach())
