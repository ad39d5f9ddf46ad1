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
