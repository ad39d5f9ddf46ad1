"""Batch-invariant tree attention for verify steps: each query walks its own key sequence.

Query t of a draft tree sees the committed prefix (cache slots 0 .. n-1) and then its
ancestors, root first, ending with itself (slots n + path[t, 0 .. depth[t]]). The kernel
visits exactly that logical key sequence, in that order, in fixed chunks, so query t's
arithmetic is the same whatever else is in the call: the token at position p gets
bit-identical attention output whether it is verified as node t of an 81-node tree or decoded
autoregressively once its ancestors are committed (then the prefix is longer and the path is
the token alone; the logical sequence is the same). `tree_attention.py` is the throughput
kernel (a mask over a contiguous tree block, split-K over the cache); this one trades that for
invariance, which greedy speculative decoding needs to match autoregressive output exactly.

One program per (query, KV head, chunk of CHUNK logical keys). The chunk boundaries are
logical positions, the same for a query in a tree and in the autoregressive step. A chunk
inside the committed prefix is the same keys for all queries, so one program does it for QB
queries, their G heads (15 of 16 rows at G = 3) sharing its K/V tiles; other chunks each query
does alone, its G heads padded to 16 rows. The chunk that finishes last merges a query's
partial softmaxes in chunk order (flash-decoding, with a fixed merge order). Scores and P V
are tensor-core dots (a multiply-and-sum in registers ran 5x slower at 81 queries: register
pressure).
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
def _softmax_block(q, KC, VC, kvh, slot, valid, d, d_ok, stride_ch, stride_cs, m_i, l_i, acc,
                   PREC: tl.constexpr):
    """One online-softmax step (FlashAttention) of q [ROWS, D_P] over keys at cache `slot`
    [BLOCK_N] (those not `valid` masked out). Returns (m_i, l_i, acc)."""
    off = kvh * stride_ch + slot[:, None] * stride_cs + d[None, :]
    kv_ok = valid[:, None] & d_ok[None, :]
    k = tl.load(KC + off, mask=kv_ok, other=0.0)
    v = tl.load(VC + off, mask=kv_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)                 # [ROWS, BLOCK_N]
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p, v, input_precision=PREC)


@triton.jit
def _count_and_merge(t, kvh, n_ch, O, WS, CNT, stride_om, G: tl.constexpr, ROWS: tl.constexpr,
                     D: tl.constexpr, D_P: tl.constexpr, N_CHUNKS: tl.constexpr):
    """Count chunk arrivals of (t, kvh); the last one merges the partials in chunk order."""
    row = t * tl.num_programs(1) + kvh
    if tl.atomic_add(CNT + row, 1, sem="acq_rel") == n_ch - 1:
        g = tl.arange(0, ROWS)
        d = tl.arange(0, D_P)
        m_all = tl.full([ROWS], float("-inf"), tl.float32)
        l_all = tl.zeros([ROWS], tl.float32)
        o = tl.zeros([ROWS, D_P], tl.float32)
        for j in range(n_ch):                    # one pass, rescaling as the max grows
            b = WS + (row * N_CHUNKS + j) * ROWS * (D_P + 2)
            m_j = tl.load(b + ROWS * D_P + g, cache_modifier=".cg")
            l_j = tl.load(b + ROWS * D_P + ROWS + g, cache_modifier=".cg")
            o_j = tl.load(b + g[:, None] * D_P + d[None, :], cache_modifier=".cg")
            m_new = tl.maximum(m_all, m_j)
            a = tl.math.exp2(m_all - m_new)
            w = tl.math.exp2(m_j - m_new)
            l_all = l_all * a + l_j * w
            o = o * a[:, None] + o_j * w[:, None]
            m_all = m_new
        tl.store(O + t * stride_om + (kvh * G + g)[:, None] * D + d[None, :], o / l_all[:, None],
                 mask=(g < G)[:, None] & (d < D)[None, :])
        tl.atomic_xchg(CNT + row, 0)


@triton.jit
def _park(WS, t, kvh, c, g, row_ok, d, m_i, l_i, acc, ROWS: tl.constexpr, D_P: tl.constexpr,
          N_CHUNKS: tl.constexpr):
    """Store the partial (acc, m, l) of chunk c of query t (one, or one per row), rows g."""
    b = ((t * tl.num_programs(1) + kvh) * N_CHUNKS + c) * ROWS * (D_P + 2)
    tl.store(WS + (b + g * D_P)[:, None] + d[None, :], acc, mask=row_ok[:, None])
    tl.store(WS + b + ROWS * D_P + g, m_i, mask=row_ok)
    tl.store(WS + b + ROWS * D_P + ROWS + g, l_i, mask=row_ok)


@triton.jit
def _path_attn_kernel(Q, KC, VC, O, Nbuf, Depth, Path, WS, CNT, T,
                      stride_qm, stride_ch, stride_cs, stride_om, stride_pt, qk_scale,
                      G: tl.constexpr, QB: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr,
                      D_P: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
                      N_CHUNKS: tl.constexpr, PREC: tl.constexpr):
    """Program (query t, kvh, chunk c) over logical keys [c * CHUNK, (c + 1) * CHUNK).

    A chunk wholly inside the committed prefix is the same keys for every query: the first
    query of each block of QB does it for the block, the G heads of its QB queries sharing
    its K/V tiles as the ROWS rows of one dot (the block's other programs exit). Any other
    chunk each query walks through its own ancestor path. Either way a row's arithmetic
    is the same (an MMA row does not see the other rows), so a query gets the same bits
    whether the chunk is shared prefix here or its own path in another step.
    """
    t = tl.program_id(0)
    kvh = tl.program_id(1)
    c = tl.program_id(2)
    n = tl.load(Nbuf).to(tl.int32)
    d = tl.arange(0, D_P)
    d_ok = d < D
    lo = c * CHUNK
    if lo + CHUNK <= n:
        if t % QB == 0:                          # the block's first query does the shared chunk
            r = tl.arange(0, ROWS)
            tr = t + r // G
            g = r % G
            r_ok = (r < QB * G) & (tr < T)
            q = tl.load(Q + tr[:, None] * stride_qm + (kvh * G + g)[:, None] * D + d[None, :],
                        mask=r_ok[:, None] & d_ok[None, :], other=0.0) * qk_scale
            m_i = tl.full([ROWS], float("-inf"), tl.float32)
            l_i = tl.zeros([ROWS], tl.float32)
            acc = tl.zeros([ROWS, D_P], tl.float32)
            for s0 in range(lo, lo + CHUNK, BLOCK_N):
                idx = s0 + tl.arange(0, BLOCK_N)
                m_i, l_i, acc = _softmax_block(q, KC, VC, kvh, idx, idx < n, d, d_ok, stride_ch, stride_cs,
                                               m_i, l_i, acc, PREC)
            _park(WS, tr, kvh, c, g, r_ok, d, m_i, l_i, acc, ROWS, D_P, N_CHUNKS)
            tl.debug_barrier()                   # every row's partial before the counts
            for qi in range(QB):
                if t + qi < T:
                    n_ch = tl.cdiv(n + tl.load(Depth + t + qi) + 1, CHUNK)
                    _count_and_merge(t + qi, kvh, n_ch, O, WS, CNT, stride_om, G, ROWS, D, D_P, N_CHUNKS)
    else:
        L = n + tl.load(Depth + t) + 1           # keys: prefix, then the path root..t
        n_ch = tl.cdiv(L, CHUNK)
        if c < n_ch:
            g = tl.arange(0, ROWS)
            g_ok = g < G
            q = tl.load(Q + t * stride_qm + (kvh * G + g)[:, None] * D + d[None, :],
                        mask=g_ok[:, None] & d_ok[None, :], other=0.0) * qk_scale
            m_i = tl.full([ROWS], float("-inf"), tl.float32)
            l_i = tl.zeros([ROWS], tl.float32)
            acc = tl.zeros([ROWS, D_P], tl.float32)
            for s0 in range(lo, tl.minimum(lo + CHUNK, L), BLOCK_N):
                idx = s0 + tl.arange(0, BLOCK_N)
                valid = idx < L
                in_tree = idx >= n
                node = tl.load(Path + t * stride_pt + (idx - n), mask=valid & in_tree, other=0)
                slot = tl.where(in_tree, n + node, idx)
                m_i, l_i, acc = _softmax_block(q, KC, VC, kvh, slot, valid, d, d_ok, stride_ch,
                                               stride_cs, m_i, l_i, acc, PREC)
            if n_ch == 1:
                tl.store(O + t * stride_om + (kvh * G + g)[:, None] * D + d[None, :],
                         acc / l_i[:, None], mask=g_ok[:, None] & d_ok[None, :])
            else:
                _park(WS, t, kvh, c, g, g_ok, d, m_i, l_i, acc, ROWS, D_P, N_CHUNKS)
                tl.debug_barrier()
                _count_and_merge(t, kvh, n_ch, O, WS, CNT, stride_om, G, ROWS, D, D_P, N_CHUNKS)


def path_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n: torch.Tensor,
                   depth: torch.Tensor, path: torch.Tensor, chunk: int | None = None,
                   block_n: int | None = None, precision: str = "tf32") -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over each query's prefix + ancestor path.

    q [T, H, hd] fp32; k_cache, v_cache [Hkv, S, hd] (one layer; the tree's K/V already in slots
    n .. n+T-1); n 0-d int tensor (committed length, read on the device); depth [T] int32;
    path [T, P] int32 with path[t, d] = tree index of t's ancestor at depth d (path[t, depth[t]]
    = t). precision: tl.dot's input_precision for q k^T and P V; chunk, block_n default to the
    device's tuned entry in configs.json ("path_attention"), else CHUNK, BLOCK_N.
    Returns [T, H * hd] fp32. Programs: T x Hkv x ceil(S / chunk); those past a query's keys,
    or of a shared prefix chunk another query does, exit at once (the grid is static, so a step can be a CUDA graph).
    """
    from specmoe.kernels.dense import _scratch
    T, H, hd = q.shape
    hkv, S, _ = k_cache.shape
    cfg = lookup("path_attention", q.device, f"{H},{hkv},{hd}", None, {"CHUNK": CHUNK, "BLOCK_N": BLOCK_N})
    chunk, block_n = chunk or cfg["CHUNK"], block_n or cfg["BLOCK_N"]
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(2) == 1 and q.is_contiguous()
    out = empty((T, H * hd), torch.float32, q.device)
    G = H // hkv
    rows = max(16, next_pow2(G))                 # tl.dot's smallest M; QB queries fill it
    qb, d_p, n_chunks = rows // G, max(16, next_pow2(hd)), -(-S // chunk)
    cnt, ws = _scratch(q.device, T * hkv, T * hkv * n_chunks * rows * (d_p + 2))
    _path_attn_kernel[(T, hkv, n_chunks)](
        q, k_cache, v_cache, out, n, depth, path, ws, cnt, T,
        q.stride(0), k_cache.stride(0), k_cache.stride(1), out.stride(0), path.stride(0),
        LOG2E / math.sqrt(hd),
        G=G, QB=qb, ROWS=rows, D=hd, D_P=d_p, CHUNK=chunk, BLOCK_N=block_n, N_CHUNKS=n_chunks,
        PREC=precision)
    return out
