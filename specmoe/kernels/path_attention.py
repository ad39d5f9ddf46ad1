"""Batch-invariant tree attention for verify steps: each query walks its own key sequence.

Query t of a draft tree sees the committed prefix (cache slots 0 .. n-1) and then its
ancestors, root first, ending with itself (slots n + path[t, 0 .. depth[t]]). The kernel
visits exactly that logical key sequence, in that order, in blocks of BLOCK_N logical
positions, with an online softmax (FlashAttention) per query and chunk (below), so query t's
arithmetic is the same whatever else is in the call: the token at position p
gets bit-identical attention output whether it is verified as node t of an 81-node tree or
decoded autoregressively once its ancestors are committed (then the prefix is longer and the
path is the token alone; the logical sequence and its blocks are the same). `tree_attention.py`
is the throughput kernel (a mask over a contiguous tree block, split-K over the cache); this
one trades that for invariance, which greedy speculative decoding needs to match
autoregressive output exactly.

One program per (block of QB queries, KV head, chunk of CHUNK logical positions). A block
of keys wholly inside the committed prefix is the same keys for all queries: the program does
it once for its QB queries, their G heads sharing the K/V tiles as the rows of one dot (at
G = 3, QB = 2 fills 6 of 16 rows, QB = 5 15). Then, query by query, it continues that softmax
state through the query's own blocks of the chunk (the prefix's last partial block and its
ancestor path), the query's rows of the same 16-row dot. Scores and P V are tensor-core dots
(a multiply-and-sum in registers ran 5x slower at 81 queries: register pressure); an MMA row
does not see the other rows, so which queries share a program (QB) changes no bits and is
chosen per call.

Chunks (flash-decoding) split long contexts over programs; the last chunk program to finish
merges every row's partials in chunk order, each row stopping at its own query's last chunk
(a merge of one partial is exact, so a query gets the same bits in a block of longer queries
as alone). At SmolLM2's contexts (< 1K tokens) the tuned CHUNK is 1024: one program walks
the whole context. Session 3's kernel ran one program per (query, KV head, 64-key chunk) and
its grid of mostly idle programs made the 81-query call 2.6x the 1-query call
(benchmarks/results/tune_fused_llama_h200_attention_session3.json).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import empty, lookup, next_pow2

LOG2E = 1.4426950408889634
BLOCK_N = 32     # logical key positions per step of the online softmax
CHUNK = 128      # logical key positions per program (flash-decoding split, merged in chunk order)


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
def _path_attn_kernel(Q, KC, VC, O, Nbuf, Depth, Path, WS, CNT, T,
                      stride_qm, stride_ch, stride_cs, stride_om, stride_pt, qk_scale,
                      G: tl.constexpr, QB: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr,
                      D_P: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                      N_CHUNKS: tl.constexpr, PREC: tl.constexpr):
    """Program (queries tb * QB .. tb * QB + QB - 1, KV head kvh, chunk c of CHUNK logical
    positions); row r of its tiles is head r % G of query tb * QB + r // G."""
    tb = tl.program_id(0)
    kvh = tl.program_id(1)
    c = tl.program_id(2)
    n = tl.load(Nbuf).to(tl.int32)
    d = tl.arange(0, D_P)
    d_ok = d < D
    r = tl.arange(0, ROWS)
    qi = r // G
    g = r % G
    tr = tb * QB + qi
    r_ok = (r < QB * G) & (tr < T)
    L_r = n + tl.load(Depth + tr, mask=r_ok, other=0) + 1          # each row's key count
    n_ch = tl.cdiv(tl.max(tl.where(r_ok, L_r, 0), 0), CHUNK)       # chunks the block needs
    lo = c * CHUNK
    if c < n_ch:
        q = tl.load(Q + tr[:, None] * stride_qm + (kvh * G + g)[:, None] * D + d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0) * qk_scale
        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, D_P], tl.float32)
        j_lo = lo // BLOCK_N
        j_hi = (lo + CHUNK) // BLOCK_N
        j_shared = tl.minimum(n // BLOCK_N, j_hi)        # blocks wholly inside the prefix: shared
        for j in range(j_lo, j_shared):
            idx = j * BLOCK_N + tl.arange(0, BLOCK_N)
            m_i, l_i, acc = _softmax_block(q, KC, VC, kvh, idx, idx < n, d, d_ok, stride_ch, stride_cs,
                                           m_i, l_i, acc, PREC)
        base = WS + ((tb * tl.num_programs(1) + kvh) * N_CHUNKS + c) * ROWS * (D_P + 2)
        for i in range(QB):                      # then each query's own blocks, from that state
            t = tb * QB + i
            if t < T:
                L = n + tl.load(Depth + t) + 1   # keys: prefix, then the path root..t
                if lo < L:
                    m_t, l_t, acc_t = m_i, l_i, acc
                    for j in range(tl.maximum(j_shared, j_lo), tl.minimum(j_hi, tl.cdiv(L, BLOCK_N))):
                        idx = j * BLOCK_N + tl.arange(0, BLOCK_N)
                        valid = idx < L
                        in_tree = idx >= n
                        node = tl.load(Path + t * stride_pt + (idx - n), mask=valid & in_tree, other=0)
                        slot = tl.where(in_tree, n + node, idx)
                        m_t, l_t, acc_t = _softmax_block(q, KC, VC, kvh, slot, valid, d, d_ok, stride_ch,
                                                         stride_cs, m_t, l_t, acc_t, PREC)
                    mine = (qi == i) & (g < G)
                    if n_ch == 1:                # one chunk: the answer (a merge of one is exact)
                        tl.store(O + t * stride_om + (kvh * G + g)[:, None] * D + d[None, :],
                                 acc_t / l_t[:, None], mask=mine[:, None] & d_ok[None, :])
                    else:                        # park this chunk's partial (m, l, acc) rows
                        tl.store(base + r[:, None] * D_P + d[None, :], acc_t, mask=mine[:, None])
                        tl.store(base + ROWS * D_P + r, m_t, mask=mine)
                        tl.store(base + ROWS * D_P + ROWS + r, l_t, mask=mine)
        if n_ch > 1:
            tl.debug_barrier()                   # every row's partial before the count
            cnt = CNT + tb * tl.num_programs(1) + kvh
            if tl.atomic_add(cnt, 1, sem="acq_rel") == n_ch - 1:    # last chunk to finish: merge
                _merge(O, WS, tb, kvh, L_r, r_ok, tr, qi, g, d, d_ok, n_ch, stride_om,
                       G, ROWS, D, D_P, CHUNK, N_CHUNKS)
                tl.atomic_xchg(cnt, 0)


@triton.jit
def _merge(O, WS, tb, kvh, L_r, r_ok, tr, qi, g, d, d_ok, n_ch, stride_om,
           G: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, D_P: tl.constexpr,
           CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr):
    """Every row's chunk partials, in chunk order, one pass rescaling as the max grows; a row
    stops at its own query's last chunk (the same merge the query gets alone)."""
    r = tl.arange(0, ROWS)
    ch_r = tl.cdiv(L_r, CHUNK)
    m_all = tl.full([ROWS], float("-inf"), tl.float32)
    l_all = tl.zeros([ROWS], tl.float32)
    o = tl.zeros([ROWS, D_P], tl.float32)
    for j in range(n_ch):
        b = WS + ((tb * tl.num_programs(1) + kvh) * N_CHUNKS + j) * ROWS * (D_P + 2)
        use = r_ok & (j < ch_r)
        m_j = tl.load(b + ROWS * D_P + r, mask=use, other=0.0, cache_modifier=".cg")
        l_j = tl.load(b + ROWS * D_P + ROWS + r, mask=use, other=0.0, cache_modifier=".cg")
        o_j = tl.load(b + r[:, None] * D_P + d[None, :], mask=use[:, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_all, m_j)
        a = tl.math.exp2(m_all - m_new)
        w = tl.math.exp2(m_j - m_new)
        l_all = tl.where(use, l_all * a + l_j * w, l_all)
        o = tl.where(use[:, None], o * a[:, None] + o_j * w[:, None], o)
        m_all = tl.where(use, m_new, m_all)
    l_all = tl.where(r_ok, l_all, 1.0)           # padding rows: 0 / 0 otherwise (not stored)
    tl.store(O + tr[:, None] * stride_om + (kvh * G + g)[:, None] * D + d[None, :], o / l_all[:, None],
             mask=(r_ok & (g < G))[:, None] & d_ok[None, :])


def path_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n: torch.Tensor,
                   depth: torch.Tensor, path: torch.Tensor, block_n: int | None = None,
                   chunk: int | None = None, qb: int | None = None, precision: str = "tf32") -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over each query's prefix + ancestor path.

    q [T, H, hd] fp32; k_cache, v_cache [Hkv, S, hd] (one layer; the tree's K/V already in slots
    n .. n+T-1); n 0-d int tensor (committed length, read on the device); depth [T] int32;
    path [T, P] int32 with path[t, d] = tree index of t's ancestor at depth d (path[t, depth[t]]
    = t). precision: tl.dot's input_precision for q k^T and P V.
    block_n (keys per softmax step) and chunk (logical positions per program, a multiple of
    block_n) are part of a query's arithmetic, so fixed per head shape; qb (queries per
    program, 1 .. 16 // G) changes no bits and is free. Defaults: the device's tuned entry in
    configs.json ("path_attention"), else BLOCK_N, CHUNK and 16 // G.
    Returns [T, H * hd] fp32. Programs: ceil(T / qb) x Hkv x ceil(S / chunk); those past
    their queries' keys exit at once (the grid is static, so a step can be a CUDA graph).
    """
    from specmoe.kernels.dense import _scratch
    T, H, hd = q.shape
    hkv, S, _ = k_cache.shape
    G = H // hkv
    rows = max(16, next_pow2(G))                 # tl.dot's smallest M; QB queries fill it
    cfg = lookup("path_attention", q.device, f"{H},{hkv},{hd}", None,
                 {"BLOCK_N": BLOCK_N, "CHUNK": CHUNK, "QB": rows // G})
    block_n, chunk, qb = block_n or cfg["BLOCK_N"], chunk or cfg["CHUNK"], qb or cfg["QB"]
    if not 1 <= qb <= rows // G:
        raise ValueError(f"qb={qb}: 1 .. {rows // G} queries of {G} heads fit a {rows}-row tile")
    if chunk % block_n:
        raise ValueError(f"chunk={chunk} is not a multiple of block_n={block_n}")
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(2) == 1 and q.is_contiguous()
    out = empty((T, H * hd), torch.float32, q.device)
    d_p, n_chunks, n_tb = max(16, next_pow2(hd)), -(-S // chunk), triton.cdiv(T, qb)
    cnt, ws = _scratch(q.device, n_tb * hkv, n_tb * hkv * n_chunks * rows * (d_p + 2))
    _path_attn_kernel[(n_tb, hkv, n_chunks)](
        q, k_cache, v_cache, out, n, depth, path, ws, cnt, T,
        q.stride(0), k_cache.stride(0), k_cache.stride(1), out.stride(0), path.stride(0),
        LOG2E / math.sqrt(hd),
        G=G, QB=qb, ROWS=rows, D=hd, D_P=d_p, BLOCK_N=block_n, CHUNK=chunk, N_CHUNKS=n_chunks,
        PREC=precision)
    return out
