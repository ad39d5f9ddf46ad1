"""Token Recycling's per-step bookkeeping as five kernels (instead of ~60 small torch ops).

`fill_draft`: tok[i] = adj[tok[parent[i]], rank[i]], level by level, one program.
`accept_`: walk the draft tree against the target's choices and overwrite the adjacency rows
of the verified tokens with their top-k (one program), then compact the accepted path's K/V
to slots n, n+1, ... (one program per cache head). `topk_ids`: each verified node's top-k
tokens for the adjacency update (two kernels). Semantics are those of the numpy reference in
`specmoe.runtime.specdec.recycling` (`build_draft`, `walk_tree`, `update_adjacency`), which
the tests check against on random trees.

At 135M parameters a decode step is a few hundred kernels of a few microseconds each; the
bookkeeping was ~60 of them per verify step and none per AR step, i.e. a fixed ~0.2 ms that
only the speculative step paid.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import next_pow2


@triton.jit
def _fill_draft_kernel(Tok, Adj, Parent, Rank, Depth, T, MAX_DEPTH, K_ADJ, T_P: tl.constexpr):
    i = tl.arange(0, T_P)
    ok = i < T
    par = tl.load(Parent + i, mask=ok, other=0)
    rank = tl.load(Rank + i, mask=ok, other=0)
    dep = tl.load(Depth + i, mask=ok, other=0)
    for d in range(1, MAX_DEPTH + 1):
        lvl = ok & (dep == d)
        pt = tl.load(Tok + par, mask=lvl, other=0, cache_modifier=".cg")
        tl.store(Tok + i, tl.load(Adj + pt * K_ADJ + rank, mask=lvl, other=0), mask=lvl)
        tl.debug_barrier()                       # this level's tokens before the next level reads them


def fill_draft(tok: torch.Tensor, adj: torch.Tensor, parent: torch.Tensor, rank: torch.Tensor,
               depth: torch.Tensor, max_depth: int) -> None:
    """tok [T] long with tok[0] the root; adj [V, k] long; parent (root: itself), rank, depth [T]."""
    T = tok.numel()
    _fill_draft_kernel[(1,)](tok, adj, parent, rank, depth, T, max_depth, adj.shape[1],
                             T_P=max(16, next_pow2(T)))


@triton.jit
def _walk_kernel(Tok, Choice, Topk, Adj, Out, Parent, T, MAX_DEPTH, K_ADJ, SCRATCH_ROW,
                 T_P: tl.constexpr, D_P: tl.constexpr, K_P: tl.constexpr):
    """One program: follow the target's choices from the root (first child holding the
    chosen token, as `walk_tree`), write Out = [L, path [D+1], tok[path] [D+1], bonus], and
    overwrite the adjacency rows of the verified tokens (the last node wins on repeats)."""
    i = tl.arange(0, T_P)
    ok = i < T
    tok = tl.load(Tok + i, mask=ok, other=-1)
    par = tl.load(Parent + i, mask=ok & (i > 0), other=-1)          # the root has no parent here
    d = tl.arange(0, D_P)
    path = tl.zeros([D_P], tl.int32)
    cur = 0
    n_acc = 1
    for depth in range(1, MAX_DEPTH + 1):
        want = tl.load(Choice + cur)
        nxt = tl.min(tl.where((par == cur) & (tok == want), i, T_P), 0)
        if nxt < T_P:
            path = tl.where(d == depth, nxt, path)
            cur = nxt
            n_acc += 1
    n_d = MAX_DEPTH + 1
    tl.store(Out, n_acc.to(tl.int64))
    tl.store(Out + 1 + d, path.to(tl.int64), mask=d < n_d)
    tl.store(Out + 1 + n_d + d, tl.load(Tok + path, mask=d < n_d, other=0), mask=d < n_d)
    tl.store(Out + 1 + 2 * n_d, tl.load(Choice + cur))
    j = tl.arange(0, T_P)
    tok_j = tl.load(Tok + j, mask=j < T, other=-2)
    later = (tok[:, None] == tok_j[None, :]) & (j[None, :] > i[:, None])
    row = tl.where(tl.max(later.to(tl.int32), 1) > 0, SCRATCH_ROW, tok)
    kq = tl.arange(0, K_P)
    m = ok[:, None] & (kq < K_ADJ)[None, :]
    top = tl.load(Topk + i[:, None] * K_ADJ + kq[None, :], mask=m)
    tl.store(Adj + row[:, None] * K_ADJ + kq[None, :], top, mask=m)


@triton.jit
def _compact_kernel(KC, VC, Nbuf, Out, stride_kh, stride_ks, D_P: tl.constexpr, HD: tl.constexpr,
                    HD_P: tl.constexpr):
    """Program p: cache head p (of layers x kv heads): slots n + path[d] -> n + d, d < L."""
    p = tl.program_id(0)
    d = tl.arange(0, D_P)
    L = tl.load(Out)
    on_path = d < L
    path = tl.load(Out + 1 + d, mask=on_path, other=0)
    n = tl.load(Nbuf)
    h = tl.arange(0, HD_P)
    m = on_path[:, None] & (h < HD)[None, :]
    src = p * stride_kh + (n + path)[:, None] * stride_ks + h[None, :]
    dst = p * stride_kh + (n + d)[:, None] * stride_ks + h[None, :]
    kk = tl.load(KC + src, mask=m)
    vv = tl.load(VC + src, mask=m)
    tl.debug_barrier()                           # every row read before any row is overwritten
    tl.store(KC + dst, kk, mask=m)
    tl.store(VC + dst, vv, mask=m)


def accept_(tok: torch.Tensor, choice: torch.Tensor, topk_ids: torch.Tensor, adj: torch.Tensor,
            k_cache: torch.Tensor, v_cache: torch.Tensor, n: torch.Tensor, parent: torch.Tensor,
            max_depth: int) -> torch.Tensor:
    """Walk, update the adjacency, compact; returns out [2 * max_depth + 4] long:
    [L, path (D+1, past L don't-care), tokens on path (D+1), bonus] (L - 1 accepted drafts).

    tok, choice [T] long; topk_ids [T, k] long; adj [V + 1, k] long (row V is scratch for
    shadowed repeats); k_cache, v_cache [layers, kv_heads, S, hd]; n 0-d long (not advanced
    here); parent [T] (nodes numbered parents first).
    """
    T = tok.numel()
    kc = k_cache.view(-1, *k_cache.shape[2:])
    vc = v_cache.view(-1, *v_cache.shape[2:])
    assert kc.stride() == vc.stride()
    out = torch.empty(2 * max_depth + 4, dtype=torch.long, device=tok.device)
    d_p = max(16, next_pow2(max_depth + 1))
    _walk_kernel[(1,)](tok, choice, topk_ids, adj, out, parent, T, max_depth, adj.shape[1], adj.shape[0] - 1,
                       T_P=max(16, next_pow2(T)), D_P=d_p, K_P=max(16, next_pow2(adj.shape[1])))
    hd = kc.shape[2]
    _compact_kernel[(kc.shape[0],)](kc, vc, n, out, kc.stride(0), kc.stride(1), D_P=d_p, HD=hd,
                                    HD_P=max(16, next_pow2(hd)))
    return out


@triton.jit
def _keys(x, idx):
    """fp32 values and int indices -> int64 keys ordered by (value, then smaller index)."""
    b = x.to(tl.int32, bitcast=True)
    b = tl.where(b < 0, b ^ 0x7FFFFFFF, b)      # negative floats: reverse their magnitude order
    return (b.to(tl.int64) << 32) | (0xFFFFFFFF - idx.to(tl.int64))


@triton.jit
def _topk_chunk_kernel(X, Part, N, stride_x, K: tl.constexpr, CHUNK: tl.constexpr):
    """Program (row, chunk): the chunk's K largest keys, largest first, to Part[row, chunk]."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    idx = c * CHUNK + tl.arange(0, CHUNK)
    ok = idx < N
    keys = tl.where(ok, _keys(tl.load(X + row * stride_x + idx, mask=ok, other=0.0), idx), -(2**63))
    for r in tl.static_range(K):
        m = tl.max(keys, 0)
        tl.store(Part + (row * tl.num_programs(1) + c) * K + r, m)
        keys = tl.where(keys == m, -(2**63), keys)


@triton.jit
def _topk_merge_kernel(Part, Out, n_cand, K: tl.constexpr, C_P: tl.constexpr):
    row = tl.program_id(0)
    i = tl.arange(0, C_P)
    keys = tl.load(Part + row * n_cand + i, mask=i < n_cand, other=-(2**63))
    for r in tl.static_range(K):
        m = tl.max(keys, 0)
        tl.store(Out + row * K + r, 0xFFFFFFFF - (m & 0xFFFFFFFF))
        keys = tl.where(keys == m, -(2**63), keys)


def topk_ids(logits: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Indices [T, k] long of each row's k largest logits, largest first (ties: smaller index),
    as torch.topk(logits, k).indices. Two kernels: the top-k of each chunk, then of the
    candidates; torch.topk is ~7 kernels and ~90 us at 81 x 49152 on an H200."""
    T, N = logits.shape
    n_chunks = -(-N // chunk)
    part = torch.empty(T * n_chunks * k, dtype=torch.int64, device=logits.device)
    out = torch.empty((T, k), dtype=torch.int64, device=logits.device)
    _topk_chunk_kernel[(T, n_chunks)](logits, part, N, logits.stride(0), K=k, CHUNK=chunk)
    _topk_merge_kernel[(T,)](part, out, n_chunks * k, K=k, C_P=max(16, next_pow2(n_chunks * k)))
    return out
