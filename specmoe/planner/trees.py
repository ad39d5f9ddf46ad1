"""Draft trees: the TREE.json format, their expected accepted length, and the baseline shapes.

A tree is a parent array `parents [n + 1]`: node 0 is the root (the last accepted token, not a
draft token), `parents[i] < i`, and the children of a node are its draft candidates in rank
order (lowest index = top-ranked). Budget = n draft tokens.

Expected accepted tokens per step (Sequoia, arXiv:2402.12374, § 3.1): with f(root) = 1 and
f(v) = f(parent(v)) * p[depth(v), rank(v)], E[accepted] = sum over v of f(v). The root's 1 is
the bonus token, so the empty tree gives 1.0 and a chain of gamma tokens at constant alpha gives
1 + alpha + ... + alpha^gamma = (1 - alpha^(gamma+1)) / (1 - alpha).
"""
from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specmoe.errors import InputError
from specmoe.fileio import write_json_atomic
from specmoe.planner.acceptance import Acceptance

METHODS = ("sequoia", "recycling", "rsd-c", "rsd-s", "chain", "eagle2")


@dataclass(frozen=True)
class Tree:
    """parents: int [n + 1], parents[0] = -1."""

    parents: tuple[int, ...]
    method: str = "custom"
    depth: np.ndarray = field(init=False, repr=False, compare=False)  # [n + 1]
    rank: np.ndarray = field(init=False, repr=False, compare=False)  # [n + 1]

    def __post_init__(self):
        p = check_parents(list(self.parents), "tree", "parents")
        object.__setattr__(self, "parents", tuple(int(x) for x in p))
        depth, rank = np.zeros(len(p), np.int64), np.zeros(len(p), np.int64)
        seen = np.zeros(len(p), np.int64)
        for i in range(1, len(p)):
            depth[i] = depth[p[i]] + 1
            rank[i] = seen[p[i]]
            seen[p[i]] += 1
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "rank", rank)

    @property
    def budget(self) -> int:
        return len(self.parents) - 1

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    def level_widths(self) -> list[int]:
        """Draft tokens per depth 1..max_depth."""
        return np.bincount(self.depth, minlength=self.max_depth + 1)[1:].tolist()

    def to_json(self, **extra) -> dict:
        return {"version": 1, "method": self.method, "parents": list(self.parents),
                "budget": self.budget, "depth": self.max_depth, **extra}


def save_json(obj: dict, path) -> None:
    """Write a tree (or any JSON document) atomically."""
    write_json_atomic(path, obj)


def plan_section(tree: "Tree | None") -> dict | None:
    """The Plan JSON's `draft_tree` section: {"parents": [...], "method": ...} or None."""
    return None if tree is None else {"parents": list(tree.parents), "method": tree.method}


def check_parents(parents, source, field_name) -> np.ndarray:
    """Validate a parent array per the TREE.json contract; return it as int64 `[n + 1]`."""
    if not isinstance(parents, (list, tuple)) or not parents:
        raise InputError(source, field_name, "expected a non-empty list of parent indices")
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in parents):
        raise InputError(source, field_name, "expected integers")
    p = np.asarray(parents, np.int64)
    if p[0] != -1:
        raise InputError(source, field_name, "node 0 is the root: parents[0] must be -1")
    bad = [i for i in range(1, len(p)) if not 0 <= p[i] < i]
    if bad:
        raise InputError(source, field_name, f"parents[{bad[0]}] = {p[bad[0]]}: need 0 <= parents[i] < i")
    return p


def load_tree(path) -> Tree:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(path, "", "no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, "", f"not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise InputError(path, "version", "expected a draft tree with version 1")
    if "parents" not in data:
        raise InputError(path, "parents", "required key is missing")
    check_parents(data["parents"], path, "parents")
    return Tree(tuple(data["parents"]), str(data.get("method", "custom")))


def node_probs(tree: Tree, acc: Acceptance) -> np.ndarray:
    """f [n + 1]: the probability that each node is on the accepted path (f[0] = 1)."""
    f = np.ones(tree.budget + 1)
    rows = acc.rows(max(tree.max_depth, 1))
    for i in range(1, tree.budget + 1):
        r = tree.rank[i]
        f[i] = f[tree.parents[i]] * (rows[tree.depth[i] - 1, r] if r < acc.max_rank else 0.0)
    return f


def expected_accepted(tree: Tree, acc: Acceptance) -> float:
    """E[tokens per verify step], bonus token included."""
    return float(node_probs(tree, acc).sum())


def accepted_length_pmf(tree: Tree, acc: Acceptance) -> np.ndarray:
    """pmf [max_depth + 2]: P(a verify step yields j tokens), bonus included (pmf[0] = 0).

    The walk ends at accepted node v when none of v's drafted children is accepted, so
    P(j = depth(v) + 1) sums f[v] · (1 − Σ_children p(child | v)) over nodes at that depth.
    """
    f = node_probs(tree, acc)
    stop = f.copy()
    for i in range(1, tree.budget + 1):
        stop[tree.parents[i]] -= f[i]
    pmf = np.zeros(tree.max_depth + 2)
    np.add.at(pmf, tree.depth + 1, np.clip(stop, 0.0, None))
    return pmf / pmf.sum()


def sample_accepted(tree: Tree, acc: Acceptance, rng: np.random.Generator, size: int,
                    pmf: np.ndarray | None = None) -> np.ndarray:
    """int [size]: tokens produced by `size` independent verify steps (accepted drafts + 1 bonus),
    drawn from the exact length distribution (`accepted_length_pmf`, pass it to reuse it)."""
    pmf = accepted_length_pmf(tree, acc) if pmf is None else pmf
    return rng.choice(len(pmf), size=size, p=pmf).astype(np.int64)


def walk_accepted(tree: Tree, acc: Acceptance, rng: np.random.Generator, size: int) -> np.ndarray:
    """int [size]: tokens of `size` verify steps, by walking the tree (the definition that
    `accepted_length_pmf` is checked against; slower than `sample_accepted`).

    At an accepted node the rank-r child is accepted with probability p[depth, r], ranks being
    mutually exclusive; the walk stops at a node none of whose drafted children is accepted.
    """
    n = tree.budget
    kids = [[] for _ in range(n + 1)]
    for i in range(1, n + 1):
        kids[tree.parents[i]].append(i)
    width = max(1, max(len(k) for k in kids))
    child = np.full((n + 1, width), -1, np.int64)  # [n + 1, width]
    cum = np.zeros((n + 1, width))  # cumulative acceptance probability over ranks
    for v, ks in enumerate(kids):
        for r, c in enumerate(ks):
            child[v, r] = c
            cum[v, r] = acc.prob(int(tree.depth[c]), r)
        cum[v] = np.cumsum(cum[v])
        cum[v, len(ks):] = np.inf if not ks else cum[v, len(ks) - 1]
    cur = np.zeros(size, np.int64)
    out = np.ones(size, np.int64)
    alive = np.ones(size, bool)
    for _ in range(tree.max_depth):
        u = rng.random(size)
        hit = u[:, None] < cum[cur]  # [size, width]
        r = hit.argmax(axis=1)
        nxt = np.where(hit.any(axis=1), child[cur, r], -1)
        alive &= nxt >= 0
        out += alive
        cur = np.where(alive, nxt, cur)
    return out


# ---------------------------------------------------------------- shapes


def from_depths(preorder_depths) -> Tree:
    """The ordered tree whose non-root nodes, in preorder, have these depths (root = 0)."""
    parents, last = [-1], {0: 0}
    for i, d in enumerate(preorder_depths, start=1):
        parents.append(last[d - 1])
        last[d] = i
    return canonical(Tree(tuple(parents)))


def canonical(tree: Tree, method: str | None = None) -> Tree:
    """Renumber breadth-first, siblings in rank order (the form written to TREE.json)."""
    kids = [[] for _ in tree.parents]
    for i in range(1, len(tree.parents)):
        kids[tree.parents[i]].append(i)
    order, new_of = [0], {0: 0}
    for v in order:
        for c in kids[v]:
            new_of[c] = len(order)
            order.append(c)
    parents = [-1] + [new_of[tree.parents[v]] for v in order[1:]]
    return Tree(tuple(parents), method or tree.method)


def chain_tree(n: int) -> Tree:
    return Tree(tuple(range(-1, n)), "chain")


def enumerate_trees(n: int, max_depth: int | None = None):
    """Every ordered tree with n draft nodes (Catalan(n) of them), depth <= max_depth."""
    D = max_depth or n

    def rec(prefix):
        if len(prefix) == n:
            yield tuple(prefix)
            return
        top = (prefix[-1] + 1) if prefix else 1
        for d in range(1, min(top, D) + 1):
            prefix.append(d)
            yield from rec(prefix)
            prefix.pop()

    for depths in rec([]):
        yield from_depths(depths)


def brute_force_best(n: int, acc: Acceptance, max_depth: int | None = None) -> tuple[float, Tree]:
    """The test oracle: the best tree with exactly n draft nodes, by enumeration."""
    best = max(enumerate_trees(n, max_depth), key=lambda t: expected_accepted(t, acc))
    return expected_accepted(best, acc), best


def _top_children(scored, limit):
    """The `limit` best (score, parent, rank) candidates; ties go to the earlier parent, lower rank."""
    return heapq.nlargest(limit, scored, key=lambda s: (s[0], -s[1], -s[2]))


RECYCLING_TEMPLATE = Path(__file__).parent / "data" / "recycling_template_2.2.2.json"


def from_paths(paths, method: str = "custom") -> Tree:
    """A tree from rank paths (Medusa/Token Recycling notation): [0, 1] is the rank-1 child of the
    root's rank-0 child. Every prefix of a path must be present and a node's ranks contiguous."""
    index = {(): 0}
    parents = [-1]
    for path in sorted((tuple(p) for p in paths), key=lambda p: (len(p), p)):
        if path[:-1] not in index:
            raise InputError("tree paths", str(list(path)), "its parent path is missing")
        index[path] = len(parents)
        parents.append(index[path[:-1]])
    tree = Tree(tuple(parents), method)
    for path, i in index.items():
        if path and tree.rank[i] != path[-1]:
            raise InputError("tree paths", str(list(path)), "sibling ranks must be 0, 1, 2, ... without gaps")
    return tree


def recycling_template() -> Tree:
    """Token Recycling's default static template "2.2.2" (Luo et al. 2024, arXiv:2408.08696; shape
    from the authors' repository, see the data file): 80 draft nodes, level widths
    8, 21, 25, 15, 8, 3, ranks from an adjacency matrix of top-8 candidates."""
    with open(RECYCLING_TEMPLATE) as f:
        return from_paths(json.load(f)["paths"], "recycling")


def level_wise(widths, score_of, max_children: int, method: str) -> Tree:
    """Keep, at each depth d, the widths[d-1] children of the previous level with the best path
    score f(parent) * score_of(d, rank); ties go to the earlier parent and lower rank."""
    parents, f_of, level = [-1], [1.0], [0]
    for d, w in enumerate(widths, start=1):
        scored = [(f_of[v] * score_of(d, r), v, r) for v in level for r in range(max_children)]
        chosen = sorted(_top_children(scored, w), key=lambda s: (s[1], s[2]))
        level = []
        for s, v, r in chosen:
            parents.append(v)
            f_of.append(s)
            level.append(len(parents) - 1)
    return canonical(Tree(tuple(parents)), method)


def truncate(tree: Tree, budget: int) -> Tree:
    """The first `budget` draft nodes in breadth-first order (a valid tree of that size)."""
    t = canonical(tree)
    return Tree(t.parents[: budget + 1], tree.method)


def eagle2_tree(acc: Acceptance, budget: int, depth: int, top_k: int = 8) -> Tree:
    """EAGLE-2's dynamic expansion (Li et al. 2024, arXiv:2406.16858, § 4): at each depth expand
    the top_k nodes of the newest layer by value V = product of confidences along the path, each
    with its top_k candidates; then rerank all drafted nodes by V and keep the best `budget`.

    Here the draft confidence is the acceptance model's p (EAGLE-2's premise is that confidence
    approximates the acceptance rate).
    """
    nodes = [(1.0, -1, 0, 0)]  # (V, parent, rank, depth)
    frontier = [0]
    for d in range(1, depth + 1):
        grow = heapq.nlargest(top_k, frontier, key=lambda v: (nodes[v][0], -v))
        frontier = []
        for v in sorted(grow):
            for r in range(top_k):
                nodes.append((nodes[v][0] * acc.prob(d, r), v, r, d))
                frontier.append(len(nodes) - 1)
    keep = sorted(range(1, len(nodes)), key=lambda i: (-nodes[i][0], nodes[i][3], i))[:budget]
    keep = sorted(keep)
    new_of = {0: 0}
    parents = [-1]
    for i in keep:
        new_of[i] = len(parents)
        parents.append(new_of[nodes[i][1]])
    return canonical(Tree(tuple(parents)), "eagle2")


def _branchings(budget: int, max_depth: int, max_b: int):
    """Non-increasing branching vectors (b_1 >= b_2 >= ...) whose tree has <= budget nodes."""
    def rec(prefix, width, used):
        if prefix:
            yield tuple(prefix)
        if len(prefix) == max_depth:
            return
        for b in range(min(prefix[-1] if prefix else max_b, max_b), 0, -1):
            if used + width * b <= budget:
                yield from rec(prefix + [b], width * b, used + width * b)

    yield from rec([], 1, 0)


def constant_branching(bs) -> Tree:
    parents, level = [-1], [0]
    for b in bs:
        nxt = []
        for v in level:
            for _ in range(b):
                parents.append(v)
                nxt.append(len(parents) - 1)
        level = nxt
    return Tree(tuple(parents), "rsd-c")


def rsd_constant(acc: Acceptance, budget: int, max_depth: int, max_b: int = 8) -> Tree:
    """RSD-C (Jeon et al. 2024, arXiv:2402.14160): Gumbel-top-k draws b_d distinct tokens at every
    node of depth d-1. Best non-increasing branching vector with at most `budget` draft tokens."""
    if budget == 0:
        return Tree((-1,), "rsd-c")
    best = max(_branchings(budget, max_depth, max_b),
               key=lambda bs: (round(expected_accepted(constant_branching(bs), acc), 12), bs))
    return constant_branching(best)


def beam_tree(acc: Acceptance, width: int, depth: int) -> Tree:
    """Stochastic beam search's tree in expectation: each level keeps the `width` children of the
    previous level with the highest path probability."""
    return level_wise([width] * depth, acc.prob, max(width, 1), "rsd-s")


def rsd_beam(acc: Acceptance, budget: int, max_depth: int) -> Tree:
    """RSD-S (Jeon et al. 2024): stochastic beam search, beam width W and depth L, W * L <= budget."""
    if budget == 0:
        return Tree((-1,), "rsd-s")
    cands = [(w, L) for w in range(1, budget + 1) for L in range(1, max_depth + 1) if w * L <= budget]
    best = max(cands, key=lambda wl: (round(expected_accepted(beam_tree(acc, *wl), acc), 12), -wl[0]))
    return beam_tree(acc, *best)
