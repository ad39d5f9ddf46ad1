"""Batch-invariant fused Llama kernels (dense.py, path_attention.py) against ref.py, under
Triton's interpreter: values, and rows that do not depend on the other rows of the call."""
import math

import pytest
import torch

from specmoe.kernels import dense
from specmoe.kernels.path_attention import path_attention
from specmoe.kernels.ref import (
    linear_bf16_ref,
    linear_ref,
    qkv_rope_ref,
    random_parents,
    swiglu_ref,
    tree_attention_ref,
)
from tests.kernels._util import rel_err


def _rand(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _cfg(bn, split, bm=16):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 32, "SPLIT": split, "num_warps": 4, "num_stages": 1}


@pytest.mark.parametrize("M,N,K", [(1, 40, 96), (21, 33, 70), (16, 130, 200)])
@pytest.mark.parametrize("norm,resid", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("split,bm", [(1, 16), (3, 32)])
def test_linear_matches_reference(M, N, K, norm, resid, split, bm):
    gen = torch.Generator().manual_seed(M * N + K)
    x, w = _rand(gen, M, K), _rand(gen, N, K, scale=K ** -0.5)
    nw = 1 + 0.1 * _rand(gen, K) if norm else None
    r = _rand(gen, M, N) if resid else None
    out = dense.linear(x, w, norm_w=nw, eps=1e-5, residual=r, precision="ieee", cfg=_cfg(16, split, bm))
    assert rel_err(out, linear_ref(x, w, nw, 1e-5, r)) < 1e-5
    assert not dense._scratch(x.device, 1, 1)[0].any()     # split-K counters back to zero


@pytest.mark.parametrize("M,N,K,split", [(1, 40, 96, 1), (21, 33, 70, 3)])
def test_bf16_weights_round_the_dot_inputs_and_sum_in_fp32(M, N, K, split):
    """bf16 weights: equal to the emulation (bf16 inputs, exact products) to fp32 summation
    error, and within bf16 rounding of the float64 product; rows independent of the call."""
    gen = torch.Generator().manual_seed(M + N)
    x, w = _rand(gen, M, K), _rand(gen, N, K, scale=K ** -0.5).to(torch.bfloat16)
    nw, r = 1 + 0.1 * _rand(gen, K), _rand(gen, M, N)
    out = dense.linear(x, w, norm_w=nw, eps=1e-5, residual=r.clone(), cfg=_cfg(16, split))
    assert rel_err(out - r, linear_bf16_ref(x, w, nw, 1e-5)) < 1e-5
    assert 1e-5 < rel_err(out - r, linear_ref(x, w.float(), nw, 1e-5)) < 2e-2
    assert torch.equal(dense.linear(x[-1:], w, norm_w=nw, eps=1e-5, residual=r[-1:].clone(), cfg=_cfg(16, split)),
                       out[-1:])


def test_linear_in_place_residual_and_swiglu():
    gen = torch.Generator().manual_seed(3)
    x, h = _rand(gen, 9, 48), _rand(gen, 9, 70)
    w, w1, w3 = _rand(gen, 48, 70, scale=0.1), _rand(gen, 70, 48, scale=0.2), _rand(gen, 70, 48, scale=0.2)
    want = linear_ref(h, w, residual=x)
    assert dense.linear(h, w, residual=x, out=x, precision="ieee") is x
    assert rel_err(x, want) < 1e-5
    nw = 1 + 0.1 * _rand(gen, 48)
    w13 = dense.interleave_rows(w1, w3)
    for split in (1, 2):
        assert rel_err(dense.swiglu(x, nw, w13, 1e-5, "ieee", cfg=_cfg(32, split)),
                       swiglu_ref(x, nw, w1, w3, 1e-5)) < 1e-5


@pytest.mark.parametrize("bn,split", [(16, 1), (32, 2)])
def test_qkv_rope_writes_rotated_q_and_the_cache_slots(bn, split):
    gen = torch.Generator().manual_seed(5)
    nh, nkv, hd, K, M, S, n = 4, 2, 8, 32, 7, 40, 11
    x, nw = _rand(gen, M, K), 1 + 0.1 * _rand(gen, K)
    wqkv = _rand(gen, (nh + 2 * nkv) * hd, K, scale=0.2)
    depth = torch.tensor([0, 1, 1, 2, 2, 3, 1], dtype=torch.int32)
    pos = torch.arange(64).float()[:, None] * (10000.0 ** (-torch.arange(0, hd, 2).float() / hd))
    kc = torch.full((nkv, S, hd), float("nan"))
    vc = torch.full((nkv, S, hd), float("nan"))
    q = dense.qkv_rope_(x, nw, wqkv, pos.cos(), pos.sin(), torch.tensor(n), depth, kc, vc, nh, 1e-5, "ieee",
                        cfg=_cfg(bn, split))
    rq, rk, rv = qkv_rope_ref(x, nw, wqkv, n + depth, nh, nkv, 10000.0, 1e-5)
    assert rel_err(q, rq) < 1e-5
    assert rel_err(kc[:, n: n + M].transpose(0, 1), rk) < 1e-5
    assert rel_err(vc[:, n: n + M].transpose(0, 1), rv) < 1e-5
    assert kc[:, :n].isnan().all() and kc[:, n + M:].isnan().all()   # no other slot written


def _paths(parents):
    from specmoe.runtime.specdec.tree import tree_paths
    depth, path = tree_paths(parents)
    return torch.as_tensor(depth), torch.as_tensor(path)


@pytest.mark.parametrize("T,n,G,qb,chunk", [(1, 0, 3, None, 32), (1, 70, 3, None, 32), (13, 37, 3, 5, 32),
                                            (13, 37, 3, 2, 1024), (24, 130, 1, 16, 48), (24, 130, 1, 3, 32)])
def test_path_attention_matches_masked_sdpa(T, n, G, qb, chunk):
    gen = torch.Generator().manual_seed(T * 100 + n)
    hkv, hd = 2, 16
    parents = random_parents(gen, 1, T)[0]
    S = n + T + 9
    q = _rand(gen, T, hkv * G, hd)
    kc, vc = _rand(gen, hkv, S, hd), _rand(gen, hkv, S, hd)
    kc[:, n + T:] = vc[:, n + T:] = float("nan")                      # past the tree: never read
    depth, path = _paths(parents.tolist())
    out = path_attention(q, kc, vc, torch.tensor(n), depth, path, block_n=16, chunk=chunk, qb=qb, precision="ieee")
    ref = tree_attention_ref(q[None], kc.transpose(0, 1)[None], vc.transpose(0, 1)[None],
                             torch.tensor([n]), parents[None])[0]
    assert rel_err(out.view(T, -1, hd), ref) < 1e-5


def test_rows_do_not_depend_on_the_rest_of_the_call():
    """Batch invariance: a node verified inside a tree gets the bits it gets alone, as the
    autoregressive step (prefix extended by its ancestors, path = itself) computes them."""
    gen = torch.Generator().manual_seed(11)
    K, N = 64, 48
    x, w, nw = _rand(gen, 30, K), _rand(gen, N, K, scale=0.1), 1 + 0.1 * _rand(gen, K)
    full = dense.linear(x, w, norm_w=nw, eps=1e-5)
    for i in (0, 17, 29):
        assert torch.equal(dense.linear(x[i:i + 1], w, norm_w=nw, eps=1e-5)[0], full[i])
    # attention: node 3 of the chain-ish tree 0 -> 1 -> 3 against the AR view of the same keys
    parents = [-1, 0, 1, 1, 2]
    hkv, G, hd, n = 1, 3, 16, 50
    q = _rand(gen, 5, G, hd)
    kc, vc = _rand(gen, hkv, 80, hd), _rand(gen, hkv, 80, hd)
    depth, path = _paths(parents)
    tree_out = path_attention(q, kc, vc, torch.tensor(n), depth, path, block_n=16, chunk=32, precision="ieee")
    ar_k, ar_v = kc.clone(), vc.clone()                                # commit 0, 1 then decode 3
    for d, node in enumerate([0, 1, 3]):
        ar_k[:, n + d], ar_v[:, n + d] = kc[:, n + node], vc[:, n + node]
    one = torch.zeros(1, dtype=torch.int32)
    ar_out = path_attention(q[3:4], ar_k, ar_v, torch.tensor(n + 2), one, one[None], block_n=16, chunk=32,
                            precision="ieee")
    assert torch.equal(ar_out[0], tree_out[3])
    for qb in (1, 2):                   # queries per program: free, the bits stay
        again = path_attention(q, kc, vc, torch.tensor(n), depth, path, block_n=16, chunk=32, qb=qb, precision="ieee")
        assert torch.equal(again, tree_out)
    assert math.isfinite(float(tree_out.sum()))
