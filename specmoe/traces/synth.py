"""Synthetic routing fitted to a real trace, for users without traces of their own.

The generator is a latent-class ("topic") model. Real tokens fall into groups that use similar
experts across all layers; that shared class is what makes routing skewed within a layer and
predictable across layers. Fitting:

1. k-means (scipy) clusters the tokens' multi-hot routing vectors `[L * E]` into C classes;
   p_l(e | c) is the smoothed expert frequency of class c at layer l.
2. A token keeps its predecessor's class (same sequence) with probability ρ, the rate at which
   consecutive real tokens share a class; otherwise it draws a class from the class weights π.
3. At each layer the k experts are drawn without replacement (Gumbel-top-k) from
   q_l(e | c) ∝ exp(b_l[e]) · p_l(e | c); the bias b_l is calibrated so the synthetic per-layer
   expert loads match the real ones (sampling without replacement flattens loads).
4. C is chosen on a grid so the cross-layer transition entropy matches the real trace's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from specmoe.traces import stats
from specmoe.traces.routing import RoutingTrace


@dataclass
class RoutingModel:
    """class2expert: [C, num_layers, E] probabilities; class_weights: [C]; bias: [num_layers, E];
    stickiness ρ: probability that a token keeps its predecessor's class."""

    class2expert: np.ndarray
    class_weights: np.ndarray
    bias: np.ndarray
    stickiness: float
    top_k: int
    model: str = "synthetic"

    @property
    def num_layers(self) -> int:
        return self.bias.shape[0]

    @property
    def num_experts(self) -> int:
        return self.bias.shape[1]


def _classes(m: RoutingModel, num_sequences: int, seq_len: int, rng) -> np.ndarray:
    """Class of every token, `[num_sequences, seq_len]`: a sticky chain per sequence."""
    C = len(m.class_weights)
    fresh = rng.choice(C, size=(num_sequences, seq_len), p=m.class_weights)
    keep = rng.random((num_sequences, seq_len)) < m.stickiness
    cls = fresh.copy()
    for t in range(1, seq_len):
        cls[:, t] = np.where(keep[:, t], cls[:, t - 1], fresh[:, t])
    return cls


def generate(m: RoutingModel, num_sequences: int, seq_len: int, seed: int = 0,
             phase: str = "decode") -> RoutingTrace:
    """A trace of `num_sequences` sequences of `seq_len` tokens, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    L, E, K = m.num_layers, m.num_experts, m.top_k
    cls = _classes(m, num_sequences, seq_len, rng).reshape(-1)  # [N]
    n = len(cls)
    ids = np.empty((n, L, K), np.int32)
    weights = np.empty((n, L, K), np.float32)
    log_p = np.log(m.class2expert)  # [C, L, E]
    rows = np.arange(n)[:, None]
    for layer in range(L):
        logq = log_p[cls, layer] + m.bias[layer]  # [N, E]
        chosen = np.argpartition(-(logq + rng.gumbel(size=logq.shape)), K - 1, axis=1)[:, :K]
        q = np.exp(logq - logq.max(1, keepdims=True))
        ids[:, layer] = chosen
        weights[:, layer] = q[rows, chosen] / q.sum(1, keepdims=True)
    meta = dict(model=m.model, num_experts=E, top_k=K, phase=phase,
                source=f"specmoe.synth(classes={len(m.class_weights)}, seed={seed})")
    return RoutingTrace(ids, weights,
                        np.repeat(np.arange(num_sequences), seq_len).astype(np.int64),
                        np.tile(np.arange(seq_len), num_sequences).astype(np.int64), meta)


def _multi_hot(trace: RoutingTrace) -> np.ndarray:
    """`[num_tokens, L * E]` float32, 1 where the token used the expert at the layer."""
    L, E = trace.num_layers, trace.num_experts
    x = np.zeros((trace.num_tokens, L * E), np.float32)
    ids = trace.topk_ids
    t, l, k = np.nonzero(ids >= 0)
    x[t, l * E + ids[t, l, k]] = 1.0
    return x


def _fit_classes(trace: RoutingTrace, x: np.ndarray, C: int, seed: int, smoothing=0.1):
    with warnings.catch_warnings():  # an empty cluster is simply dropped below
        warnings.simplefilter("ignore", UserWarning)
        _, label = kmeans2(x, C, minit="points", seed=seed, iter=8)
    C_used = np.unique(label)
    label = np.searchsorted(C_used, label)
    counts = np.zeros((len(C_used), trace.num_layers * trace.num_experts))
    np.add.at(counts, label, x)
    p = counts.reshape(len(C_used), trace.num_layers, trace.num_experts) + smoothing
    p /= p.sum(-1, keepdims=True)
    weights = np.bincount(label).astype(np.float64)
    return p, weights / weights.sum(), label


def _stickiness(trace: RoutingTrace, label: np.ndarray) -> float:
    """Share of consecutive same-sequence token pairs whose classes agree, corrected for chance:
    P(same) = ρ + (1 - ρ) Σ π_c²."""
    order = np.lexsort((trace.position, trace.seq_id))
    seq, pos, lab = trace.seq_id[order], trace.position[order], label[order]
    pair = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
    if not pair.any():
        return 0.0
    same = float((lab[1:][pair] == lab[:-1][pair]).mean())
    pi = np.bincount(label) / len(label)
    chance = float((pi**2).sum())
    return float(np.clip((same - chance) / max(1e-9, 1 - chance), 0.0, 0.99))


def _calibrate_bias(m: RoutingModel, target_load: np.ndarray, shape, seed, iters: int) -> None:
    """Multiplicative load matching: b += log(target / generated)."""
    target = (target_load + 0.5) / (target_load + 0.5).sum(1, keepdims=True)
    for i in range(iters):
        got = stats.expert_load(generate(m, *shape, seed=seed + i)).astype(np.float64)
        got = (got + 0.5) / (got + 0.5).sum(1, keepdims=True)
        m.bias += np.log(target) - np.log(got)
        m.bias -= m.bias.mean(1, keepdims=True)


def fit(trace: RoutingTrace, seed: int = 0, iters: int = 4, max_tokens: int = 8192) -> RoutingModel:
    """Fit a RoutingModel to `trace` (k-means on at most `max_tokens` tokens)."""
    if trace.num_tokens > max_tokens:
        keep = np.zeros(trace.num_tokens, bool)
        keep[np.random.default_rng(seed).choice(trace.num_tokens, max_tokens, replace=False)] = True
        trace = trace.select(keep)
    x = _multi_hot(trace)
    load = stats.expert_load(trace).astype(np.float64)
    lens = np.bincount(np.unique(trace.seq_id, return_inverse=True)[1])
    seq_len = int(np.clip(np.median(lens), 8, 128))
    shape = (max(1, trace.num_tokens // seq_len), seq_len)  # as many tokens as the real trace
    entropy = lambda t: float(stats.conditional_entropy(stats.transitions(t)).mean())
    target = entropy(trace) if trace.num_layers > 1 else None
    best = None
    for C in (8, 16, 32, 64, 128):
        if C > trace.num_tokens // 4:
            break
        p, w, label = _fit_classes(trace, x, C, seed)
        m = RoutingModel(p, w, np.zeros_like(load), _stickiness(trace, label), trace.top_k,
                         str(trace.meta.get("model", "synthetic")))
        _calibrate_bias(m, load, shape, seed, iters)
        err = 0.0 if target is None else abs(entropy(generate(m, *shape, seed=seed + 7)) - target)
        if best is None or err < best[0]:
            best = (err, m)
        if target is None:
            break
    return best[1]
