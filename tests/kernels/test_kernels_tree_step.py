"""Token Recycling's step kernels (tree_step.py) against the numpy reference on random trees
with a 6-token vocabulary, so repeated tokens, equal siblings and duplicate adjacency rows occur."""
import numpy as np
import torch

from specmoe.kernels.tree_step import accept_, fill_draft, topk_ids
from specmoe.runtime.specdec import recycling
from tests.runtime.specdec.specdec_helpers import random_recycling_case


def test_fill_and_accept_equal_the_numpy_reference():
    rng = np.random.default_rng(1)
    layers, heads, S, hd = 2, 3, 64, 8
    for trial in range(40):
        c = random_recycling_case(rng, 30)
        dt = c.dt
        fill_draft(c.tok, c.adj_t, dt.parent, dt.rank, dt.depth, dt.max_depth)
        assert c.tok.tolist() == c.want.tolist(), trial
        accepted, bonus = recycling.walk_tree(c.tree, c.want, c.choice)
        n = int(rng.integers(0, S - c.tree.size))
        kc = torch.randn(layers, heads, S, hd)
        vc = torch.randn(layers, heads, S, hd)
        k0, v0 = kc.clone(), vc.clone()
        out = accept_(c.tok, torch.as_tensor(c.choice), torch.as_tensor(c.topk), c.adj_t, kc, vc, torch.tensor(n),
                      dt.parent, dt.max_depth).tolist()
        path = [0] + accepted
        L, D = len(path), dt.max_depth + 1
        assert out[0] == L and out[1: 1 + L] == path and out[-1] == bonus, trial
        assert out[1 + D: 1 + D + L] == [int(c.want[a]) for a in path]
        recycling.update_adjacency(c.adj, c.want, c.topk)
        assert (c.adj_t[:-1].numpy() == c.adj).all(), trial
        for d, node in enumerate(path):              # compaction: accepted path at n, n+1, ...
            assert torch.equal(kc[:, :, n + d], k0[:, :, n + node]) and torch.equal(vc[:, :, n + d], v0[:, :, n + node])
        assert torch.equal(kc[:, :, :n], k0[:, :, :n]) and torch.equal(kc[:, :, n + D:], k0[:, :, n + D:])


def test_topk_ids_match_torch_topk():
    gen = torch.Generator().manual_seed(3)
    for T, N, chunk in [(1, 300, 64), (7, 1000, 128), (3, 96, 32)]:
        x = torch.randn(T, N, generator=gen) * 10
        x[-1] = -torch.rand(N, generator=gen) * 100 - 1e3   # an all-negative row: order kept
        x[0, 5] = x[0, 9] = x.max() + 1                   # a tie at the top: smaller index first
        got = topk_ids(x, 8, chunk=chunk)
        assert got[0, :2].tolist() == [5, 9]
        assert torch.equal(x.gather(1, got), torch.topk(x, 8).values)
        assert got[1:].tolist() == torch.topk(x[1:], 8).indices.tolist()     # no ties there
