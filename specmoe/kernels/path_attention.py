"""Batch-invariant tree attention for verify steps: each query walks its own key sequence.

Query t of a draft tree sees the committed prefix (cache slots 0 .. n-1) and then its
ancestors, root first, ending with itself (slots n + path[t, 0 .. depth[t]]). The kernel
visits exactly that logical key sequence, in that order, in fixed BLOCK_N chunks, so query t's
arithmetic is the same whatever else is in the call: the token at position p gets
bit-identical attention output whether it is verified as node t of an 81-node tree or decoded
autoregressively once its ancestors are committed (then the prefix is longer and the path is
the token alone; the logical sequence is the same). `tree_attention.py` is the throughput
kernel (a mask over a contiguous tree block, split-K over the cache); this one trades that for
invariance, which greedy speculative decoding needs to match autoregressive output exactly.

One program per (query token, KV head, chunk of CHUNK logical keys): the G query heads of the
group share each K/V tile; the chunk boundaries are logical positions, the same for a query in
a tree and in the autoregressive step, and the chunk that finishes last merges the partial
softmaxes in chunk order (flash-decoding, with a fixed merge order). Scores and P V are
tensor-core dots over the G query heads padded to 16 rows (13 of 16 wasted at G = 3, but a
multiply-and-sum in registers ran 5x slower at 81 queries: register pressure).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import empty, lookup, next_pow2

LOG2E = 1.4426950408889634
CHUNK = 128      # keys per program; a query's keys [0, L) split at fixed logical positions
BLOCK_N = 32     # keys per inner iteration


@triton.jit
def _path_attn_kernel(Q, KC, VC, O, Nbuf, Depth, Path, WS, CNT,
                      stride_qm, stride_ch, stride_cs, stride_om, stride_pt, qk_scale,
                      G: tl.constexpr, G_P: tl.constexpr, D: tl.constexpr, D_P: tl.constexpr,
                      CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, N_CHUNKS: tl.constexpr, PREC: tl.constexpr):
    """Program (t, kvh, c): online softmax of query t's G heads over logical keys
    [c * CHUNK, (c + 1) * CHUNK) of its sequence; the last chunk to finish merges them."""
    t = tl.program_id(0)
    kvh = tl.program_id(1)
    c = tl.program_id(2)
    n = tl.load(Nbuf).to(tl.int32)
    L = n + tl.load(Depth + t) + 1               # keys: prefix, then the path root..t
    n_ch = tl.cdiv(L, CHUNK)
    if c < n_ch:
        g = tl.arange(0, G_P)
        d = tl.arange(0, D_P)
        g_ok, d_ok = g < G, d < D
        head = kvh * G + g
        q = tl.load(Q + t * stride_qm + head[:, None] * D + d[None, :],
                    mask=g_ok[:, None] & d_ok[None, :], other=0.0) * qk_scale
        m_i = tl.full([G_P], float("-inf"), tl.float32)
        l_i = tl.zeros([G_P], tl.float32)
        acc = tl.zeros([G_P, D_P], tl.float32)
        for s0 in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, L), BLOCK_N):
            idx = s0 + tl.arange(0, BLOCK_N)
            valid = idx < L
            in_tree = idx >= n
            node = tl.load(Path + t * stride_pt + (idx - n), mask=valid & in_tree, other=0)
            slot = tl.where(in_tree, n + node, idx)
            off = kvh * stride_ch + slot[:, None] * stride_cs + d[None, :]
            kv_ok = valid[:, None] & d_ok[None, :]
            k = tl.load(KC + off, mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC)                   # [G_P, BLOCK_N]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(VC + off, mask=kv_ok, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PREC)
            m_i = m_new
        out_ptr = O + t * stride_om + head[:, None] * D + d[None, :]
        out_ok = g_ok[:, None] & d_ok[None, :]
        if n_ch == 1:
            tl.store(out_ptr, acc / l_i[:, None], mask=out_ok)
        else:                                    # park (m, l, acc); the last chunk merges in order
            row = (t * tl.num_programs(1) + kvh)
            base = WS + (row * N_CHUNKS + c) * G_P * (D_P + 2)
            tl.store(base + g[:, None] * D_P + d[None, :], acc)
            tl.store(base + G_P * D_P + g, m_i)
            tl.store(base + G_P * D_P + G_P + g, l_i)
            tl.debug_barrier()
            if tl.atomic_add(CNT + row, 1, sem="acq_rel") == n_ch - 1:
                m_all = tl.full([G_P], float("-inf"), tl.float32)
                for j in range(0, n_ch):
                    b = WS + (row * N_CHUNKS + j) * G_P * (D_P + 2)
                    m_all = tl.maximum(m_all, tl.load(b + G_P * D_P + g, cache_modifier=".cg"))
                o = tl.zeros([G_P, D_P], tl.float32)
                l_all = tl.zeros([G_P], tl.float32)
                for j in range(0, n_ch):
                    b = WS + (row * N_CHUNKS + j) * G_P * (D_P + 2)
                    w = tl.math.exp2(tl.load(b + G_P * D_P + g, cache_modifier=".cg") - m_all)
                    l_all += w * tl.load(b + G_P * D_P + G_P + g, cache_modifier=".cg")
                    o += w[:, None] * tl.load(b + g[:, None] * D_P + d[None, :], cache_modifier=".cg")
                tl.store(out_ptr, o / l_all[:, None], mask=out_ok)
                tl.atomic_xchg(CNT + row, 0)


def path_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n: torch.Tensor,
                   depth: torch.Tensor, path: torch.Tensor, chunk: int | None = None,
                   block_n: int | None = None, precision: str = "tf32") -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over each query's prefix + ancestor path.

    q [T, H, hd] fp32; k_cache, v_cache [Hkv, S, hd] (one layer; the tree's K/V already in slots
    n .. n+T-1); n 0-d int tensor (committed length, read on the device); depth [T] int32;
    path [T, P] int32 with path[t, d] = tree index of t's ancestor at depth d (path[t, depth[t]]
    = t). precision: tl.dot's input_precision for q k^T and P V; chunk, block_n default to the
    device's tuned entry in configs.json ("path_attention"), else CHUNK, BLOCK_N.
    Returns [T, H * hd] fp32. Programs: T x Hkv x ceil(S / chunk); those past a query's
    keys exit at once (the grid is static, so a step can be a CUDA graph).
    """
    from specmoe.kernels.dense import _scratch
    T, H, hd = q.shape
    hkv, S, _ = k_cache.shape
    cfg = lookup("path_attention", q.device, f"{H},{hkv},{hd}", None, {"CHUNK": CHUNK, "BLOCK_N": BLOCK_N})
    chunk, block_n = chunk or cfg["CHUNK"], block_n or cfg["BLOCK_N"]
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(2) == 1 and q.is_contiguous()
    out = empty((T, H * hd), torch.float32, q.device)
    G = H // hkv
    g_p, d_p, n_chunks = max(16, next_pow2(G)), max(16, next_pow2(hd)), -(-S // chunk)
    cnt, ws = _scratch(q.device, T * hkv, T * hkv * n_chunks * g_p * (d_p + 2))
    _path_attn_kernel[(T, hkv, n_chunks)](
        q, k_cache, v_cache, out, n, depth, path, ws, cnt,
        q.stride(0), k_cache.stride(0), k_cache.stride(1), out.stride(0), path.stride(0),
        LOG2E / math.sqrt(hd),
        G=G, G_P=g_p, D=hd, D_P=d_p, CHUNK=chunk, BLOCK_N=block_n, N_CHUNKS=n_chunks, PREC=precision)
    return out
