"""MoE expert computation: align/permute, grouped GEMMs (gate/up + SiLU-and-multiply, down),
and the weighted combine.

Weight layout (the same as vLLM's fused_moe and HF Mixtral's nn.Linear weights stacked):
  w13 [E, 2F, H]: rows [0, F) are the gate projection (w1), rows [F, 2F) the up projection (w3);
  w2  [E, H, F]:  the down projection.
The reduction dim is contiguous in both, so one weight tile [BLOCK_N rows, BLOCK_K] is BLOCK_N
contiguous runs of BLOCK_K * 2 bytes, and each weight byte is read once per m-block.

Data flow for tokens x [M, H] routed by topk_ids [M, k] (pair p = m * k + j):
  align      -> sorted2pair [P_pad] (pairs grouped by expert, each group padded to BLOCK_M with
                the sentinel M*k), block2expert [P_pad / BLOCK_M], pair2sorted [M*k], num_padded [1]
  gate_up    -> inter [P_pad, F] (weights' dtype) = silu(x W1^T) * (x W3^T), in sorted order
  down       -> y [SPLIT_K, P_pad, H] fp32 = inter W2^T, one partial sum per K split
  combine    -> out [M, H] = sum_j topk_weights[m, j] * sum_s y[s, pair2sorted[m*k + j]]
Nothing syncs with the host: buffers are sized by the static bound
P_pad <= M*k + E*(BLOCK_M - 1), grids cover that bound, and programs past the device-side count
exit. For decode (M*k <= FUSED_ALIGN_MAX_PAIRS) the align is done inside the gate/up kernel: each
program recomputes the expert histogram (a few hundred ids, from L2) and its own block's pairs,
so a call is three launches; larger batches use the separate align kernel (four launches).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import INTERPRET, cdiv, empty, lookup, next_pow2

DEFAULT_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}
# Above this many (token, expert) pairs every gate/up program rescanning all ids costs more than
# the separate align launch saves (M*k = 64: one [BLOCK_M, 64] compare per program).
FUSED_ALIGN_MAX_PAIRS = 64


@triton.jit
def _histogram(TopkIds, num_pairs, BLOCK: tl.constexpr, E_POW2: tl.constexpr):
    """Pairs per expert [E_POW2] (ids outside [0, E_POW2) count nowhere)."""
    lane = tl.arange(0, BLOCK)
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros([E_POW2], tl.int32)
    for s in range(0, num_pairs, BLOCK):
        ids = tl.load(TopkIds + s + lane, mask=s + lane < num_pairs, other=-1).to(tl.int32)
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), 0)
    return counts


@triton.jit
def _mark_dropped(TopkIds, Pair2Sorted, num_pairs, E, BLOCK: tl.constexpr):
    """pair2sorted = -1 for pairs routed to no local expert (id < 0 or >= E)."""
    lane = tl.arange(0, BLOCK)
    for s in range(0, num_pairs, BLOCK):
        pair = s + lane
        ids = tl.load(TopkIds + pair, mask=pair < num_pairs, other=0).to(tl.int32)
        dropped = ((ids < 0) | (ids >= E)) & (pair < num_pairs)
        tl.store(Pair2Sorted + pair, tl.full([BLOCK], -1, tl.int32), mask=dropped)


@triton.jit(do_not_specialize=["num_pairs"])
def _moe_align(
    TopkIds, Sorted2Pair, Block2Expert, Pair2Sorted, NumPadded,
    num_pairs, E,
    BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, E_POW2: tl.constexpr,
):
    """One program per expert e: histogram of all experts (to find e's padded offset), then
    e's pairs in order via a running cumsum."""
    e = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    experts = tl.arange(0, E_POW2)
    counts = _histogram(TopkIds, num_pairs, BLOCK, E_POW2)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    offsets = tl.cumsum(padded, 0) - padded                             # exclusive prefix sum
    my_off = tl.sum(tl.where(experts == e, offsets, 0), 0)
    my_cnt = tl.sum(tl.where(experts == e, counts, 0), 0)
    my_pad = tl.sum(tl.where(experts == e, padded, 0), 0)
    seen = 0
    for s in range(0, num_pairs, BLOCK):
        pair = s + lane
        ids = tl.load(TopkIds + pair, mask=pair < num_pairs, other=-1).to(tl.int32)
        hit = ids == e
        pos = my_off + seen + tl.cumsum(hit.to(tl.int32), 0) - 1
        tl.store(Sorted2Pair + pos, pair, mask=hit)
        tl.store(Pair2Sorted + pair, pos, mask=hit)
        seen += tl.sum(hit.to(tl.int32), 0)
    if e == 0:
        _mark_dropped(TopkIds, Pair2Sorted, num_pairs, E, BLOCK)
        tl.store(NumPadded, tl.sum(padded, 0))
    pad = my_cnt + tl.arange(0, BLOCK_M)
    tl.store(Sorted2Pair + my_off + pad, tl.full([BLOCK_M], 0, tl.int32) + num_pairs, mask=pad < my_pad)
    for i in range(0, my_pad // BLOCK_M, BLOCK):
        blk = i + lane
        tl.store(Block2Expert + my_off // BLOCK_M + blk, tl.full([BLOCK], 0, tl.int32) + e,
                 mask=blk < my_pad // BLOCK_M)


@triton.jit
def _block_pairs(TopkIds, Sorted2Pair, Block2Expert, Pair2Sorted, NumPadded, num_pairs, E, pid_m, write,
                 BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, E_POW2: tl.constexpr):
    """The align for one m-block, computed inside the GEMM program (decode): returns
    (total padded rows, the block's expert, its BLOCK_M pair ids with the sentinel num_pairs for
    padding). With `write` the program also stores its block's part of the align outputs (the
    down GEMM and the combine read them), and program 0 the count and the dropped pairs."""
    experts = tl.arange(0, E_POW2)
    lane = tl.arange(0, BLOCK)
    counts = _histogram(TopkIds, num_pairs, BLOCK, E_POW2)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, 0)
    total = tl.sum(padded, 0)
    start = pid_m * BLOCK_M
    e = tl.sum((ends <= start).to(tl.int32), 0)          # experts wholly before this block
    my_off = tl.sum(tl.where(experts == e, ends - padded, 0), 0)
    want = start - my_off + tl.arange(0, BLOCK_M)         # ranks within expert e's pairs
    pairs = tl.full([BLOCK_M], 0, tl.int32) + num_pairs
    seen = 0
    for s in range(0, num_pairs, BLOCK):
        pair = s + lane
        ids = tl.load(TopkIds + pair, mask=pair < num_pairs, other=-1).to(tl.int32)
        hit = ids == e
        rank = seen + tl.cumsum(hit.to(tl.int32), 0) - 1
        match = hit[None, :] & (rank[None, :] == want[:, None])        # [BLOCK_M, BLOCK]
        pairs = tl.minimum(pairs, tl.min(tl.where(match, pair[None, :], num_pairs), 1))
        seen += tl.sum(hit.to(tl.int32), 0)
    if write:
        if pid_m == 0:
            _mark_dropped(TopkIds, Pair2Sorted, num_pairs, E, BLOCK)
            tl.store(NumPadded, total)
        if start < total:
            rows = start + tl.arange(0, BLOCK_M)
            tl.store(Sorted2Pair + rows, pairs)
            tl.store(Block2Expert + pid_m, e)
            tl.store(Pair2Sorted + pairs, rows, mask=pairs < num_pairs)
    return total, e, pairs


@triton.jit(do_not_specialize=["num_pairs", "num_m_blocks", "k_split"])
def _moe_gemm(
    # pointers
    A, W, Out, TopkIds, Sorted2Pair, Block2Expert, Pair2Sorted, NumPadded,
    # sizes
    N, K, num_pairs, top_k, num_m_blocks, E, k_split,
    # strides
    stride_am, stride_we, stride_wn, stride_om, stride_os,
    # meta-parameters
    GATE_UP: tl.constexpr,   # True: A = x gathered by token, out = silu(A Wg^T) * (A Wu^T), Wu at row N
    FUSED_ALIGN: tl.constexpr,  # gate/up only: compute this block's align here (decode)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    ALIGN_BLOCK: tl.constexpr, E_POW2: tl.constexpr,
):
    """out[split, rows of one m-block, n-tile] for the m-block's expert, over K range
    [split * k_split, (split + 1) * k_split). m varies fastest over program ids so the m-blocks of
    one expert run together and share each weight tile through L2."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = pid % num_m_blocks
    pid_n = pid // num_m_blocks
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if FUSED_ALIGN:
        total, e, pair = _block_pairs(TopkIds, Sorted2Pair, Block2Expert, Pair2Sorted, NumPadded,
                                      num_pairs, E, pid_m, pid_n == 0,
                                      BLOCK_M, ALIGN_BLOCK, E_POW2)
        if pid_m * BLOCK_M >= total:
            return
        e = e.to(tl.int64)
    else:
        if pid_m * BLOCK_M >= tl.load(NumPadded):
            return
        e = tl.load(Block2Expert + pid_m).to(tl.int64)
        if GATE_UP:
            pair = tl.load(Sorted2Pair + rows)
    if GATE_UP:
        row_ok = pair < num_pairs
        a_rows = pair // top_k                                          # token index
    else:
        row_ok = rows < num_m_blocks * BLOCK_M                          # inter rows are all written
        a_rows = rows
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    k0 = tl.arange(0, BLOCK_K)
    k_lo = pid_k * k_split
    k_hi = tl.minimum(K, k_lo + k_split)
    a_ptr = A + a_rows[:, None].to(tl.int64) * stride_am + k0[None, :]
    w_ptr = W + e * stride_we + n[None, :].to(tl.int64) * stride_wn + k0[:, None]   # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kk in tl.range(k_lo, k_hi, BLOCK_K):
        k_ok = kk + k0 < k_hi
        a = tl.load(a_ptr + kk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + kk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:                               # interpreter: its bf16 tl.dot is wrong
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        else:
            a = a.to(w.dtype)                    # tensor-core operand in the weights' dtype
        acc = tl.dot(a, w, acc)
        if GATE_UP:
            wu = tl.load(w_ptr + N * stride_wn + kk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:
                wu = wu.to(tl.float32)
            acc_up = tl.dot(a, wu, acc_up)
    if GATE_UP:
        acc = acc * tl.sigmoid(acc) * acc_up                            # SiLU(gate) * up
    tl.store(Out + pid_k.to(tl.int64) * stride_os + rows[:, None].to(tl.int64) * stride_om + n[None, :],
             acc.to(Out.dtype.element_ty), mask=n_ok[None, :])


@triton.jit
def _moe_combine(
    Y, Weights, Pair2Sorted, Out,
    H, stride_ys, stride_ym, stride_om,
    TOP_K: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[m, h-tile] = sum_j weights[m, j] * sum_s y[s, pair2sorted[m*k + j], h-tile]."""
    m = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < H
    acc = tl.zeros([BLOCK_H], tl.float32)
    for j in tl.static_range(TOP_K):
        pos = tl.load(Pair2Sorted + m * TOP_K + j)
        w = tl.load(Weights + m * TOP_K + j).to(tl.float32)
        y = tl.zeros([BLOCK_H], tl.float32)
        for s in tl.static_range(SPLIT_K):
            y += tl.load(Y + s * stride_ys + pos.to(tl.int64) * stride_ym + h, mask=h_ok & (h * 0 + pos >= 0),
                         other=0.0).to(tl.float32)
        acc += tl.where(pos >= 0, w, 0.0) * y
    tl.store(Out + m * stride_om + h, acc.to(Out.dtype.element_ty), mask=h_ok)


def _align_buffers(n: int, num_experts: int, block_m: int, dev):
    """One int32 allocation split into (sorted2pair [P_max], block2expert [P_max / block_m],
    pair2sorted [n], num_padded [1]); P_max = n + E*(block_m - 1) rounded up to block_m."""
    p_max = cdiv(n + num_experts * (block_m - 1), block_m) * block_m
    sizes = (p_max, p_max // block_m, n, 1)
    starts = [0]
    for size in sizes:                        # 16-byte aligned parts: one compiled variant for every M
        starts.append(starts[-1] + cdiv(size, 4) * 4)
    buf = empty((starts[-1],), torch.int32, dev)
    return tuple(buf[a:a + size] for a, size in zip(starts, sizes))


def _align_block(n: int, e_pow2: int) -> int:
    return min(256, max(32, 8192 // e_pow2))    # keeps the [BLOCK, E] one-hot at <= 8K elements


def _ids(topk_ids: torch.Tensor) -> torch.Tensor:
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    return topk_ids if topk_ids.is_contiguous() else topk_ids.contiguous()


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """topk_ids [M, k] (int32 or int64) -> (sorted2pair [P_max], block2expert [P_max / block_m],
    pair2sorted [M*k], num_padded [1]); P_max = M*k + E*(block_m - 1) rounded up to block_m.
    Entries past num_padded are unused. Ids outside [0, E) are dropped (pair2sorted -1)."""
    ids = _ids(topk_ids)
    n = ids.numel()
    align = _align_buffers(n, num_experts, block_m, ids.device)
    e_pow2 = next_pow2(num_experts)
    _moe_align[(num_experts,)](ids, *align, n, num_experts,
                               BLOCK_M=block_m, BLOCK=_align_block(n, e_pow2), E_POW2=e_pow2)
    return align


def _gemm_launch(a, w, out, align, ids, num_pairs, top_k, gate_up, cfg, fused_align=False):
    """(grid, args, kwargs) of one grouped-GEMM launch. out: [P_max, N] (gate/up) or
    [SPLIT_K, P_max, N] (down). Shared by the launch and the benchmark's ahead-of-time compile."""
    sorted2pair, block2expert, pair2sorted, num_padded = align
    n_out, K = out.shape[-1], a.shape[1]
    m_blocks = block2expert.numel()
    split = 1 if gate_up else cfg.get("SPLIT_K", 1)
    k_split = cdiv(cdiv(K, split), cfg["BLOCK_K"]) * cfg["BLOCK_K"]
    E = w.shape[0]
    grid = (m_blocks * cdiv(n_out, cfg["BLOCK_N"]), split)
    args = (a, w, out, ids, sorted2pair, block2expert, pair2sorted, num_padded,
            n_out, K, num_pairs, top_k, m_blocks, E, k_split,
            a.stride(0), w.stride(0), w.stride(1), out.stride(-2), out.stride(0) if out.dim() == 3 else 0)
    kwargs = {"GATE_UP": gate_up, "FUSED_ALIGN": fused_align, "BLOCK_M": cfg["BLOCK_M"],
              "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "UPCAST": INTERPRET,
              "ALIGN_BLOCK": 64, "E_POW2": next_pow2(E),   # fixed: no recompiles across M
              "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    return grid, args, kwargs


def _gemm(a, w, out, align, ids, num_pairs, top_k, gate_up, cfg, fused_align=False):
    """One grouped GEMM launch (see `_gemm_launch`)."""
    grid, args, kwargs = _gemm_launch(a, w, out, align, ids, num_pairs, top_k, gate_up, cfg, fused_align)
    _moe_gemm[grid](*args, **kwargs)


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, out=None, config=None, config_down=None,
              fuse_align=None):
    """Routed expert MLPs. x [M, H]; w13 [E, 2F, H]; w2 [E, H, F]; topk_ids [M, k] (int32 or
    int64), topk_weights [M, k]. Returns out [M, H] (dtype of x)
    = sum_j w[m, j] * W2_e (silu(W1_e x) * W3_e x), e = topk_ids[m, j].
    fuse_align: None = fused when M*k <= FUSED_ALIGN_MAX_PAIRS. config_down may hold SPLIT_K."""
    M, H = x.shape
    E, F2, H2 = w13.shape
    Fd = F2 // 2
    if H2 != H or w2.shape != (E, H, Fd) or topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != M:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}, "
                         f"topk {tuple(topk_ids.shape)}")
    if x.stride(1) != 1 or w13.stride(2) != 1 or w2.stride(2) != 1:
        raise ValueError("x, w13 and w2 need a contiguous last dim")
    key = f"E{E}_H{H}_F{Fd}"
    cfg = config or lookup("moe_gate_up", x.device, key, M, DEFAULT_CONFIG)
    cfg_down = config_down or lookup("moe_down", x.device, key, M, cfg)
    if cfg_down["BLOCK_M"] != cfg["BLOCK_M"]:
        raise ValueError("gate_up and down configs must share BLOCK_M (one alignment)")
    k = topk_ids.shape[1]
    ids = _ids(topk_ids)
    n = M * k
    fused = n <= FUSED_ALIGN_MAX_PAIRS if fuse_align is None else fuse_align
    if fused:
        align = _align_buffers(n, E, cfg["BLOCK_M"], x.device)
    else:
        align = moe_align(ids, E, cfg["BLOCK_M"])
    p_max = align[0].numel()
    split = cfg_down.get("SPLIT_K", 1)
    # inter in the weights' dtype: the down GEMM rounds its operand to it anyway (tensor cores),
    # so this is the same rounding with half the bytes and no conversion in the down GEMM's loop;
    # y stays fp32 (split-K partials, summed in the combine)
    inter = empty((p_max, Fd), w2.dtype, x.device)
    y = empty((split, p_max, H), torch.float32, x.device)
    _gemm(x, w13, inter, align, ids, n, k, True, cfg, fused_align=fused)
    _gemm(inter, w2, y, align, ids, n, k, False, cfg_down)
    out = empty((M, H), x.dtype, x.device) if out is None else out
    wts = topk_weights if topk_weights.is_contiguous() else topk_weights.contiguous()
    block_h = min(1024, next_pow2(H))
    _moe_combine[(M, cdiv(H, block_h))](y, wts, align[2], out, H, y.stride(0), y.stride(1), out.stride(0),
                                        TOP_K=k, SPLIT_K=split, BLOCK_H=block_h)
    return out
