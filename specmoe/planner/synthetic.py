"""Planted-cluster routing traces: a known optimum for tests, a scale model for benchmarks.

Experts of each layer fall into `num_clusters` clusters (a random permutation per layer, so
contiguous ids are not already grouped). Each sequence starts in a cluster; at each layer a
token stays in its cluster with probability `stay` (else jumps to a random one), and picks its
top_k experts inside the cluster (each pick is uniform over all experts with probability
`noise`). Within a cluster, expert popularity follows a Zipf law of exponent `skew`; clusters
are chosen with Zipf weights of exponent `cluster_skew` (0: uniform).
With noise = 0 and stay = 1, grouping the clusters on ranks (one cluster per rank) makes every
token local to one rank at every layer: zero remote copies for the right token schedule.
"""
from __future__ import annotations

import numpy as np

from specmoe.traces.routing import RoutingTrace


def planted_trace(num_sequences: int, seq_len: int, num_layers: int, num_experts: int,
                  top_k: int, num_clusters: int, stay: float = 0.9, noise: float = 0.05,
                  skew: float = 0.8, cluster_skew: float = 0.0, seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    E, C = num_experts, num_clusters
    size = E // C
    members = np.stack([rng.permutation(E)[: C * size].reshape(C, size) for _ in range(num_layers)])
    zipf = 1.0 / np.arange(1, size + 1) ** skew
    zipf /= zipf.sum()
    T = num_sequences * seq_len
    seq_id = np.repeat(np.arange(num_sequences), seq_len)
    pop = 1.0 / np.arange(1, C + 1) ** cluster_skew  # cluster popularity (Zipf)
    pop /= pop.sum()
    cluster = rng.choice(C, num_sequences, p=pop)[seq_id]  # [T]
    ids = np.empty((T, num_layers, top_k), np.int32)
    for l in range(num_layers):
        if l:
            jump = rng.random(T) > stay
            cluster = np.where(jump, rng.choice(C, T, p=pop), cluster)
        # top_k distinct experts per token by Gumbel-top-k over the cluster's Zipf weights
        g = np.log(zipf)[None, :] + rng.gumbel(size=(T, size))
        pick = np.argsort(-g, axis=1)[:, :top_k]  # [T, K] positions in the cluster
        chosen = members[l][cluster[:, None], pick]
        rand = rng.integers(0, E, (T, top_k))
        chosen = np.where(rng.random((T, top_k)) < noise, rand, chosen)
        for k in range(1, top_k):  # keep ids distinct: a clash falls back to a free expert
            clash = (chosen[:, k:k + 1] == chosen[:, :k]).any(1)
            while clash.any():
                chosen[clash, k] = rng.integers(0, E, clash.sum())
                clash = (chosen[:, k:k + 1] == chosen[:, :k]).any(1)
        ids[:, l] = chosen
    w = np.full(ids.shape, 1.0 / top_k, np.float32)
    meta = dict(model="synthetic", num_experts=E, top_k=top_k, phase="decode",
                source=f"planted:C={C},stay={stay},noise={noise},skew={skew},seed={seed}")
    return RoutingTrace(ids, w, seq_id.astype(np.int64),
                        np.tile(np.arange(seq_len), num_sequences).astype(np.int64), meta)
