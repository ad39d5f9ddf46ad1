"""Tree attention in plain torch (the model is fp32; the Triton kernel in specmoe/kernels takes bf16/fp16)."""
from __future__ import annotations

import math

import torch


def blocked_rows(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """mask [T, S] bool (True = attend) -> blocked [groups * T, S] (True = masked out), rows
    ordered (group, token). Computed once per forward and shared by every layer."""
    return ~mask.repeat(groups, 1)


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """Masked grouped-query attention of tree tokens over the whole static cache.

    q [H, T, hd]; k, v [Hkv, S, hd] (H a multiple of Hkv); blocked [H/Hkv * T, S] from
    `blocked_rows` (the prefix plus each token's ancestors and itself are visible).
    Returns [H, T, hd]. softmax(q k^T / sqrt(hd)) v (Vaswani et al. 2017, eq. 1), written as two
    batched matmuls per KV head: a handful of kernels (this model is launch-bound), and on CPU
    ~10x faster than scaled_dot_product_attention with enable_gqa and a boolean mask.
    """
    h, t, hd = q.shape
    hkv = k.shape[0]
    qg = q.reshape(hkv, (h // hkv) * t, hd)                        # rows ordered (group, token)
    s = torch.baddbmm(torch.zeros((), dtype=q.dtype, device=q.device), qg, k.transpose(1, 2),
                      beta=0.0, alpha=1.0 / math.sqrt(hd))          # [Hkv, g*T, S]
    s = s.masked_fill(blocked, float("-inf"))
    return torch.bmm(torch.softmax(s.float(), -1).to(v.dtype), v).reshape(h, t, hd)
