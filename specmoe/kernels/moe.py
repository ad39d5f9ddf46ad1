"""MoE expert computation: align/permute, grouped GEMMs (gate/up + SiLU-and-multiply, down),
and the weighted combine.

Weight layout (the same as vLLM's fused_moe and HF Mixtral's nn.Linear weights stacked):
  w13 [E, 2F, H]: rows [0, F) are the gate projection (w1), rows [F, 2F) the up projection (w3);
  w2  [E, H, F]:  the down projection.
The reduction dim is contiguous in both, so one weight tile [BLOCK_N rows, BLOCK_K] is BLOCK_N
contiguous runs of BLOCK_K * 2 bytes, and each weight byte is read once per m-block.

Data flow for tokens x [M, H] routed by topk_ids [M, k] (pair p = m * k + j):
  moe_align  -> sorted2pair [P_pad] (pairs grouped by expert, each group padded to BLOCK_M with
                the sentinel M*k), block2expert [P_pad / BLOCK_M], pair2sorted [M*k], num_padded [1]
  gate_up    -> inter [P_pad, F] fp32 = silu(x W1^T) * (x W3^T), in sorted order
  down       -> y [P_pad, H] fp32 = inter W2^T (inter rounded to bf16 as the MMA operand)
  combine    -> out [M, H] = sum_j topk_weights[m, j] * y[pair2sorted[m*k + j]]
Grids are sized from the bound P_pad <= M*k + E*(BLOCK_M - 1) so nothing syncs with the host;
programs past num_padded exit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import INTERPRET, cdiv, empty, lookup, next_pow2

DEFAULT_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}


@triton.jit
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
    counts = tl.zeros([E_POW2], tl.int32)
    for s in range(0, num_pairs, BLOCK):
        ids = tl.load(TopkIds + s + lane, mask=s + lane < num_pairs, other=-1)
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), 0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    offsets = tl.cumsum(padded, 0) - padded                             # exclusive prefix sum
    my_off = tl.sum(tl.where(experts == e, offsets, 0), 0)
    my_cnt = tl.sum(tl.where(experts == e, counts, 0), 0)
    my_pad = tl.sum(tl.where(experts == e, padded, 0), 0)
    seen = 0
    for s in range(0, num_pairs, BLOCK):
        pair = s + lane
        ids = tl.load(TopkIds + pair, mask=pair < num_pairs, other=-1)
        hit = ids == e
        pos = my_off + seen + tl.cumsum(hit.to(tl.int32), 0) - 1
        tl.store(Sorted2Pair + pos, pair, mask=hit)
        tl.store(Pair2Sorted + pair, pos, mask=hit)
        # pairs routed to no local expert (id < 0 or >= E): program 0 marks them -1
        dropped = ((ids < 0) | (ids >= E)) & (pair < num_pairs) & (lane * 0 + e == 0)
        tl.store(Pair2Sorted + pair, tl.full([BLOCK], -1, tl.int32), mask=dropped)
        seen += tl.sum(hit.to(tl.int32), 0)
    pad = my_cnt + tl.arange(0, BLOCK_M)
    tl.store(Sorted2Pair + my_off + pad, tl.full([BLOCK_M], 0, tl.int32) + num_pairs, mask=pad < my_pad)
    for i in range(0, my_pad // BLOCK_M, BLOCK):
        blk = i + lane
        tl.store(Block2Expert + my_off // BLOCK_M + blk, tl.full([BLOCK], 0, tl.int32) + e,
                 mask=blk < my_pad // BLOCK_M)
    if e == 0:
        tl.store(NumPadded, tl.sum(padded, 0))


@triton.jit
def _moe_gemm(
    # pointers
    A, W, Out, Sorted2Pair, Block2Expert, NumPadded,
    # sizes
    N, K, num_pairs, top_k, num_m_blocks,
    # strides
    stride_am, stride_we, stride_wn, stride_om,
    # meta-parameters
    GATE_UP: tl.constexpr,   # True: A = x gathered by token, out = silu(A Wg^T) * (A Wu^T), Wu at row N
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
):
    """out[rows of one m-block, n-tile] for the m-block's expert. m varies fastest over program
    ids so the m-blocks of one expert run together and share each weight tile through L2."""
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks
    pid_n = pid // num_m_blocks
    if pid_m * BLOCK_M >= tl.load(NumPadded):
        return
    e = tl.load(Block2Expert + pid_m).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if GATE_UP:
        pair = tl.load(Sorted2Pair + rows)
        row_ok = pair < num_pairs
        a_rows = pair // top_k                                          # token index
    else:
        row_ok = rows < num_m_blocks * BLOCK_M                          # inter rows are all written
        a_rows = rows
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    k0 = tl.arange(0, BLOCK_K)
    a_ptr = A + a_rows[:, None].to(tl.int64) * stride_am + k0[None, :]
    w_ptr = W + e * stride_we + n[None, :].to(tl.int64) * stride_wn + k0[:, None]   # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kk in tl.range(0, K, BLOCK_K):
        k_ok = kk + k0 < K
        a = tl.load(a_ptr + kk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + kk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:                               # interpreter: its bf16 tl.dot is wrong
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        else:
            a = a.to(w.dtype)                    # fp32 intermediate -> bf16 tensor-core operand
        acc = tl.dot(a, w, acc)
        if GATE_UP:
            wu = tl.load(w_ptr + N * stride_wn + kk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:
                wu = wu.to(tl.float32)
            acc_up = tl.dot(a, wu, acc_up)
    if GATE_UP:
        acc = acc * tl.sigmoid(acc) * acc_up                            # SiLU(gate) * up
    tl.store(Out + rows[:, None].to(tl.int64) * stride_om + n[None, :], acc.to(Out.dtype.element_ty),
             mask=n_ok[None, :])


@triton.jit
def _moe_combine(
    Y, Weights, Pair2Sorted, Out,
    H, stride_ym, stride_om,
    TOP_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[m, h-tile] = sum_j weights[m, j] * y[pair2sorted[m*k + j], h-tile]."""
    m = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < H
    acc = tl.zeros([BLOCK_H], tl.float32)
    for j in tl.static_range(TOP_K):
        pos = tl.load(Pair2Sorted + m * TOP_K + j)
        w = tl.load(Weights + m * TOP_K + j).to(tl.float32)
        y = tl.load(Y + pos.to(tl.int64) * stride_ym + h, mask=h_ok & (h * 0 + pos >= 0), other=0.0)
        acc += tl.where(pos >= 0, w, 0.0) * y.to(tl.float32)
    tl.store(Out + m * stride_om + h, acc.to(Out.dtype.element_ty), mask=h_ok)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """topk_ids [M, k] -> (sorted2pair [P_max], block2expert [P_max / block_m], pair2sorted [M*k],
    num_padded [1]); P_max = M*k + E*(block_m - 1) rounded up to block_m. Entries past
    num_padded are unused. Ids outside [0, E) are dropped (pair2sorted -1)."""
    ids = topk_ids.to(torch.int32).contiguous()
    n = ids.numel()
    p_max = cdiv(n + num_experts * (block_m - 1), block_m) * block_m
    dev = ids.device
    sorted2pair = empty((p_max,), torch.int32, dev)
    block2expert = empty((p_max // block_m,), torch.int32, dev)
    pair2sorted = empty((n,), torch.int32, dev)
    num_padded = empty((1,), torch.int32, dev)
    e_pow2 = next_pow2(num_experts)
    block = min(256, max(32, 8192 // e_pow2))    # keeps the [BLOCK, E] one-hot at <= 8K elements
    _moe_align[(num_experts,)](ids, sorted2pair, block2expert, pair2sorted, num_padded, n, num_experts,
                               BLOCK_M=block_m, BLOCK=block, E_POW2=e_pow2)
    return sorted2pair, block2expert, pair2sorted, num_padded


def _gemm(a, w, out, align, num_pairs, top_k, gate_up, cfg):
    sorted2pair, block2expert, _, num_padded = align
    n_out, K = out.shape[1], a.shape[1]
    m_blocks = block2expert.numel()
    grid = (m_blocks * cdiv(n_out, cfg["BLOCK_N"]),)
    _moe_gemm[grid](a, w, out, sorted2pair, block2expert, num_padded,
                    n_out, K, num_pairs, top_k, m_blocks,
                    a.stride(0), w.stride(0), w.stride(1), out.stride(0),
                    GATE_UP=gate_up, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                    BLOCK_K=cfg["BLOCK_K"], UPCAST=INTERPRET,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, out=None, config=None, config_down=None):
    """Routed expert MLPs. x [M, H]; w13 [E, 2F, H]; w2 [E, H, F]; topk_ids, topk_weights [M, k].
    Returns out [M, H] (dtype of x) = sum_j w[m, j] * W2_e (silu(W1_e x) * W3_e x), e = topk_ids[m, j]."""
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
    align = moe_align(topk_ids, E, cfg["BLOCK_M"])
    p_max = align[0].numel()
    # fp32 intermediates: one bf16 rounding fewer; their bytes are ~1% of the weights at decode
    inter = empty((p_max, Fd), torch.float32, x.device)
    _gemm(x, w13, inter, align, M * k, k, True, cfg)
    y = empty((p_max, H), torch.float32, x.device)
    _gemm(inter, w2, y, align, M * k, k, False, cfg_down)
    out = empty((M, H), x.dtype, x.device) if out is None else out
    block_h = min(1024, next_pow2(H))
    _moe_combine[(M, cdiv(H, block_h))](y, topk_weights.contiguous(), align[2], out,
                                               H, y.stride(0), out.stride(0), TOP_K=k, BLOCK_H=block_h)
    return out
