"""Joint search over (budget, shape) for the draft tree with the most tokens per second.

objective(tree) = batch * E[accepted](tree) / (verify_time(n) + draft_time(tree))

For `sequoia` the shape for each (budget, depth bound) is Sequoia's DP optimum; the other
methods build their own shape per budget. Budgets come from a grid (or the user's `--budget`,
an upper bound); the tree with the highest objective wins.
"""
from __future__ import annotations

from dataclasses import dataclass

from specmoe.planner.acceptance import Acceptance
from specmoe.planner.sequoia import sequoia_dp
from specmoe.planner.tree_cost import DraftCost, VerifyCost, ceil_div
from specmoe.planner.trees import (Tree, chain_tree, eagle2_tree, expected_accepted,
                                   recycling_template, rsd_beam, rsd_constant, truncate)

GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128)
EAGLE2_TOP_K = 10  # EAGLE-2's default expansion width (arXiv:2406.16858, § 5)


@dataclass
class TreeChoice:
    tree: Tree
    expected_accepted: float
    verify_us: float
    draft_us: float
    ar_step_us: float
    batch: int

    @property
    def step_us(self) -> float:
        return self.verify_us + self.draft_us

    @property
    def tokens_per_s(self) -> float:
        return 1e6 * self.batch * self.expected_accepted / self.step_us

    @property
    def speedup(self) -> float:
        return self.tokens_per_s / (1e6 * self.batch / self.ar_step_us)

    def to_json(self) -> dict:
        return {"method": self.tree.method, "budget": self.tree.budget, "depth": self.tree.max_depth,
                "level_widths": self.tree.level_widths(),
                "expected_accepted_per_step": round(self.expected_accepted, 6),
                "verify_us": round(self.verify_us, 3), "draft_us": round(self.draft_us, 3),
                "step_time_us": round(self.step_us, 3), "tokens_per_s": round(self.tokens_per_s, 3),
                "speedup_vs_autoregressive": round(self.speedup, 6)}


def draft_for(method: str, draft: DraftCost) -> DraftCost:
    """Token Recycling drafts by table lookup: its draft cost is taken as zero."""
    return DraftCost("free") if method == "recycling" else draft


def evaluate(tree: Tree, acc: Acceptance, cost: VerifyCost, draft: DraftCost) -> TreeChoice:
    d = draft_for(tree.method, draft)
    draft_us = d.tree_us(cost.cluster, tree.level_widths(), ceil_div(cost.batch, cost.ep)) if tree.budget else 0.0
    return TreeChoice(tree, expected_accepted(tree, acc), cost.step_us(tree.budget), draft_us,
                      cost.step_us(0), cost.batch)


def candidates(method: str, acc: Acceptance, budgets, max_depth: int) -> list[Tree]:
    """The trees `method` would verify at each budget (deduplicated, in a stable order)."""
    budgets = sorted(set(budgets))
    trees = []
    if method == "sequoia":
        for L in range(1, max_depth + 1):
            dp = sequoia_dp(acc, budgets[-1], L)
            trees += [dp.tree(n) for n in budgets]
    elif method == "chain":
        trees = [chain_tree(min(n, max_depth)) for n in budgets]
    elif method == "recycling":
        t = recycling_template()
        trees = [truncate(t, min(n, t.budget)) for n in budgets]
    elif method == "rsd-c":
        trees = [rsd_constant(acc, n, max_depth) for n in budgets]
    elif method == "rsd-s":
        trees = [rsd_beam(acc, n, max_depth) for n in budgets]
    elif method == "eagle2":
        trees = [eagle2_tree(acc, n, max_depth, EAGLE2_TOP_K) for n in budgets]
    else:
        raise ValueError(method)
    seen, out = set(), []
    for t in trees:
        if t.parents not in seen:
            seen.add(t.parents)
            out.append(t)
    return out


def plan_tree(method: str, acc: Acceptance, cost: VerifyCost, draft: DraftCost,
              budget: int | None = None, max_depth: int = 10, grid=GRID) -> tuple[TreeChoice, list[TreeChoice]]:
    """The best tree of `method` by tokens/s, and every candidate evaluated.

    With `budget`, trees have at most `budget` draft tokens and the budget itself is a candidate;
    without it the budget is searched over `grid`.
    """
    budgets = [n for n in grid if budget is None or n <= budget]
    if budget is not None:
        budgets.append(budget)
    evaluated = [evaluate(t, acc, cost, draft) for t in candidates(method, acc, budgets, max_depth)]
    best = max(evaluated, key=lambda c: (round(c.tokens_per_s, 9), -c.tree.budget))
    return best, evaluated
