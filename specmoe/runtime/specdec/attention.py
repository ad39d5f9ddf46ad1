"""Tree attention: the one function to swap for the Triton kernel (specmoe/kernels) later."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked attention of tree tokens over the whole static cache.

    q [H, T, hd]; k, v [Hkv, S, hd] (H a multiple of Hkv, grouped-query attention);
    mask [T, S] bool, True = attend (the prefix plus each token's ancestors and itself).
    Returns [H, T, hd]. Scale 1/sqrt(hd) (Vaswani et al. 2017, eq. 1).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
