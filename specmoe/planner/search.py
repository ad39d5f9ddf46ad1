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


def robust_bound(bound: float) -> float:
    """The bound enforced while fitting: half the allowed excess, on the profile and on each
    half of it. Held-out loads drift from the profiled ones (ESFT: 0.01 to 0.04 in max/mean),
    so fitting right at the bound would overshoot it on unseen tokens."""
    return 1.0 + (bound - 1.0) / 2


def load_rows(prof) -> np.ndarray:
    """Per-layer expert loads of the profile and of its two halves, `[H, L, E]`."""
    rows = [expert_load(prof)]
    if len(np.unique(prof.seq_id)) >= 2:
        a, b = prof.split_by_sequence(0.5)
        rows += [expert_load(a), expert_load(b)]
    return np.stack(rows).astype(np.float64)


def fit_groups(prof, ep: int, bound: float, seed: int, init: str = "metis",
               refine: bool = True) -> np.ndarray:
    """Expert -> rank per layer, `[L, E]`, by METIS (or greedy) + alignment + KL swaps."""
    E, L = prof.num_experts, prof.num_layers
    cap = grouping.capacities(E, ep)
    w = load_rows(prof)  # [H, L, E]
    inner = robust_bound(bound)
    X = [grouping.incidence(prof.topk_ids[:, l], E) for l in range(L)]
    e2r = np.zeros((L, E), np.int64)
    for l in range(L):
        W = np.asarray((X[l].T @ X[l]).todense(), np.float64)
        np.fill_diagonal(W, 0)
        trans = None if l == 0 else np.asarray((X[l - 1].T @ X[l]).todense(), np.float64)
        if init == "greedy":
            prev = None if l == 0 else trans.T @ np.eye(ep)[e2r[l - 1]]  # [E, ep]
            part = grouping.greedy_layer(W, prev, w[0, l], cap, inner)
        else:
            part = grouping.repair_sizes(grouping.metis_parts(W, ep, seed + l), W, cap)
            if l:
                part = grouping.align(e2r[l - 1], part, trans, cap)
        e2r[l] = grouping.kl_refine(X[l], part, None, w[:, l], ep, inner) if refine else part
    return e2r


def to_phy2log(prof, e2r: np.ndarray, ep: int, num_redundant: int) -> np.ndarray:
    if not num_redundant:
        return placement.from_groups(e2r, ep)
    w = expert_load(prof).astype(np.float64)
    extra = []
    for l in range(prof.num_layers):
        X = grouping.incidence(prof.topk_ids[:, l], prof.num_experts)
        W = np.asarray((X.T @ X).todense(), np.float64)
        np.fill_diagonal(W, 0)
        extra.append(grouping.add_replicas(e2r[l], W, w[l], num_redundant, ep))
    return placement.from_groups(e2r, ep, extra)


def fit_placement(prof, method: str, ep: int, num_redundant: int = 0, bound: float = 1.10,
                  seed: int = 0) -> np.ndarray:
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
    e2r = fit_groups(prof, ep, bound, seed, init=init, refine=method != "greedy")
    return to_phy2log(prof, e2r, ep, num_redundant)


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
