"""Token Recycling's step kernels (tree_step.py) against the numpy reference on random trees
with a 6-token vocabulary, so repeated tokens, equal siblings and duplicate adjacency rows occur."""
import numpy as np
import torch

from specmoe.kernels.tree_step import accept_, fill_draft
from specmoe.runtime.specdec import recycling
from specmoe.runtime.specdec.tree import TreeTemplate


def test_fill_and_accept_equal_the_numpy_reference():
    rng = np.random.default_rng(1)
    layers, heads, S, hd = 2, 3, 64, 8
    for trial in range(40):
        size = int(rng.integers(1, 30))
        tree = TreeTemplate(tuple([-1] + [int(rng.integers(0, i)) for i in range(1, size)]))
        vocab, k = 6, max(tree.max_branch, 1) + int(rng.integers(0, 2))
        adj = rng.integers(0, vocab, (vocab, k))
        dt = recycling.DeviceTree(tree, "cpu")
        root = int(rng.integers(0, vocab))
        want = recycling.build_draft(adj, root, tree)
        tok = torch.zeros(tree.size, dtype=torch.long)
        tok[0] = root
        adj_t = torch.as_tensor(np.vstack([adj, np.zeros((1, k), np.int64)]))
        fill_draft(tok, adj_t, dt.parent, dt.rank, dt.depth, dt.max_depth)
        assert tok.tolist() == want.tolist(), trial
        choice = rng.integers(0, vocab, tree.size)
        for i in range(1, tree.size):                # bias towards the drafts: long paths occur
            if rng.random() < 0.7:
                choice[tree.parents[i]] = want[i]
        accepted, bonus = recycling.walk_tree(tree, want, choice)
        topk = rng.integers(0, vocab, (tree.size, k))
        n = int(rng.integers(0, S - tree.size))
        kc = torch.randn(layers, heads, S, hd)
        vc = torch.randn(layers, heads, S, hd)
        k0, v0 = kc.clone(), vc.clone()
        out = accept_(tok, torch.as_tensor(choice), torch.as_tensor(topk), adj_t, kc, vc, torch.tensor(n),
                      dt.parent, dt.max_depth).tolist()
        path = [0] + accepted
        L, D = len(path), dt.max_depth + 1
        assert out[0] == L and out[1: 1 + L] == path and out[-1] == bonus, trial
        assert out[1 + D: 1 + D + L] == [int(want[a]) for a in path]
        recycling.update_adjacency(adj, want, topk)
        assert (adj_t[:vocab].numpy() == adj).all(), trial
        for d, node in enumerate(path):              # compaction: accepted path at n, n+1, ...
            assert torch.equal(kc[:, :, n + d], k0[:, :, n + node]) and torch.equal(vc[:, :, n + d], v0[:, :, n + node])
        assert torch.equal(kc[:, :, :n], k0[:, :, :n]) and torch.equal(kc[:, :, n + D:], k0[:, :, n + D:])
