"""Batch-invariant fused linear layers for small-batch decoding of a Llama block.

`y = epilogue(rmsnorm(x) @ W^T)` with four epilogues: none, residual add, SwiGLU, and RoPE +
KV-cache write. Every output row's arithmetic is independent of how many rows the call has:
the tile shape and the split of K are fixed per weight shape (never per M), each split runs
its K range in fixed BLOCK_K steps, and the splits are summed in a fixed order. A 1-token
autoregressive step and an 81-token verify step therefore produce bit-identical rows for the
same inputs, even with TF32 tensor-core dots. That is what makes greedy speculative decoding
equal to autoregressive decoding token for token on the fast path (cuBLAS picks a GEMV at M=1
and a tiled GEMM at M=81, which round differently; on batch invariance see H. He, "Defeating
Nondeterminism in LLM Inference", Thinking Machines Lab, 2025).

Split-K without a second kernel: each of the SPLIT programs of an output tile stores its
partial sum in a workspace, then increments the tile's counter; the program that arrives last
adds the SPLIT partials in split order, applies the epilogue and resets the counter to 0 (so
the counters are zero again when the kernel ends, and the next call, or graph replay, reuses
them). At M=1 a 576x1536 projection is ~3.5 MB of weights: it needs ~100+ programs in flight
to be read at memory speed, which a 576-column output cannot give without splitting K.

The RMSNorm is folded in: each program sums x^2 over its K range (the splits' sums add up),
multiplies x by the norm weight before the dot and scales the accumulator by
rsqrt(mean(x^2) + eps) at the end (sum_k x_k g_k r W_nk = r sum_k (x_k g_k) W_nk).

Pair epilogues read 2 * BLOCK_N adjacent weight rows per tile, rows 2j and 2j+1 giving the
pair (a_j, b_j): SwiGLU from W1 / W3 interleaved (`interleave_rows`), RoPE from W_qkv as it is
(llama.cpp rotates adjacent output pairs), so both epilogues are elementwise on (a, b).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import INTERPRET, cdiv, empty, lookup

BLOCK_M = 16            # default rows per program; a config fixes it per weight shape, never per M
EPI_NONE, EPI_RESID, EPI_SWIGLU, EPI_ROPE = 0, 1, 2, 3


def config(n_out: int, k: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Tile config from the weight shape and dtype only (never from M: batch invariance).

    n_out: weight rows; k: input width; dtype: fp32 (tf32 dots) or bf16 weights, tuned apart
    (configs.json keys "N,K" and "N,K,bf16"). BLOCK_M rows per tile (padding rows cost tensor-core
    time, which a 1-row step has to spare, and save re-reading W per row tile at 81 rows),
    BLOCK_N weight rows per tile, SPLIT the K ranges. Tuned entries (`benchmarks/tune_fused_llama.py`) come from configs.json under
    "fused_linear" / "N,K" for the device; the default aims at ~100-300 programs at M=1.
    """
    if n_out >= 16384:                                   # LM head
        default = {"BLOCK_M": BLOCK_M, "BLOCK_N": 64, "BLOCK_K": 64, "SPLIT": 1, "num_warps": 4, "num_stages": 3}
    else:
        default = {"BLOCK_M": BLOCK_M, "BLOCK_N": 32 if n_out > 1024 else 16, "BLOCK_K": 64,
                   "SPLIT": max(1, min(8, k // 192)), "num_warps": 4, "num_stages": 2}
    key = f"{n_out},{k}" + (",bf16" if dtype == torch.bfloat16 else "")
    return default if device is None else lookup("fused_linear", device, key, None, default)


def _dot_precision(w: torch.Tensor, precision: str) -> str:
    """tl.dot's input_precision: the caller's for fp32 weights (tf32 / tf32x3 / ieee). bf16
    operands have one precision; "ieee" is what the interpreter's upcast dot then does."""
    return "ieee" if w.dtype == torch.bfloat16 else precision


_SCRATCH: dict = {}
_RETIRED: list = []      # outgrown scratch buffers: CUDA graphs captured earlier still point at them


def _scratch(device, counters: int, floats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-device split-K counters (int32, zero, kept zero by the kernels) and workspace (fp32).

    Grown outside CUDA graph capture (every forward runs eagerly before it is captured); a
    buffer that is outgrown (e.g. by a long prefill after a step was captured) is kept alive,
    since a captured graph replays with the addresses it was captured with."""
    c, w = _SCRATCH.get(device, (None, None))
    if c is None or c.numel() < counters:
        _RETIRED.append(c)
        c = torch.zeros(max(counters, 1 << 14), dtype=torch.int32, device=device)
    if w is None or w.numel() < floats:
        _RETIRED.append(w)
        w = torch.empty(max(floats, 1 << 16), dtype=torch.float32, device=device)
    _SCRATCH[device] = (c, w)
    return c, w


@triton.jit
def _splitk_sum(acc, ss, m_ok, WS, CNT, tile, pid_s, SPLIT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """Park this split's (acc [BLOCK_M, BLOCK_W], ss [BLOCK_M]) rows that exist (m_ok); the
    last split of the tile gets the sums in split order. Returns (acc, ss, is_last).
    (Padding rows are neither stored nor loaded: at one row a 64-row tile moves 1/64 of it.)"""
    r = tl.arange(0, BLOCK_M)
    c = tl.arange(0, BLOCK_W)
    stride = BLOCK_M * (BLOCK_W + 1)
    base = WS + (tile * SPLIT + pid_s) * stride
    tl.store(base + r[:, None] * BLOCK_W + c[None, :], acc, mask=m_ok[:, None])
    tl.store(base + BLOCK_M * BLOCK_W + r, ss, mask=m_ok)
    tl.debug_barrier()                                   # every thread's stores before the count
    cnt = tl.atomic_add(CNT + tile, 1, sem="acq_rel")
    last = cnt == SPLIT - 1
    if last:
        acc = tl.zeros((BLOCK_M, BLOCK_W), tl.float32)
        ss = tl.zeros((BLOCK_M,), tl.float32)
        for s in range(SPLIT):
            b = WS + (tile * SPLIT + s) * stride
            acc += tl.load(b + r[:, None] * BLOCK_W + c[None, :], mask=m_ok[:, None], other=0.0,
                           cache_modifier=".cg")
            ss += tl.load(b + BLOCK_M * BLOCK_W + r, mask=m_ok, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(CNT + tile, 0)
    return acc, ss, last


@triton.jit
def _fused_linear_kernel(
    X, NW, W, R, Y, WS, CNT,
    CosT, SinT, Nbuf, Depth, KC, VC,            # EPI_ROPE only
    M, N, K, stride_xm, stride_wn, stride_rm, stride_ym, stride_ch, stride_cs, eps,
    NORM: tl.constexpr, EPI: tl.constexpr, PREC: tl.constexpr,
    NH: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
    W16: tl.constexpr, UPCAST: tl.constexpr,
):
    """Tile (pid_m, pid_n) of y over K range pid_s. W [N, K] row-major; for pair epilogues
    the tile's BLOCK_N rows give BLOCK_N / 2 outputs. W16: W is bf16 and the x tile is rounded
    to bf16 before the dot (fp32 accumulation); UPCAST (interpreter) then dots in fp32."""
    pid_m, pid_n, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    k_per = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT) * BLOCK_K
    k_lo = pid_s * k_per
    k_hi = tl.minimum(k_lo + k_per, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    ss = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_hi
        x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            ss += tl.sum(x * x, 1)
            x = x * tl.load(NW + offs_k, mask=k_ok, other=0.0)[None, :]
        w = tl.load(W + offs_n[:, None] * stride_wn + offs_k[None, :],
                    mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if W16:
            if UPCAST:    # interpreter: its bf16 tl.dot is wrong and its bf16 cast truncates
                xb = x.to(tl.int32, bitcast=True)                       # round to nearest even
                x = ((xb + 0x7FFF + ((xb >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
                w = w.to(tl.float32)
            else:
                x = x.to(tl.bfloat16, fp_downcast_rounding="rtne")
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PREC)
    last = True
    if SPLIT > 1:
        n_tiles_n = tl.num_programs(1)
        acc, ss, last = _splitk_sum(acc, ss, m_ok, WS, CNT, pid_m * n_tiles_n + pid_n, pid_s,
                                    SPLIT, BLOCK_M, BLOCK_N)
    if last:
        if NORM:
            acc = acc * tl.rsqrt(ss / K + eps)[:, None]
        if EPI == 0 or EPI == 1:
            ok = m_ok[:, None] & n_ok[None, :]
            if EPI == 1:
                acc += tl.load(R + offs_m[:, None] * stride_rm + offs_n[None, :], mask=ok, other=0.0)
            tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc, mask=ok)
        else:
            a, b = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))   # rows 2j, 2j+1
            j = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)          # output pair index
            ok = m_ok[:, None] & (j < N // 2)[None, :]
            if EPI == 2:
                tl.store(Y + offs_m[:, None] * stride_ym + j[None, :], a / (1.0 + tl.exp(-a)) * b, mask=ok)
            else:
                _rope_store(a, b, j, offs_m, m_ok, ok, CosT, SinT, Nbuf, Depth, Y, KC, VC,
                            stride_ym, stride_ch, stride_cs, NH, NKV, HALF)


@triton.jit
def _rope_store(a, b, j, offs_m, m_ok, ok, CosT, SinT, Nbuf, Depth, Q, KC, VC,
                stride_qm, stride_ch, stride_cs, NH: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr):
    """Pairs j of W_qkv's output (all in one head): rotate q / k heads by position
    n + depth[m], store q to Q [M, NH * 2 HALF], k and v to cache slot n + m."""
    hh = (j // HALF)[None, :]                    # head of each pair (q heads, k heads, v heads)
    i = (j % HALF)[None, :]
    n = tl.load(Nbuf).to(tl.int32)
    pos = n + tl.load(Depth + offs_m, mask=m_ok, other=0)
    rot = ok & (hh < NH + NKV)
    cos = tl.load(CosT + pos[:, None] * HALF + i, mask=rot, other=1.0)
    sin = tl.load(SinT + pos[:, None] * HALF + i, mask=rot, other=0.0)
    ra, rb = a * cos - b * sin, a * sin + b * cos
    slot = (n + offs_m)[:, None]
    q_ptr = Q + offs_m[:, None] * stride_qm + hh * (2 * HALF) + 2 * i
    k_ptr = KC + (hh - NH) * stride_ch + slot * stride_cs + 2 * i
    v_ptr = VC + (hh - NH - NKV) * stride_ch + slot * stride_cs + 2 * i
    is_q, is_k, is_v = hh < NH, (hh >= NH) & (hh < NH + NKV), hh >= NH + NKV
    tl.store(q_ptr, ra, mask=ok & is_q)
    tl.store(q_ptr + 1, rb, mask=ok & is_q)
    tl.store(k_ptr, ra, mask=ok & is_k)
    tl.store(k_ptr + 1, rb, mask=ok & is_k)
    tl.store(v_ptr, a, mask=ok & is_v)
    tl.store(v_ptr + 1, b, mask=ok & is_v)


def _launch(x, w, norm_w, eps, epi, out, residual=None, rope=None, precision="tf32", cfg=None):
    M, K = x.shape
    N = w.shape[0]
    cfg = dict(cfg or config(N, K, x.device, w.dtype))
    bm, bn, split = cfg.pop("BLOCK_M", BLOCK_M), cfg.pop("BLOCK_N"), cfg.pop("SPLIT")
    grid = (cdiv(M, bm), cdiv(N, bn), split)
    cnt, ws = _scratch(x.device, grid[0] * grid[1], grid[0] * grid[1] * split * bm * (bn + 1))
    r = residual if residual is not None else out
    cos, sin, n, depth, kc, vc, nh, nkv, half = rope or (x, x, cnt, cnt, out, out, 0, 0, 1)
    _fused_linear_kernel[grid](
        x, norm_w if norm_w is not None else x, w, r, out, ws, cnt, cos, sin, n, depth, kc, vc,
        M, N, K, x.stride(0), w.stride(0), r.stride(0), out.stride(0), kc.stride(0), kc.stride(1), eps,
        NORM=norm_w is not None, EPI=epi, PREC=_dot_precision(w, precision), NH=nh, NKV=nkv, HALF=half,
        BLOCK_M=bm, BLOCK_N=bn, SPLIT=split, W16=w.dtype == torch.bfloat16, UPCAST=INTERPRET, **cfg)
    return out


def linear(x: torch.Tensor, w: torch.Tensor, norm_w: torch.Tensor | None = None, eps: float = 0.0,
           residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
           precision: str = "tf32", cfg: dict | None = None) -> torch.Tensor:
    """[rmsnorm(x; norm_w, eps)] @ w^T [+ residual].

    x [M, K] fp32; w [N, K] fp32, or bf16 (x then rounded to bf16 at the dot, fp32 sums);
    norm_w [K] or None; residual [M, N] or None; out [M, N] (may be `residual` itself for an
    in-place add). precision: tl.dot's input_precision for fp32 w ("tf32", "tf32x3" or "ieee");
    cfg overrides `config` (benchmarks). Returns out.
    """
    if out is None:
        out = empty((x.shape[0], w.shape[0]), torch.float32, x.device)
    epi = EPI_RESID if residual is not None else EPI_NONE
    return _launch(x, w, norm_w, eps, epi, out, residual=residual, precision=precision, cfg=cfg)


def interleave_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[F, K], [F, K] -> [2F, K] with rows a0, b0, a1, b1, ... (the pair layout of `swiglu`)."""
    return torch.stack([a, b], 1).reshape(2 * a.shape[0], a.shape[1]).contiguous()


def swiglu(x: torch.Tensor, norm_w: torch.Tensor, w13: torch.Tensor, eps: float,
           precision: str = "tf32", cfg: dict | None = None) -> torch.Tensor:
    """silu(rmsnorm(x) @ w1^T) * (rmsnorm(x) @ w3^T) with w13 = interleave_rows(w1, w3) [2F, K].
    x [M, K]. Returns [M, F]."""
    out = empty((x.shape[0], w13.shape[0] // 2), torch.float32, x.device)
    return _launch(x, w13, norm_w, eps, EPI_SWIGLU, out, precision=precision, cfg=cfg)


def qkv_rope_(x: torch.Tensor, norm_w: torch.Tensor, wqkv: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor, n: torch.Tensor, depth: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, n_heads: int, eps: float, precision: str = "tf32",
              cfg: dict | None = None) -> torch.Tensor:
    """Q/K/V projection of rmsnorm(x), RoPE on adjacent pairs, K and V written to the cache.

    x [M, K]; wqkv [(n_heads + 2 n_kv) * hd, K] (q heads, k heads, v heads); cos, sin
    [max_pos, hd / 2] fp32; n 0-d int (committed length); depth [M] int32 (row m is at
    position n + depth[m]); k_cache, v_cache [n_kv, S, hd] (row m goes to slot n + m).
    Returns q [M, n_heads, hd].
    """
    n_kv, _, hd = k_cache.shape
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(2) == 1
    q = empty((x.shape[0], n_heads, hd), torch.float32, x.device)
    _launch(x, wqkv, norm_w, eps, EPI_ROPE, q, rope=(cos, sin, n, depth, k_cache, v_cache, n_heads, n_kv, hd // 2),
            precision=precision, cfg=cfg)
    return q
