import pytest
import torch

from specmoe.kernels.ref import ancestor_mask_ref, random_parents, tree_attention_ref
from specmoe.kernels.tree_attention import ancestor_mask, tree_attention
from tests.kernels._util import rel_err


def test_ancestor_mask_hand_case():
    # 0 -> {1, 2}, 1 -> {3}, 3 -> {4}
    anc = ancestor_mask(torch.tensor([[-1, 0, 0, 1, 3]]))[0].bool()
    assert anc[4].tolist() == [True, True, False, True, True]
    assert anc[2].tolist() == [True, False, True, False, False]
    assert anc.sum().item() == 1 + 2 + 2 + 3 + 4


@pytest.mark.parametrize("T", [1, 9, 33, 128])
def test_ancestor_mask_matches_walk(T):
    gen = torch.Generator().manual_seed(T)
    parents = random_parents(gen, 3, T)
    assert torch.equal(ancestor_mask(parents).bool(), ancestor_mask_ref(parents))


CASES = [
    # B, T, Hq, Hkv, D, lens, dtype, BLOCK_M, BLOCK_N, splits[, tma]
    (2, 5, 4, 2, 32, [19, 40], torch.bfloat16, 16, 16, 1),
    (3, 9, 4, 2, 32, [50, 3, 77], torch.bfloat16, 32, 16, 2, True),   # K/V through tensor descriptors
    (3, 7, 4, 1, 32, [37, 0, 130], torch.bfloat16, 16, 16, 4),   # ragged, an empty context
    (2, 16, 2, 2, 64, [64, 3], torch.float16, 32, 32, 2),        # MHA, fp16
    (1, 12, 8, 2, 16, [250], torch.bfloat16, 64, 32, 8),         # many splits, M tile > T*G rows
]


@pytest.mark.parametrize("case", CASES)
def test_tree_attention_matches_masked_sdpa(case):
    B, T, HQ, HKV, D, lens, dtype, bm, bn, splits, *tma = case
    gen = torch.Generator().manual_seed(sum(lens) + T)
    S = max(lens) + T + 5
    q = torch.randn(B, T, HQ, D, generator=gen).to(dtype)
    k = torch.randn(B, S, HKV, D, generator=gen).to(dtype)
    v = torch.randn(B, S, HKV, D, generator=gen).to(dtype)
    parents = random_parents(gen, B, T)
    cache_lens = torch.tensor(lens, dtype=torch.int32)
    out = torch.full((B, T, HQ, D), float("nan"), dtype=dtype)
    cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 4, "num_stages": 1, "num_splits": splits, "tma": bool(tma)}
    k[:, max(lens) + T:] = float("nan")           # slots past every sequence's keys must not leak
    v[:, max(lens) + T:] = float("nan")
    tree_attention(q, k, v, cache_lens, parents, out=out, config=cfg)
    ref = tree_attention_ref(q, k, v, cache_lens, parents)
    assert rel_err(out, ref) <= 1e-2


def test_tree_mask_matters():
    """A chain and a star over the same data give different outputs: the mask is used."""
    gen = torch.Generator().manual_seed(7)
    B, T, H, D = 1, 6, 2, 32
    q = torch.randn(B, T, H, D, generator=gen).bfloat16()
    k = torch.randn(B, 20 + T, H, D, generator=gen).bfloat16()
    v = torch.randn(B, 20 + T, H, D, generator=gen).bfloat16()
    lens = torch.tensor([20], dtype=torch.int32)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1, "num_splits": 1}
    chain = torch.tensor([[-1, 0, 1, 2, 3, 4]])
    star = torch.tensor([[-1, 0, 0, 0, 0, 0]])
    a = tree_attention(q, k, v, lens, chain, config=cfg)
    b = tree_attention(q, k, v, lens, star, config=cfg)
    assert torch.equal(a[:, :2], b[:, :2])            # rows 0, 1 have the same ancestors
    assert rel_err(a[:, 2:], b[:, 2:].float()) > 1e-2


def test_bad_shapes_raise():
    q = torch.randn(1, 4, 3, 32).bfloat16()
    k = torch.randn(1, 10, 2, 32).bfloat16()
    with pytest.raises(ValueError):
        tree_attention(q, k, k, torch.tensor([2]), torch.tensor([[-1, 0, 0, 0]]))


def test_default_config_path():
    """No config given: the wrapper looks one up (none for the CPU) and picks splits itself."""
    gen = torch.Generator().manual_seed(11)
    B, T, HQ, HKV, D = 2, 4, 4, 2, 16
    q = torch.randn(B, T, HQ, D, generator=gen).bfloat16()
    k = torch.randn(B, 90, HKV, D, generator=gen).bfloat16()
    v = torch.randn(B, 90, HKV, D, generator=gen).bfloat16()
    lens = torch.tensor([80, 33], dtype=torch.int32)
    parents = random_parents(gen, B, T)
    out = tree_attention(q, k, v, lens, parents)
    assert rel_err(out, tree_attention_ref(q, k, v, lens, parents)) <= 1e-2
