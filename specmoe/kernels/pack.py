"""Pack tokens by destination EP rank for the all-to-all dispatch.

A token is sent once to every distinct rank that holds one of its top-k experts (the rank runs
all of the token's experts it holds on that one copy, as DeepEP's dispatch does). The send
buffer is grouped by rank, rank 0 first, tokens ascending within a rank, so `send_counts` are
the all-to-all split sizes.

  topk_ids [M, k], expert2rank [E]  ->  send_counts [R], send2token [S_max], token2slot [M, R],
                                        x_send [S_max, H] (rows past sum(send_counts) unused)
with S_max = M * min(k, R). The combine after the return all-to-all reads token2slot.
Three launches, all parallel over token blocks: count per (block, rank); prefix sums and slots;
row gather.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import cdiv, empty, next_pow2


@triton.jit
def _token_dest(TopkIds, Expert2Rank, tok, tok_ok, E, ranks,
                TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, R_POW2: tl.constexpr):
    """dest [BLOCK_T, R_POW2] int32: 1 where the token has an expert on that rank."""
    dest = tl.zeros([BLOCK_T, R_POW2], tl.int32)
    for j in tl.static_range(TOP_K):
        e = tl.load(TopkIds + tok * TOP_K + j, mask=tok_ok, other=-1)
        ok = (e >= 0) & (e < E)
        r = tl.load(Expert2Rank + e, mask=ok, other=-1)
        dest = tl.maximum(dest, (r[:, None] == ranks[None, :]).to(tl.int32))
    return dest


@triton.jit
def _pack_count(
    TopkIds, Expert2Rank, BlockCounts,
    M, E, R,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, R_POW2: tl.constexpr,
):
    """BlockCounts[blk, r] = number of tokens of token block blk sent to rank r."""
    blk = tl.program_id(0)
    ranks = tl.arange(0, R_POW2)
    tok = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    dest = _token_dest(TopkIds, Expert2Rank, tok, tok < M, E, ranks, TOP_K, BLOCK_T, R_POW2)
    tl.store(BlockCounts + blk * R_POW2 + ranks, tl.sum(dest, 0))


@triton.jit
def _pack_index(
    TopkIds, Expert2Rank, BlockCounts, SendCounts, Send2Token, Token2Slot,
    M, E, R, num_blocks,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, R_POW2: tl.constexpr, NB_POW2: tl.constexpr,
):
    """slot(token t, rank r) = (tokens of ranks < r) + (tokens of r in earlier blocks)
    + (tokens of r before t in t's block): two prefix sums over BlockCounts, one in the block."""
    blk = tl.program_id(0)
    ranks = tl.arange(0, R_POW2)
    blocks = tl.arange(0, NB_POW2)
    counts = tl.load(BlockCounts + blocks[:, None] * R_POW2 + ranks[None, :],
                     mask=(blocks < num_blocks)[:, None], other=0)      # [NB_POW2, R_POW2]
    totals = tl.sum(counts, 0)                                          # [R_POW2]
    rank_off = tl.cumsum(totals, 0) - totals
    before = tl.sum(tl.where((blocks < blk)[:, None], counts, 0), 0)
    tok = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    tok_ok = tok < M
    dest = _token_dest(TopkIds, Expert2Rank, tok, tok_ok, E, ranks, TOP_K, BLOCK_T, R_POW2)
    slot = (rank_off + before)[None, :] + tl.cumsum(dest, 0) - dest    # [BLOCK_T, R_POW2]
    sent = dest > 0
    tl.store(Send2Token + slot, tl.zeros_like(slot) + tok[:, None], mask=sent)
    tl.store(Token2Slot + tok[:, None] * R + ranks[None, :], tl.where(sent, slot, -1),
             mask=tok_ok[:, None] & (ranks < R)[None, :])
    tl.store(SendCounts + ranks, totals, mask=(ranks < R) & (ranks * 0 + blk == 0))


@triton.jit
def _gather_rows(
    X, Send2Token, SendCounts, XSend,
    H, R, stride_xm, stride_sm,
    BLOCK_H: tl.constexpr, R_POW2: tl.constexpr,
):
    """x_send[slot, h-tile] = x[send2token[slot], h-tile] for slot < sum(send_counts)."""
    slot = tl.program_id(0)
    ranks = tl.arange(0, R_POW2)
    total = tl.sum(tl.load(SendCounts + ranks, mask=ranks < R, other=0), 0)
    if slot >= total:
        return
    tok = tl.load(Send2Token + slot).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row = tl.load(X + tok * stride_xm + h, mask=h < H)
    tl.store(XSend + slot * stride_sm + h, row, mask=h < H)


def pack_by_rank(x: torch.Tensor, topk_ids: torch.Tensor, expert2rank: torch.Tensor, num_ranks: int):
    """x [M, H]; topk_ids [M, k] (ids outside [0, E) are dropped); expert2rank [E] int.

    Returns (send_counts [R] int32, send2token [S_max] int32, token2slot [M, R] int32 (-1: not
    sent), x_send [S_max, H]); S_max = M * min(k, R); slots past sum(send_counts) are unused.
    """
    M, k = topk_ids.shape
    if x.shape[0] != M or x.stride(1) != 1 or expert2rank.dim() != 1:
        raise ValueError(f"need x [M, H] (contiguous rows) and expert2rank [E], got {tuple(x.shape)}, "
                         f"{tuple(expert2rank.shape)}")
    R, E, H = num_ranks, expert2rank.numel(), x.shape[1]
    dev = x.device
    s_max = max(M * min(k, R), 1)
    send_counts = empty((R,), torch.int32, dev)
    send2token = empty((s_max,), torch.int32, dev)
    token2slot = empty((M, R), torch.int32, dev)
    x_send = empty((s_max, H), x.dtype, dev)
    r_pow2 = next_pow2(R)
    block_t = max(64, next_pow2(cdiv(M, 1024)))    # at most 1024 token blocks
    nb = max(cdiv(M, block_t), 1)
    ids, e2r = topk_ids.to(torch.int32).contiguous(), expert2rank.to(torch.int32).contiguous()
    block_counts = empty((nb, r_pow2), torch.int32, dev)
    _pack_count[(nb,)](ids, e2r, block_counts, M, E, R, TOP_K=k, BLOCK_T=block_t, R_POW2=r_pow2)
    _pack_index[(nb,)](ids, e2r, block_counts, send_counts, send2token, token2slot, M, E, R, nb,
                       TOP_K=k, BLOCK_T=block_t, R_POW2=r_pow2, NB_POW2=next_pow2(nb))
    block_h = min(1024, next_pow2(H))
    _gather_rows[(s_max, cdiv(H, block_h))](x, send2token, send_counts, x_send, H, R,
                                                   x.stride(0), x_send.stride(0),
                                                   BLOCK_H=block_h, R_POW2=r_pow2)
    return send_counts, send2token, token2slot, x_send
