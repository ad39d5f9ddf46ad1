"""Plain-torch references for the Triton kernels: written for clarity, not speed.

Each one is an independent implementation (loops, masked SDPA), computed in float32 unless the
caller passes another dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_parents(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """Random trees for tests and benchmarks: parents [B, T] long, parents[:, i] uniform in [0, i), root -1."""
    p = torch.zeros(B, T, dtype=torch.long)
    p[:, 0] = -1
    for i in range(1, T):
        p[:, i] = torch.randint(0, i, (B,), generator=gen)
    return p


def ancestor_mask_ref(parents: torch.Tensor) -> torch.Tensor:
    """parents [B, T] -> anc [B, T, T] bool, anc[b, i, j] iff j is i or an ancestor of i (walk up)."""
    B, T = parents.shape
    anc = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            j = i
            while j >= 0:
                anc[b, i, j] = True
                j = int(parents[b, j])
    return anc


def tree_attention_ref(q, k_cache, v_cache, cache_lens, parents, sm_scale=None, dtype=torch.float32):
    """Masked SDPA per sequence. Shapes as in `tree_attention`; returns [B, T, Hq, D] in `dtype`."""
    B, T, HQ, D = q.shape
    G = HQ // k_cache.shape[2]
    anc = ancestor_mask_ref(parents.cpu())
    outs = []
    for b in range(B):
        L = int(cache_lens[b])
        k = k_cache[b, : L + T].to(dtype).transpose(0, 1).repeat_interleave(G, 0)   # [Hq, L+T, D]
        v = v_cache[b, : L + T].to(dtype).transpose(0, 1).repeat_interleave(G, 0)
        mask = torch.cat([torch.ones(T, L, dtype=torch.bool), anc[b]], 1).to(q.device)  # [T, L+T]
        o = F.scaled_dot_product_attention(q[b].to(dtype).transpose(0, 1), k, v, attn_mask=mask,
                                           scale=sm_scale)          # [Hq, T, D]
        outs.append(o.transpose(0, 1))
    return torch.stack(outs)


def moe_ref(x, w13, w2, topk_ids, topk_weights, dtype=torch.float32):
    """Per-expert loop. x [M, H]; w13 [E, 2F, H] (gate rows then up rows); w2 [E, H, F];
    topk_ids [M, k] (ids outside [0, E) are dropped); topk_weights [M, k]. Returns [M, H]."""
    E, F2, H = w13.shape
    Fd = F2 // 2
    out = torch.zeros(x.shape[0], H, dtype=dtype, device=x.device)
    for e in range(E):
        tok, slot = torch.where(topk_ids == e)
        if tok.numel() == 0:
            continue
        xe = x[tok].to(dtype)
        w = w13[e].to(dtype)
        hgate, hup = xe @ w[:Fd].T, xe @ w[Fd:].T
        ye = (F.silu(hgate) * hup) @ w2[e].to(dtype).T
        out.index_add_(0, tok, ye * topk_weights[tok, slot, None].to(dtype))
    return out


def moe_align_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Per-expert lists of (token, slot) pair indices p = token * k + slot, in token order,
    each padded with the sentinel M*k to a multiple of block_m; experts in id order.

    Returns (sorted2pair [num_padded], block2expert [num_padded // block_m], pair2sorted [M*k]
    with -1 for dropped pairs).
    """
    flat = topk_ids.flatten().cpu()
    n = flat.numel()
    sorted2pair, block2expert = [], []
    pair2sorted = torch.full((n,), -1, dtype=torch.int32)
    for e in range(num_experts):
        pairs = [p for p in range(n) if int(flat[p]) == e]
        padded = -(-len(pairs) // block_m) * block_m
        for i, p in enumerate(pairs):
            pair2sorted[p] = len(sorted2pair) + i
        sorted2pair += pairs + [n] * (padded - len(pairs))
        block2expert += [e] * (padded // block_m)
    return (torch.tensor(sorted2pair, dtype=torch.int32), torch.tensor(block2expert, dtype=torch.int32),
            pair2sorted)


def pack_by_rank_ref(topk_ids: torch.Tensor, expert2rank: torch.Tensor, num_ranks: int):
    """Each token is sent once to every distinct rank that holds one of its experts.

    Returns (send_counts [R], send2token [num_sends] grouped by rank, tokens ascending,
    token2slot [M, R] with the send slot or -1).
    """
    M, k = topk_ids.shape
    counts = torch.zeros(num_ranks, dtype=torch.int32)
    token2slot = torch.full((M, num_ranks), -1, dtype=torch.int32)
    send2token = []
    for r in range(num_ranks):
        for m in range(M):
            ranks = {int(expert2rank[e]) for e in topk_ids[m].tolist() if 0 <= e < len(expert2rank)}
            if r in ranks:
                token2slot[m, r] = len(send2token)
                send2token.append(m)
                counts[r] += 1
    return counts, torch.tensor(send2token, dtype=torch.int32), token2slot


def rms_norm_ref(x, w, eps):
    """x [M, K] -> x / sqrt(mean(x^2) + eps) * w, in float64."""
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w.double()


def linear_ref(x, w, norm_w=None, eps=0.0, residual=None):
    """[rmsnorm](x) @ w^T [+ residual] in float64."""
    a = rms_norm_ref(x, norm_w, eps) if norm_w is not None else x.double()
    y = a @ w.double().T
    return y if residual is None else y + residual.double()


def linear_bf16_ref(x, w, norm_w=None, eps=0.0, residual=None):
    """What `dense.linear` computes with bf16 weights, in float64: x * norm_w rounded to bf16
    (the dot's input), bf16 w, exact products; the RMSNorm scale rsqrt(mean(x^2) + eps) of the
    fp32 x applied to the sums."""
    a = x.float() * norm_w.float() if norm_w is not None else x.float()
    y = a.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T
    if norm_w is not None:
        y = y * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + eps)
    return y if residual is None else y + residual.double()


def swiglu_ref(x, norm_w, w1, w3, eps):
    a = rms_norm_ref(x, norm_w, eps)
    return F.silu(a @ w1.double().T) * (a @ w3.double().T)


def qkv_rope_ref(x, norm_w, wqkv, pos, n_heads, n_kv, rope_base, eps):
    """Q, K, V [M, heads, hd] in float64: rmsnorm, projection, RoPE on adjacent pairs
    (2i, 2i+1) rotated by pos * rope_base^(-2i / hd) for Q and K."""
    hd = wqkv.shape[0] // (n_heads + 2 * n_kv)
    y = (rms_norm_ref(x, norm_w, eps) @ wqkv.double().T).view(x.shape[0], -1, hd)
    inv = rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.double()[:, None, None] * inv                          # [M, 1, hd/2]
    rot = y.clone()
    e, o = y[..., 0::2], y[..., 1::2]
    rot[..., 0::2] = e * ang.cos() - o * ang.sin()
    rot[..., 1::2] = e * ang.sin() + o * ang.cos()
    return rot[:, :n_heads], rot[:, n_heads: n_heads + n_kv], y[:, n_heads + n_kv:]
