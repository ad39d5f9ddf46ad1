"""Sequoia's dynamic program for the draft tree with the most expected accepted tokens.

Sequoia (Chen et al. 2024, "Sequoia: Scalable, Robust, and Hardware-aware Speculative
Decoding", arXiv:2402.12374, § 3.1, the depth-bounded recurrence) finds, for a node budget n
and a depth bound L,

    c(n, L) = 1 + max_{a_1 + ... + a_k = n - 1,  a_i >= 1}  sum_i p_i * c(a_i, L - 1),
    c(1, L) = 1,    c(n > 1, 0) = -inf,

where the i-th ranked child of the root heads a subtree of a_i nodes. We index p by the child's
depth as well as its rank (`Acceptance.p [depth, rank]`), which covers the positional model (a)
(every row equal) and the per-depth chain model (b) with the same recurrence. The inner max over
compositions is computed rank by rank (a max-plus convolution per rank):

    G_d(m, k) = max_{1 <= a <= m}  p[d, k] * V_d(a) + G_d(m - a, k + 1),   G_d(0, k) = 0,
    V_{d-1}(n) = 1 + G_d(n - 1, 0),

with V_d(a) the best subtree of exactly a nodes whose root is at depth d. Children use ranks
0, 1, 2, ... contiguously, as the draft proposes its candidates in rank order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specmoe.planner.acceptance import Acceptance
from specmoe.planner.trees import Tree, canonical

NEG = -np.inf


@dataclass
class SequoiaDP:
    """values: float [budget + 1], best E[accepted] with exactly n draft nodes (-inf if infeasible);
    choice: int [max_depth + 1, ranks, budget + 1] (argmax subtree sizes, 0 = none)."""

    acc: Acceptance
    budget: int
    max_depth: int
    values: np.ndarray
    choice: np.ndarray

    def best_upto(self) -> np.ndarray:
        """float [budget + 1]: the best value with at most n draft nodes."""
        return np.maximum.accumulate(np.where(np.isfinite(self.values), self.values, 0.0))

    def size_upto(self, n: int) -> int:
        """The number of draft nodes of the best tree with at most n of them (smallest on ties)."""
        best = self.best_upto()[n]
        return int(np.nonzero(self.values[: n + 1] >= best - 1e-12)[0][0])

    def tree(self, n: int) -> Tree:
        """The best tree with at most n draft nodes, breadth-first numbered."""
        size = self.size_upto(n)
        parents = [-1]
        self._build(0, 0, size + 1, parents)
        return canonical(Tree(tuple(parents)), "sequoia")

    def _build(self, node: int, depth: int, n: int, parents: list) -> None:
        m, k = n - 1, 0
        while m > 0:
            a = int(self.choice[depth + 1, k, m])
            parents.append(node)
            self._build(len(parents) - 1, depth + 1, a, parents)
            m, k = m - a, k + 1


def sequoia_dp(acc: Acceptance, budget: int, max_depth: int) -> SequoiaDP:
    """Solve the recurrence for every n <= budget at depth bound max_depth."""
    N, D = budget, max_depth
    K = max(1, min(acc.max_rank, N))
    rows = acc.rows(max(D, 1))  # [D, max_rank]; rows[d - 1] prices children at depth d
    choice = np.zeros((D + 1, K + 1, N + 1), np.int64)
    V = np.full(N + 2, NEG)  # V_d(a) for a = 0..N+1 nodes; at depth D only a leaf fits
    V[1] = 1.0
    m_idx = np.arange(N + 1)[:, None]  # [N + 1, 1]
    a_idx = np.arange(N + 1)[None, :]  # [1, N + 1]
    valid = (a_idx >= 1) & (a_idx <= m_idx)  # [N + 1, N + 1]
    for d in range(D, 0, -1):
        G = np.full(N + 1, NEG)
        G[0] = 0.0  # G_d(., K): no ranks left
        for k in range(K - 1, -1, -1):
            p = rows[d - 1, k] if k < rows.shape[1] else 0.0
            pv = np.where(np.isfinite(V), p * np.where(np.isfinite(V), V, 0.0), NEG)  # infeasible stays -inf
            rest = np.where(valid, G[np.clip(m_idx - a_idx, 0, N)], NEG)  # [m, a]
            cand = np.where(valid, pv[np.clip(a_idx, 0, N + 1)] + rest, NEG)
            best_a = cand.argmax(axis=1)
            newG = cand[np.arange(N + 1), best_a]
            newG[0] = 0.0
            choice[d, k] = np.where(np.isfinite(newG), best_a, 0)
            G = newG
        V = np.full(N + 2, NEG)
        V[1:] = 1.0 + G  # a node with n - 1 descendants
    values = V[1: N + 2].copy()  # exactly n = 0..N draft nodes below the root
    return SequoiaDP(acc, N, D, values, choice)


def sequoia_tree(acc: Acceptance, budget: int, max_depth: int) -> Tree:
    return sequoia_dp(acc, budget, max_depth).tree(budget)
