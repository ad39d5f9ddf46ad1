"""Tree attention: the one function to swap for the Triton kernel (specmoe/kernels) later."""
from __future__ import annotations

import math

import torch


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked grouped-query attention of tree tokens over the whole static cache.

    q [H, T, hd]; k, v [Hkv, S, hd] (H a multiple of Hkv); mask [T, S] bool, True = attend
    (the prefix plus each token's ancestors and itself). Returns [H, T, hd].
    softmax(q k^T / sqrt(hd)) v (Vaswani et al. 2017, eq. 1), written as two batched matmuls per
    KV head: a handful of kernels (this model is launch-bound), and on CPU ~10x faster than
    scaled_dot_product_attention with enable_gqa and a boolean mask.
    """
    h, t, hd = q.shape
    hkv = k.shape[0]
    qg = q.reshape(hkv, (h // hkv) * t, hd)                        # rows ordered (group, token)
    s = torch.baddbmm(torch.zeros((), dtype=q.dtype, device=q.device), qg, k.transpose(1, 2),
                      beta=0.0, alpha=1.0 / math.sqrt(hd))          # [Hkv, g*T, S]
    s = s.masked_fill(~mask.repeat(h // hkv, 1), float("-inf"))
    return torch.bmm(torch.softmax(s.float(), -1).to(v.dtype), v).reshape(h, t, hd)
