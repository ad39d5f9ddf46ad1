"""Routing statistics: load, imbalance, co-activation, cross-layer transitions, locality.

All functions are pure: a RoutingTrace (or arrays) in, numpy arrays out.
"""
from __future__ import annotations

import numpy as np

from specmoe.traces.routing import RoutingTrace


def expert_load(trace: RoutingTrace) -> np.ndarray:
    """Tokens routed to each expert, `[num_layers, num_experts]` int64."""
    E = trace.num_experts
    ids = trace.topk_ids.transpose(1, 0, 2).reshape(trace.num_layers, -1)  # [L, T*K]
    out = np.zeros((trace.num_layers, E), np.int64)
    for layer, row in enumerate(ids):
        out[layer] = np.bincount(row[row >= 0], minlength=E)
    return out


def imbalance(load: np.ndarray) -> np.ndarray:
    """max/mean load per row of `load [..., num_bins]`; 1.0 is perfect balance."""
    load = np.asarray(load, np.float64)
    mean = load.mean(-1)
    return np.divide(load.max(-1), mean, out=np.ones_like(mean), where=mean > 0)


def _pair_counts(a: np.ndarray, b: np.ndarray, E: int) -> np.ndarray:
    """Counts of (a_i, b_j) over tokens, `a [T, Ka]`, `b [T, Kb]` -> `[E, E]`."""
    pa = np.broadcast_to(a[:, :, None], (a.shape[0], a.shape[1], b.shape[1]))
    pb = np.broadcast_to(b[:, None, :], pa.shape)
    ok = (pa >= 0) & (pb >= 0)
    return np.bincount((pa[ok] * E + pb[ok]).astype(np.int64), minlength=E * E).reshape(E, E)


def coactivation(trace: RoutingTrace, layer: int) -> np.ndarray:
    """How often two experts serve the same token in `layer`, `[E, E]`, zero diagonal."""
    ids = trace.topk_ids[:, layer]
    c = _pair_counts(ids, ids, trace.num_experts)
    np.fill_diagonal(c, 0)
    return c


def transitions(trace: RoutingTrace) -> np.ndarray:
    """Cross-layer counts `[num_layers - 1, E, E]`: entry [l, a, b] counts tokens that used
    expert a at layer l and expert b at layer l + 1."""
    E = trace.num_experts
    return np.stack([_pair_counts(trace.topk_ids[:, l], trace.topk_ids[:, l + 1], E)
                     for l in range(trace.num_layers - 1)]) if trace.num_layers > 1 \
        else np.zeros((0, E, E), np.int64)


def conditional_entropy(counts: np.ndarray) -> np.ndarray:
    """H(next | current) in bits for each `counts [..., E, E]` (rows: current expert)."""
    counts = np.asarray(counts, np.float64)
    rows = counts.sum(-1, keepdims=True)
    p = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    h_rows = -np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0.0), -1)  # [..., E]
    total = rows[..., 0].sum(-1, keepdims=True)
    weight = np.divide(rows[..., 0], total, out=np.zeros_like(rows[..., 0]), where=total > 0)
    return np.sum(weight * h_rows, -1)


def consecutive_overlap(trace: RoutingTrace) -> np.ndarray:
    """Per layer, the mean fraction of a token's experts that the previous token of the same
    sequence also used, `[num_layers]`. Uniform routing gives about top_k / num_experts."""
    order = np.lexsort((trace.position, trace.seq_id))
    ids = trace.topk_ids[order]
    seq, pos = trace.seq_id[order], trace.position[order]
    pair = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
    if not pair.any():
        return np.full(trace.num_layers, np.nan)
    cur, prev = ids[1:][pair], ids[:-1][pair]  # [P, L, K]
    shared = ((cur[..., :, None] == prev[..., None, :]) & (cur[..., :, None] >= 0)).any(-1).sum(-1)
    valid = np.maximum((cur >= 0).sum(-1), 1)
    return (shared / valid).mean(0)


def summarize(trace: RoutingTrace) -> dict:
    """Everything `specmoe trace stats` prints, as plain Python values."""
    load = expert_load(trace)
    imb = imbalance(load)
    ent = conditional_entropy(transitions(trace))
    overlap = consecutive_overlap(trace)
    first = int(trace.meta.get("first_moe_layer", 0))
    layers = []
    for l in range(trace.num_layers):
        layers.append(dict(
            layer=first + l,
            imbalance=round(float(imb[l]), 4),
            transition_entropy=None if l >= len(ent) else round(float(ent[l]), 4),
            consecutive_overlap=None if np.isnan(overlap[l]) else round(float(overlap[l]), 4),
            hottest_expert=int(load[l].argmax()),
        ))
    E, K = trace.num_experts, trace.top_k
    return dict(
        model=trace.meta.get("model"), source=trace.meta.get("source"),
        phase=trace.meta.get("phase"), num_tokens=int(trace.num_tokens),
        num_sequences=int(len(np.unique(trace.seq_id))), num_moe_layers=int(trace.num_layers),
        num_experts=E, top_k=K,
        mean_imbalance=round(float(imb.mean()), 4),
        mean_transition_entropy=None if not len(ent) else round(float(ent.mean()), 4),
        uniform_transition_entropy=round(float(np.log2(E)), 4),
        mean_consecutive_overlap=None if np.isnan(overlap).all() else round(float(np.nanmean(overlap)), 4),
        uniform_consecutive_overlap=round(K / E, 4),
        layers=layers,
    )


def summarize_counts(counts: np.ndarray, meta: dict) -> dict:
    """Statistics available from per-layer counts alone (SGLang `stat` dumps)."""
    imb = imbalance(counts)
    first = int(meta.get("first_moe_layer", 0))
    return dict(model=meta.get("model"), source=meta.get("source"),
                num_moe_layers=int(counts.shape[0]), num_experts=int(counts.shape[1]),
                mean_imbalance=round(float(imb.mean()), 4),
                layers=[dict(layer=first + l, imbalance=round(float(v), 4),
                             transition_entropy=None, hottest_expert=int(counts[l].argmax()))
                        for l, v in enumerate(imb)])
