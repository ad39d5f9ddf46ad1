"""What-if capacity planning: the highest request rate each candidate deployment sustains
within the SLOs, goodput per GPU and per dollar, and the Pareto front of cost against capacity.

Pure search logic; the serving simulator is passed in as `meets_slo(candidate, rate) -> dict`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from specmoe.specs._fields import check


@dataclass(frozen=True)
class WhatIfConfig:
    """What to compare. Every list is a dimension of the candidate grid.

    `ep: []` means one EP group spanning the whole cluster; otherwise each EP degree must divide
    the cluster's GPU count, and the cluster runs `num_gpus // ep` replicas that split traffic.
    `tree_budgets`: draft tokens per verify step; 0 = speculative decoding off.
    """

    models: tuple[str, ...] = ("mixtral-8x7b", "deepseek-v2-lite")
    clusters: tuple[str, ...] = ("h200x2-nvlink", "dgx-h100", "8x-l40s-pcie")
    ep: tuple[int, ...] = ()
    attention: tuple[str, ...] = ("dp",)
    placements: tuple[str, ...] = ("contiguous", "speculative")
    tree_budgets: tuple[int, ...] = (0, 16)
    workload: str = "azure-conv"
    rate_min_rps: float = 0.125
    rate_max_rps: float = 512.0
    rate_rel_tol: float = 0.08
    slo_ttft_ms: float = 0.0  # 0 = the workload's
    slo_tpot_ms: float = 0.0
    slo_percentile: float = 0.0
    acceptance: tuple[float, ...] = ()  # Sequoia p_k; empty = the planner's default
    seed: int = 0

    def __post_init__(self):
        check(len(self.models) > 0, "models", "at least one model")
        check(len(self.clusters) > 0, "clusters", "at least one cluster")
        check(all(e > 0 for e in self.ep), "ep", "EP degrees must be positive")
        check(all(a in ("dp", "tp") for a in self.attention), "attention", "expected dp or tp")
        check(all(p in ("contiguous", "eplb", "grouping", "speculative") for p in self.placements),
              "placements", "expected contiguous, eplb, grouping or speculative")
        check(all(b >= 0 for b in self.tree_budgets), "tree_budgets", "must be >= 0")
        check(0 < self.rate_min_rps < self.rate_max_rps, "rate_min_rps",
              "need 0 < rate_min_rps < rate_max_rps")
        check(0 < self.rate_rel_tol < 1, "rate_rel_tol", "must be in (0, 1)")
        check(self.slo_ttft_ms >= 0 and self.slo_tpot_ms >= 0, "slo_ttft_ms", "must be >= 0")
        check(0 <= self.slo_percentile <= 100, "slo_percentile", "must be in [0, 100]")


@dataclass(frozen=True)
class Candidate:
    model: str
    cluster: str
    num_gpus: int
    ep: int
    attention: str
    placement: str
    tree_budget: int
    replicas: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "replicas", self.num_gpus // self.ep)

    @property
    def label(self) -> str:
        spec = f"tree{self.tree_budget}" if self.tree_budget else "no-spec"
        return (f"{self.model} @ {self.cluster} EP{self.ep}x{self.replicas} "
                f"{self.attention.upper()}-attn {self.placement} {spec}")


def candidates(cfg: WhatIfConfig, cluster2gpus: dict[str, int]) -> list[Candidate]:
    """The grid, in a fixed order; EP degrees that don't divide a cluster are skipped."""
    out = []
    for model, cluster, attn, place, budget in itertools.product(
            cfg.models, cfg.clusters, cfg.attention, cfg.placements, cfg.tree_budgets):
        n = cluster2gpus[cluster]
        for ep in (cfg.ep or (n,)):
            if n % ep == 0:
                out.append(Candidate(model, cluster, n, ep, attn, place, budget))
    return out


def max_rate(meets, lo: float, hi: float, rel_tol: float) -> tuple[float, list[tuple[float, bool]]]:
    """Highest rate in [lo, hi] with meets(rate) true, by bisection in log space.

    Assumes SLO attainment falls with rate (queueing only grows). Returns (rate, probes);
    rate 0.0 when even `lo` fails, `hi` when `hi` passes.
    """
    probes = []

    def probe(r):
        ok = bool(meets(r))
        probes.append((r, ok))
        return ok

    if not probe(lo):
        return 0.0, probes
    if probe(hi):
        return hi, probes
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    return lo, probes


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, capacity) points no other point beats: cheaper-or-equal with
    more-or-equal capacity, strictly better in one. Capacity 0 is never on the front."""
    flags = []
    for i, (c, q) in enumerate(points):
        dominated = any((c2 <= c and q2 >= q) and (c2 < c or q2 > q)
                        for j, (c2, q2) in enumerate(points) if j != i)
        flags.append(q > 0 and not dominated)
    return flags
