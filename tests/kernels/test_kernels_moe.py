import pytest
import torch

from specmoe.kernels.moe import fused_moe, moe_align
from specmoe.kernels.pack import pack_by_rank
from specmoe.kernels.ref import moe_align_ref, moe_ref, pack_by_rank_ref
from tests.kernels._util import rel_err


def routing(gen, M, E, k, drop=0):
    """Distinct experts per token (softmax weights); `drop` tokens get a -1 id (no expert)."""
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(M)])
    ids[:drop, -1] = -1
    weights = torch.rand(M, k, generator=gen).softmax(-1)
    return ids, weights


@pytest.mark.parametrize("M,E,k,block_m", [(1, 4, 2, 16), (13, 5, 2, 16), (40, 8, 3, 32), (7, 3, 1, 16),
                                           (20, 128, 8, 16)])   # 160 pairs in 64-pair chunks
def test_align_matches_reference(M, E, k, block_m):
    gen = torch.Generator().manual_seed(M * 31 + E)
    ids, _ = routing(gen, M, E, k, drop=min(2, M - 1))
    sorted2pair, block2expert, pair2sorted, num_padded = moe_align(ids, E, block_m)
    ref_s2p, ref_b2e, ref_p2s = moe_align_ref(ids, E, block_m)
    n = int(num_padded)
    assert n == ref_s2p.numel() and n % block_m == 0
    assert torch.equal(sorted2pair[:n], ref_s2p)
    assert torch.equal(block2expert[: n // block_m], ref_b2e)
    assert torch.equal(pair2sorted, ref_p2s)


CASES = [
    # M, H, F, E, k, dtype, BLOCK_M, BLOCK_N, BLOCK_K
    (1, 64, 96, 4, 2, torch.bfloat16, 16, 32, 32),
    (13, 64, 96, 5, 2, torch.bfloat16, 16, 32, 32),      # ragged: F not a multiple of BLOCK_N? 96 = 3*32
    (21, 48, 80, 6, 3, torch.bfloat16, 16, 32, 32),      # H, F not multiples of the tiles
    (33, 64, 64, 3, 1, torch.float16, 32, 64, 64),
]


@pytest.mark.parametrize("case", CASES)
def test_fused_moe_matches_expert_loop(case):
    M, H, F, E, k, dtype, bm, bn, bk = case
    gen = torch.Generator().manual_seed(M + H + F)
    x = torch.randn(M, H, generator=gen).to(dtype)
    w13 = (torch.randn(E, 2 * F, H, generator=gen) / H ** 0.5).to(dtype)
    w2 = (torch.randn(E, H, F, generator=gen) / F ** 0.5).to(dtype)
    ids, weights = routing(gen, M, E, k, drop=1 if M > 1 else 0)
    out = torch.full((M, H), float("nan"), dtype=dtype)
    cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 1}
    fused_moe(x, w13, w2, ids, weights, out=out, config=cfg)
    assert rel_err(out, moe_ref(x, w13, w2, ids, weights)) <= 1e-2


def test_fused_moe_uses_gate_weights():
    """Swapping the two gate weights of every token changes the output (weights are applied)."""
    gen = torch.Generator().manual_seed(3)
    M, H, F, E = 5, 32, 32, 4
    x = torch.randn(M, H, generator=gen).bfloat16()
    w13 = torch.randn(E, 2 * F, H, generator=gen).bfloat16()
    w2 = torch.randn(E, H, F, generator=gen).bfloat16()
    ids = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0], [0, 2]])
    wts = torch.tensor([[0.9, 0.1]] * M)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}
    a = fused_moe(x, w13, w2, ids, wts, config=cfg)
    b = fused_moe(x, w13, w2, ids, wts.flip(-1), config=cfg)
    assert rel_err(a, b.float()) > 0.1


@pytest.mark.parametrize("M,H,E,k,R", [(1, 32, 4, 2, 2), (37, 48, 12, 3, 5), (64, 16, 8, 2, 8), (9, 40, 6, 6, 3), (300, 8, 16, 4, 4)])
def test_pack_by_rank_matches_reference(M, H, E, k, R):
    gen = torch.Generator().manual_seed(M * 7 + R)
    x = torch.randn(M, H, generator=gen).bfloat16()
    ids, _ = routing(gen, M, E, k, drop=1)
    expert2rank = torch.arange(E) // -(-E // R)                  # contiguous placement
    expert2rank = expert2rank[torch.randperm(E, generator=gen)]  # then shuffled
    counts, send2token, token2slot, x_send = pack_by_rank(x, ids, expert2rank, R)
    ref_counts, ref_s2t, ref_t2s = pack_by_rank_ref(ids, expert2rank, R)
    n = int(counts.sum())
    assert torch.equal(counts, ref_counts)
    assert torch.equal(send2token[:n], ref_s2t)
    assert torch.equal(token2slot, ref_t2s)
    assert torch.equal(x_send[:n], x[ref_s2t.long()])
