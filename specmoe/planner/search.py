"""Fit a placement (and a token schedule) on the profiling split; score it on the rest.

`fit_placement` is the pure search; `evaluate` scores any phy2log + schedule on held-out
tokens with the vectorised metrics of `metrics.py`; the simulator prices only the final
candidates (`pricing.py`).
"""
from __future__ import annotations

import numpy as np

from specmoe.planner import eplb, grouping, placement, shuffle
from specmoe.planner.metrics import evaluate_arrays
from specmoe.traces.stats import expert_load

METHODS = ("contiguous", "round-robin", "eplb", "greedy", "grouping", "speculative")


NUM_BOOTSTRAP = 8


def load_rows(prof, seed: int = 0, num_boot: int = NUM_BOOTSTRAP) -> np.ndarray:
    """Per-layer expert loads of the profile and of `num_boot` bootstrap resamples of its
    sequences, `[1 + num_boot, L, E]`.

    The load bound is enforced on every row: a plan that stays balanced on resampled
    sequence mixes stays balanced on unseen sequences drawn like the profiled ones, and the
    margin this buys is set by the data (small for many similar sequences, large for a few
    different ones) rather than by a constant."""
    seqs, inv = np.unique(prof.seq_id, return_inverse=True)
    S, L, E = len(seqs), prof.num_layers, prof.num_experts
    ids = prof.topk_ids
    ok = ids >= 0
    key = (inv[:, None, None] * L + np.arange(L)[None, :, None]) * E + np.where(ok, ids, 0)
    per_seq = np.bincount(key[ok], minlength=S * L * E).reshape(S, L, E).astype(np.float64)
    rng = np.random.default_rng(seed)
    rows = [per_seq.sum(0)] + [per_seq[rng.integers(0, S, S)].sum(0) for _ in range(num_boot)]
    return np.stack(rows)


def fit_groups(prof, ep: int, bound: float, seed: int, init: str = "metis",
               refine: bool = True, restarts: int = 3) -> np.ndarray:
    """Expert -> rank per layer, `[L, E]`: METIS (best of `restarts` seeds, each refined by
    KL swaps, judged on the profile) or greedy packing; then labels aligned across layers.

    The within-layer objective (distinct ranks per token) does not depend on rank labels, so
    each layer is partitioned on its own and only then labelled to chain with layer l-1."""
    E, L = prof.num_experts, prof.num_layers
    cap = grouping.capacities(E, ep)
    w = load_rows(prof, seed)  # [H, L, E]
    inner = bound
    X = [grouping.incidence(prof.topk_ids[:, l], E) for l in range(L)]
    e2r = np.zeros((L, E), np.int64)
    for l in range(L):
        W = np.asarray((X[l].T @ X[l]).todense(), np.float64)
        np.fill_diagonal(W, 0)
        trans = None if l == 0 else np.asarray((X[l - 1].T @ X[l]).todense(), np.float64)
        if init == "greedy":
            prev = None if l == 0 else trans.T @ np.eye(ep)[e2r[l - 1]]  # [E, ep]
            part = grouping.greedy_layer(W, prev, w[0, l], cap, inner)
            # greedy + balance repair only (no traffic swaps), to compare at equal balance
            e2r[l] = grouping.kl_refine(X[l], part, None, w[:, l], ep, inner, improve=refine)
            continue
        best, best_cost = None, np.inf
        for r in range(restarts if ep < E else 1):  # one expert per rank: nothing to search
            part = grouping.repair_sizes(grouping.metis_parts(W, ep, seed + 1000 * r + l), W, cap)
            if refine:
                part = grouping.kl_refine(X[l], part, None, w[:, l], ep, inner)
            cost = grouping.remote_copies(X[l], part, None, ep) + \
                1e9 * _excess(part, w[:, l], ep, inner)  # feasible partitions first
            if cost < best_cost:
                best, best_cost = part, cost
        e2r[l] = best if l == 0 else grouping.align(e2r[l - 1], best, trans, cap)
    return e2r


def _excess(e2r: np.ndarray, w: np.ndarray, ep: int, bound: float) -> float:
    """How far the worst row of loads `w [H, E]` exceeds the bound (0 when within)."""
    load = np.stack([np.bincount(e2r, weights=row, minlength=ep) for row in w])
    return float(max(0.0, (load.max(1) / load.mean(1) - bound).max()))


def to_phy2log(prof, e2r: np.ndarray, ep: int, num_redundant: int,
               bound: float = np.inf) -> np.ndarray:
    if not num_redundant:
        return placement.from_groups(e2r, ep)
    w = expert_load(prof).astype(np.float64)
    extra = []
    for l in range(prof.num_layers):
        X = grouping.incidence(prof.topk_ids[:, l], prof.num_experts)
        W = np.asarray((X.T @ X).todense(), np.float64)
        np.fill_diagonal(W, 0)
        extra.append(grouping.add_replicas(e2r[l], W, w[l], num_redundant, ep, bound))
    return placement.from_groups(e2r, ep, extra)


def fit_placement(prof, method: str, ep: int, num_redundant: int = 0, bound: float = 1.10,
                  seed: int = 0, restarts: int = 3) -> np.ndarray:
    """phy2log `[L, E + num_redundant]` fitted on the profiling trace `prof`."""
    E, L = prof.num_experts, prof.num_layers
    placement.check_sizes(E, num_redundant, ep)
    if method == "contiguous":
        return placement.contiguous(L, E, ep, num_redundant)
    if method == "round-robin":
        return placement.round_robin(L, E, ep, num_redundant)
    if method == "eplb":
        return eplb.rebalance(expert_load(prof), E + num_redundant, ep)
    init = "greedy" if method == "greedy" else "metis"
    e2r = fit_groups(prof, ep, bound, seed, init=init, refine=method != "greedy",
                     restarts=restarts)
    phy2log = to_phy2log(prof, e2r, ep, num_redundant, bound)
    problem = placement.check_phy2log(phy2log, E, ep)
    if problem:  # a bug, never bad input: the search must produce a valid placement
        raise AssertionError(problem)
    return phy2log


def schedule(trace, phy2log: np.ndarray, ep: int, policy: str,
             predictor: shuffle.Predictor | None) -> np.ndarray:
    """token2gpu for `trace`: `[T]` round robin (policy none), `[T, L]` (tp-token) or `[T]`
    (dp-request)."""
    if policy == "tp-token":
        return shuffle.tp_schedule(trace, predictor, phy2log, ep)
    if policy == "dp-request":
        return shuffle.dp_schedule(trace, phy2log, ep)
    return np.arange(trace.num_tokens) % ep


def evaluate(held, phy2log: np.ndarray, ep: int, token2gpu: np.ndarray, hidden: int,
             dtype_bytes: int) -> dict:
    """Held-out figures; cross-GPU bytes count dispatch + combine of every remote copy."""
    m = evaluate_arrays(held.topk_ids, phy2log, ep, held.num_experts, token2gpu)
    per_token = m["remote_copies_per_token_layer"] * held.num_layers * hidden * dtype_bytes * 2
    return dict(remote_copies_per_token_layer=round(m["remote_copies_per_token_layer"], 6),
                local_activation_rate=round(m["local_activation_rate"], 6),
                load_imbalance=round(m["load_imbalance"], 6),
                max_layer_imbalance=round(m["max_layer_imbalance"], 6),
                cross_gpu_bytes_per_token=round(per_token, 1))
