"""Draft-tree templates in the TREE.json contract (node 0 = root, parents[i] < i, siblings in rank order)."""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specmoe.errors import InputError


@dataclass(frozen=True)
class TreeTemplate:
    """parents [T] with parents[0] = -1; derived: depth [T], rank [T], children lists, BFS levels."""

    parents: tuple[int, ...]
    name: str = "custom"
    depth: np.ndarray = field(init=False, repr=False, compare=False)
    rank: np.ndarray = field(init=False, repr=False, compare=False)
    children: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        p = list(self.parents)
        depth, rank = np.zeros(len(p), np.int64), np.zeros(len(p), np.int64)
        kids: list[list[int]] = [[] for _ in p]
        for i in range(1, len(p)):
            depth[i] = depth[p[i]] + 1
            rank[i] = len(kids[p[i]])
            kids[p[i]].append(i)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "children", tuple(tuple(k) for k in kids))

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def max_branch(self) -> int:
        return max((len(k) for k in self.children), default=0)


def tree_paths(parents: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """depth [T] int32 and path [T, D + 1] int32: path[t, d] = t's ancestor at depth d (root
    first, path[t, depth[t]] = t; entries past depth[t] are 0 and never read)."""
    t = len(parents)
    depth = np.zeros(t, np.int32)
    for i, p in enumerate(parents[1:], 1):
        depth[i] = depth[p] + 1
    path = np.zeros((t, int(depth.max()) + 1), np.int32)
    for i in range(t):
        j = i
        while j >= 0:
            path[i, depth[j]] = j
            j = parents[j] if j > 0 else -1
    return depth, path


def check_parents(parents, source, name="parents") -> tuple[int, ...]:
    if not isinstance(parents, list) or not parents:
        raise InputError(source, name, "expected a non-empty list of parent indices")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in parents):
        raise InputError(source, name, "expected integers")
    if parents[0] != -1:
        raise InputError(source, name, "node 0 is the root: parents[0] must be -1")
    for i in range(1, len(parents)):
        if not 0 <= parents[i] < i:
            raise InputError(source, f"{name}[{i}]", f"= {parents[i]}: need 0 <= parents[i] < i")
    return tuple(parents)


def load_tree(path) -> TreeTemplate:
    """Read a TREE.json file (the planner's output, or a shipped template)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, "", "no such file") from None
    except (OSError, ValueError) as e:
        raise InputError(path, "", f"not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise InputError(path, "version", "expected a draft tree with version 1")
    if "parents" not in data:
        raise InputError(path, "parents", "required key is missing")
    return TreeTemplate(check_parents(data["parents"], path), str(data.get("method", "custom")))


def default_template() -> TreeTemplate:
    """Token Recycling's published 80-draft-node static template ("2.2.2"), from the planner."""
    from specmoe.planner.trees import recycling_template
    return TreeTemplate(tuple(recycling_template().parents), "static-template")


def chain(n: int) -> TreeTemplate:
    return TreeTemplate(tuple(range(-1, n)), f"chain{n}")


def constant_branching(branching: list[int]) -> TreeTemplate:
    """BFS-numbered tree where every depth-d node has branching[d] children (RSD-C's shape)."""
    from specmoe.planner.trees import constant_branching as planner_tree
    return TreeTemplate(planner_tree(branching).parents, "const-" + "x".join(map(str, branching)))


def best_first(budget: int, p_rank: list[float], max_depth: int = 10) -> TreeTemplate:
    """Greedy tree maximising sum of path probabilities under p(child of rank r accepted) = p_rank[r].

    Best-first expansion is optimal for this positional model (Sequoia, arXiv:2402.12374, § 3.1:
    node value = product of p along its path, and a child never outvalues its parent).
    Nodes are renumbered BFS (by depth, then parent, then rank) so siblings stay in rank order.
    """
    nodes = [(-1, 0, 0, 1.0)]  # (parent, depth, rank, value)
    heap = [(-p_rank[0], 0, 0)]  # (-value, parent, rank)
    while len(nodes) <= budget and heap:
        negv, par, r = heapq.heappop(heap)
        d = nodes[par][1] + 1
        nodes.append((par, d, r, -negv))
        i = len(nodes) - 1
        if r + 1 < len(p_rank):
            heapq.heappush(heap, (-nodes[par][3] * p_rank[r + 1], par, r + 1))
        if d < max_depth:
            heapq.heappush(heap, (negv * p_rank[0], i, 0))
    order = sorted(range(len(nodes)), key=lambda i: (nodes[i][1], _path(nodes, i)))
    new = {old: k for k, old in enumerate(order)}
    parents = [-1] + [new[nodes[old][0]] for old in order[1:]]
    return TreeTemplate(tuple(parents), f"best-first{budget}")


def _path(nodes, i):
    ranks = []
    while i:
        ranks.append(nodes[i][2])
        i = nodes[i][0]
    return tuple(reversed(ranks))
