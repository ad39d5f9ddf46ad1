"""Token Recycling (Luo et al. 2024, "Turning Trash into Treasure", arXiv:2408.08696).

No draft model: an adjacency matrix `adj [vocab, k]` keeps, for every token, the top-k next-token
candidates the target produced the last time that token was an input of a verify step. A draft
tree is the static template filled breadth-first: the rank-r child of a node holding token t gets
token adj[t, r]. Pure numpy: a tree build is a handful of gathers, cheaper on the host than a
kernel launch.
"""
from __future__ import annotations

import numpy as np

from specmoe.runtime.specdec.tree import TreeTemplate


def new_adjacency(vocab: int, k: int) -> np.ndarray:
    """adj [vocab, k] int64, all zeros (token 0 until a row is first seen, as in the paper)."""
    return np.zeros((vocab, k), np.int64)


def build_draft(adj: np.ndarray, root_token: int, tree: TreeTemplate) -> np.ndarray:
    """tokens [T]: tokens[0] = root_token, tokens[i] = adj[tokens[parents[i]], rank[i]].

    Nodes are numbered so that parents come first, so one pass in node order is a BFS fill.
    """
    if tree.max_branch > adj.shape[1]:
        raise ValueError(f"tree has {tree.max_branch} children at a node, adjacency keeps {adj.shape[1]}")
    parents = np.asarray(tree.parents)
    tokens = np.empty(tree.size, np.int64)
    tokens[0] = root_token
    # vectorised per depth level: all parents of a level are already filled
    for d in range(1, int(tree.depth.max()) + 1 if tree.size > 1 else 1):
        idx = np.nonzero(tree.depth == d)[0]
        tokens[idx] = adj[tokens[parents[idx]], tree.rank[idx]]
    return tokens


def update_adjacency(adj: np.ndarray, tokens: np.ndarray, topk_ids: np.ndarray) -> None:
    """adj[tokens[i]] = topk_ids[i] for every verified node (later nodes win on repeats).

    tokens [T] the verify step's inputs; topk_ids [T, k] the target's top-k at each of them.
    """
    adj[tokens] = topk_ids[:, : adj.shape[1]]


def walk_tree(tree: TreeTemplate, tokens: np.ndarray, choice: np.ndarray) -> tuple[list[int], int]:
    """Follow the target's choices down the draft tree.

    choice [T]: the token the target emits after each node (argmax, or a sample of p at that
    node; a sample is exact since each node's sample follows the target's distribution and only
    the nodes on the path are used). Returns (accepted node ids below the root, bonus token).
    """
    cur, accepted = 0, []
    while True:
        want = int(choice[cur])
        nxt = next((c for c in tree.children[cur] if tokens[c] == want), None)
        if nxt is None:
            return accepted, want
        accepted.append(nxt)
        cur = nxt


# ---------------------------------------------------------------------------------------------
# The same three operations as device tensor ops with static shapes, so that a whole Token
# Recycling step (fill, verify, adjacency update, walk, KV compaction) is one CUDA graph and
# the host reads back a few integers per step. The numpy versions above are their reference.

class DeviceTree:
    """A template's index tables on a device (T nodes, depth D).

    parent [T] long (the root points at itself), rank [T], depth [T], anc [T, T] bool
    (ancestor-or-self), sib_before [T, T] bool (j is an earlier sibling of i), levels: one
    index tensor per depth 1..D.
    """

    def __init__(self, tree: TreeTemplate, device):
        import torch
        p = np.asarray(tree.parents).copy()
        p[0] = 0
        t = tree.size
        anc = np.eye(t, dtype=bool)
        for i in range(1, t):
            anc[i] |= anc[p[i]]
        same_parent = (p[:, None] == p[None, :]) & (np.arange(t)[None, :] < np.arange(t)[:, None])
        same_parent[0] = False
        same_parent[:, 0] = False
        self.size, self.max_depth = t, int(tree.depth.max())
        def on_device(a):
            return torch.as_tensor(a, device=device)
        self.parent, self.rank, self.depth = on_device(p), on_device(tree.rank), on_device(tree.depth)
        self.anc, self.sib_before = on_device(anc), on_device(same_parent)
        self.levels = [on_device(np.nonzero(tree.depth == d)[0]) for d in range(1, self.max_depth + 1)]
        self.arange = on_device(np.arange(t))


def fill_draft_(tok, adj, dt: DeviceTree) -> None:
    """tok [T] long, tok[0] the root already set: fill level by level, tok[i] = adj[tok[parent[i]], rank[i]]."""
    for idx in dt.levels:
        tok[idx] = adj[tok[dt.parent[idx]], dt.rank[idx]]


def update_adjacency_(adj, tok, topk_ids, dt: DeviceTree) -> None:
    """adj [V + 1, k]: adj[tok[i]] = topk_ids[i]; the last node wins on repeated tokens (as numpy's
    fancy assignment does); shadowed rows go to the scratch row V, so the result is deterministic."""
    import torch
    later_same = (tok[None, :] == tok[:, None]) & (dt.arange[None, :] > dt.arange[:, None])
    rows = torch.where(later_same.any(1), adj.shape[0] - 1, tok)
    adj.index_copy_(0, rows, topk_ids[:, : adj.shape[1]])


def walk_tree_(tok, choice, dt: DeviceTree):
    """Tensor form of `walk_tree`. Returns (L, path [D + 1], bonus), 0-d/1-d long tensors:
    L - 1 accepted drafts, path[d] = the accepted node at depth d for d < L (entries >= L are
    don't-care), bonus = choice at the deepest accepted node.

    Node i matches if tok[i] is its parent's choice and no earlier sibling holds the same token
    (walk_tree takes the first matching child); accepted = every ancestor-or-self matches.
    Accepted nodes then form one chain from the root, and the deepest one ends it.
    """
    import torch
    same_tok = tok[:, None] == tok[None, :]
    ok = ((tok == choice[dt.parent]) & ~(dt.sib_before & same_tok).any(1)) | (dt.arange == 0)
    acc = ~(dt.anc & ~ok[None, :]).any(1)
    best = torch.where(acc, dt.depth, -1).argmax().view(1)         # [1]: no 0-d indexing (host sync)
    on_path = dt.anc.index_select(0, best)[0]
    d = dt.max_depth
    slot = torch.where(on_path, dt.depth, d + 1)                    # off-path nodes: scratch slot
    path = torch.zeros(d + 2, dtype=tok.dtype, device=tok.device).index_copy_(0, slot, dt.arange)
    return on_path.sum(), path[: d + 1], choice.index_select(0, best)[0]
