"""Tree attention for speculative decoding: the T draft-tree tokens of each sequence attend to
that sequence's KV cache and to their own ancestors in the tree.

KV layout (contiguous, not paged): `k_cache, v_cache [B, S_max, H_kv, D]`, sequence b holds
`cache_lens[b]` context tokens in slots [0, L_b) and the caller has already written the tree
tokens' keys/values into slots [L_b, L_b + T). Why contiguous: the specmoe runtime keeps one
static cache per sequence (like gpt-fast / HF's StaticCache), tree verification must write the
tree K/V into the cache anyway (accepted tokens stay), and a contiguous tile load avoids the
block-table indirection. A paged cache changes only the address computation of a key tile
(`slot -> block_table[b, slot // page] * page + slot % page`).

Algorithm: flash-decoding. The key range [0, L_b + T) of each sequence is cut into
`num_splits` chunks; each program (m-block, b * H_kv + kv_head, split) runs an online softmax
(Dao et al. 2022, FlashAttention Alg. 1) over its chunk for a tile of BLOCK_M query rows. Query
rows are r = t * G + g (tree token t, query head kv_head * G + g) so the G query heads of a GQA
group share every K/V tile load. Keys in the context are unmasked; key L_b + j (tree token j)
is visible to row t iff j is an ancestor-or-self of t. A second kernel merges the splits by
their log-sum-exp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specmoe.kernels._common import INTERPRET, cdiv, empty, lookup, next_pow2

LOG2E = 1.4426950408889634
DEFAULT_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "num_splits": 0}


@triton.jit
def _kv_tile(X, b, kvh, s, stride_b, stride_s, stride_h, cols, d, col_ok,
             MASKED: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """K or V tile [BLOCK_N, D] of keys s .. s + BLOCK_N; masked tiles zero keys past col_ok
    (the slots there may hold stale or poisoned data, and 0 * NaN would leak into P V)."""
    if TMA:                                      # X is a TensorDescriptor over [B, S_max, H_kv, D]
        x = X.load([b.to(tl.int32), s, kvh, 0]).reshape(BLOCK_N, D)
        if MASKED:
            x = tl.where(col_ok[:, None], x, 0.0)
    else:
        ptr = X + b * stride_b + kvh * stride_h + cols[:, None] * stride_s + d[None, :]
        if MASKED:
            x = tl.load(ptr, mask=col_ok[:, None], other=0.0)
        else:
            x = tl.load(ptr)
    return x


@triton.jit
def _tree_attn_fwd(
    # pointers
    Q, K, V, Lens, Anc, Out, Opart, Lse,
    # sizes
    T, HKV,
    # strides (the last dim of every tensor is contiguous)
    stride_qb, stride_qt, stride_qh,        # q [B, T, Hq, D]
    stride_kb, stride_ks, stride_kh,        # k_cache [B, S_max, Hkv, D]
    stride_vb, stride_vs, stride_vh,        # v_cache [B, S_max, Hkv, D]
    stride_ab, stride_at,                   # anc [B, T, T] int8
    stride_ob, stride_ot, stride_oh,        # out [B, T, Hq, D]
    qk_scale,                               # softmax scale * log2(e): we use exp2
    # meta-parameters
    G: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, UPCAST: tl.constexpr,
    TMA: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)             # int64: B * S_max * H_kv * D may pass 2^31
    kvh = pid_bh % HKV
    L = tl.load(Lens + b)
    n_keys = L + T
    # this split's key range, in whole BLOCK_N tiles
    per_split = tl.cdiv(tl.cdiv(n_keys, BLOCK_N), SPLITS) * BLOCK_N
    start = pid_s * per_split
    end = tl.minimum(start + per_split, n_keys)
    # tiles wholly inside the context need no mask
    full_end = start + tl.maximum(tl.minimum(end, L) - start, 0) // BLOCK_N * BLOCK_N

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    t = rows // G
    h = kvh * G + rows % G
    row_ok = t < T
    d = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + t[:, None] * stride_qt + h[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None], other=0.0)
    if UPCAST:                                   # interpreter: its bf16 tl.dot is wrong
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    cols0 = tl.arange(0, BLOCK_N)

    for s in tl.range(start, full_end, BLOCK_N):
        cols = s + cols0
        k = _kv_tile(K, b, kvh, s, stride_kb, stride_ks, stride_kh, cols, d, None, False, TMA, BLOCK_N, D)
        v = _kv_tile(V, b, kvh, s, stride_vb, stride_vs, stride_vh, cols, d, None, False, TMA, BLOCK_N, D)
        qk = tl.dot(q, tl.trans(k).to(q.dtype))                    # [BLOCK_M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])          # one FMA per score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(q.dtype), v.to(q.dtype))
        m_i = m_new

    for s in tl.range(full_end, end, BLOCK_N):
        cols = s + cols0
        col_ok = cols < end
        k = _kv_tile(K, b, kvh, s, stride_kb, stride_ks, stride_kh, cols, d, col_ok, True, TMA, BLOCK_N, D)
        v = _kv_tile(V, b, kvh, s, stride_vb, stride_vs, stride_vh, cols, d, col_ok, True, TMA, BLOCK_N, D)
        j = cols - L                                                # tree index of the key
        in_tree = (j >= 0) & col_ok
        anc = tl.load(Anc + b * stride_ab + t[:, None] * stride_at + j[None, :],
                      mask=row_ok[:, None] & in_tree[None, :], other=0)
        visible = ((cols < L)[None, :] | (anc != 0)) & col_ok[None, :]
        qk = tl.dot(q, tl.trans(k).to(q.dtype)) * qk_scale
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)     # row sees nothing yet
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(q.dtype), v.to(q.dtype))
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if SPLITS == 1:
        tl.store(Out + b * stride_ob + t[:, None] * stride_ot + h[:, None] * stride_oh + d[None, :],
                 o.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        # Opart [B, T, Hq, SPLITS, D] fp32, Lse [B, T, Hq, SPLITS] (log2 domain)
        hq = HKV * G
        r = ((b * T + t) * hq + h) * SPLITS + pid_s
        tl.store(Opart + r[:, None] * D + d[None, :], o, mask=row_ok[:, None])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(Lse + r, lse, mask=row_ok)


@triton.jit
def _merge_splits(
    Opart, Lse, Out,
    T, HQ,
    stride_ob, stride_ot, stride_oh,
    D: tl.constexpr, SPLITS: tl.constexpr,
):
    """One program per query row (b, t, h): out = sum_s 2^(lse_s - lse) o_s."""
    r = tl.program_id(0)
    h = r % HQ
    t = (r // HQ) % T
    b = r // (HQ * T)
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    lse = tl.load(Lse + r * SPLITS + s)
    m = tl.max(lse, 0)
    w = tl.math.exp2(lse - m)                                       # empty splits: 0
    o = tl.load(Opart + (r * SPLITS + s)[:, None] * D + d[None, :])
    o = tl.where(w[:, None] > 0, o, 0.0)                            # ignore whatever empty splits hold
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(Out + b * stride_ob + t * stride_ot + h * stride_oh + d, out.to(Out.dtype.element_ty))


@triton.jit
def _ancestors(
    Parents, Anc,
    T, stride_pb, stride_ab, stride_at,
    T_POW2: tl.constexpr,
):
    """One program per tree: every row walks up its parent chain T times (depth < T),
    marking each node it visits; rows that reached the root keep cur = -1."""
    b = tl.program_id(0)
    i = tl.arange(0, T_POW2)
    ok = i < T
    cur = tl.where(ok, i, -1)
    anc = tl.zeros([T_POW2, T_POW2], tl.int8)
    for _ in range(0, T):
        anc = tl.where(i[None, :] == cur[:, None], 1, anc).to(tl.int8)
        live = (cur >= 0) & (cur < T)
        cur = tl.load(Parents + b * stride_pb + cur, mask=live, other=-1).to(tl.int32)
    tl.store(Anc + b * stride_ab + i[:, None] * stride_at + i[None, :], anc, mask=ok[:, None] & ok[None, :])


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """Ancestor-or-self relation of each sequence's tree.

    parents: [B, T] int, parents[b, 0] = -1 (root), parents[b, i] < i (not checked on device;
    out-of-range parents end the walk). Returns anc: [B, T, T] int8, anc[b, i, j] = 1 iff j is i
    or an ancestor of i.
    """
    B, T = parents.shape
    par = parents.to(torch.int32).contiguous()
    anc = empty((B, T, T), torch.int8, parents.device)
    _ancestors[(B,)](par, anc, T, par.stride(0), anc.stride(0), anc.stride(1),
                     T_POW2=max(16, next_pow2(T)))
    return anc


def _check(q, k_cache, v_cache, cache_lens, parents):
    B, T, HQ, D = q.shape
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4 or k_cache.shape[0] != B:
        raise ValueError(f"k_cache/v_cache must be [B, S_max, H_kv, D], got {tuple(k_cache.shape)}")
    HKV = k_cache.shape[2]
    if HQ % HKV or k_cache.shape[3] != D or D & (D - 1) or D < 16:
        raise ValueError(f"need Hq % H_kv == 0 and equal power-of-two head dims, got q {tuple(q.shape)}")
    if not 1 <= T <= 128 or parents.shape != (B, T):
        raise ValueError(f"need 1 <= T <= 128 and parents [B, T], got T={T}, parents {tuple(parents.shape)}")
    if cache_lens.shape != (B,) or q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError("cache_lens must be [B] and q bf16 or fp16")
    for x in (q, k_cache, v_cache):
        if x.stride(-1) != 1:
            raise ValueError("the head dimension must be contiguous")
    return B, T, HQ, HKV, D


def _tma_ok(x: torch.Tensor) -> bool:
    """A tensor descriptor needs a 16-byte-aligned base and 16-byte multiples for outer strides."""
    esz = x.element_size()
    return x.data_ptr() % 16 == 0 and all(st * esz % 16 == 0 for st in x.stride()[:-1])


def _auto_splits(B, HKV, m_blocks, max_keys, block_n, device) -> int:
    """Enough splits for about two programs per SM, at least 4 key tiles per split."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    want = cdiv(2 * sms, B * HKV * m_blocks)
    return int(max(1, min(want, cdiv(max_keys, 4 * block_n))))


def tree_attention(q, k_cache, v_cache, cache_lens, parents, *, sm_scale=None, out=None,
                   anc=None, config=None):
    """Attention of draft-tree queries over cache + ancestors.

    q: [B, T, Hq, D]; k_cache, v_cache: [B, S_max, H_kv, D] with the tree K/V in slots
    [cache_lens[b], cache_lens[b] + T); cache_lens: [B] int32 (context length before the tree);
    parents: [B, T] int (-1 at the root). anc: optional precomputed ancestor_mask(parents).
    Returns out: [B, T, Hq, D], dtype of q.
    """
    B, T, HQ, HKV, D = _check(q, k_cache, v_cache, cache_lens, parents)
    G = HQ // HKV
    cfg = dict(config or lookup("tree_attention", q.device, f"G{G}_D{D}", T, DEFAULT_CONFIG))  # nearest tuned T
    anc = ancestor_mask(parents) if anc is None else anc
    out = empty((B, T, HQ, D), q.dtype, q.device) if out is None else out
    m_blocks = cdiv(T * G, cfg["BLOCK_M"])
    splits = cfg["num_splits"] or _auto_splits(B, HKV, m_blocks, k_cache.shape[1], cfg["BLOCK_N"], q.device)
    splits = next_pow2(splits)
    if splits > 1:
        opart = empty((B, T, HQ, splits, D), torch.float32, q.device)
        lse = empty((B, T, HQ, splits), torch.float32, q.device)
    else:
        opart = lse = out                                           # unused
    scale = (D ** -0.5 if sm_scale is None else sm_scale) * LOG2E
    k_arg, v_arg = k_cache, v_cache
    cfg["tma"] = bool(cfg.get("tma")) and _tma_ok(k_cache) and _tma_ok(v_cache)
    if cfg["tma"]:                               # Hopper bulk tensor copies for the K/V tiles
        from triton.tools.tensor_descriptor import TensorDescriptor
        k_arg = TensorDescriptor.from_tensor(k_cache, [1, cfg["BLOCK_N"], 1, D])
        v_arg = TensorDescriptor.from_tensor(v_cache, [1, cfg["BLOCK_N"], 1, D])
    _tree_attn_fwd[(m_blocks, B * HKV, splits)](
        q, k_arg, v_arg, cache_lens.to(torch.int32), anc, out, opart, lse,
        T, HKV,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        anc.stride(0), anc.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        scale,
        G=G, D=D, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], SPLITS=splits, UPCAST=INTERPRET,
        TMA=cfg["tma"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if splits > 1:
        _merge_splits[(B * T * HQ,)](opart, lse, out, T, HQ,
                                     out.stride(0), out.stride(1), out.stride(2),
                                     D=D, SPLITS=splits, num_warps=4)
    return out
