"""Collectives as traffic matrices, and the analytic (alpha-beta) network tier.

Every collective is reduced to a traffic matrix `[src_gpu, dst_gpu]` of bytes plus a number of
sequential latency steps; both network tiers (this one and `flow.py`) price those matrices, so
they agree wherever their models coincide.

Analytic tier (hierarchical alpha-beta): a collective costs
    t = alpha + steps * max_path_latency + max_tier max_link(load_link / bandwidth_link)
where alpha is the cluster's `collective_latency_us` (NCCL's small-message floor), the tiers
are the link classes (nvlink, pcie, network) and a link's load is the sum of the bytes of the
pairs whose path crosses it. The tiers run concurrently, as in DeepEP's and NCCL's pipelined
hierarchical all-to-all, so the slowest tier sets the time. On a uniform all-to-all inside one
switch this is the exact max-min fair completion time of the flow tier.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specmoe.simulator.topology import LINK_CLASSES, Topology


@dataclass
class Transfer:
    """One collective, as traffic.

    traffic: float64 [num_gpus, num_gpus] bytes from src (row) to dst (column); diagonal ignored
    steps:   sequential hops that each pay the path latency (ring collectives: p - 1 per pass)
    kind:    all_to_all | all_gather | reduce_scatter | all_reduce | p2p (for calibration curves)
    """

    traffic: np.ndarray
    steps: int = 1
    kind: str = "all_to_all"


@dataclass
class CollectiveCost:
    time_s: float
    bytes_by_link_class: dict[str, float] = field(default_factory=dict)
    tier_s: dict[str, float] = field(default_factory=dict)  # bottleneck time of each link class
    calibrated: bool = False


def ring_order(group) -> np.ndarray:
    """Ranks sorted so that a ring crosses each node boundary once."""
    return np.sort(np.asarray(group, np.int64))


def all_to_all(traffic: np.ndarray) -> Transfer:
    return Transfer(np.asarray(traffic, np.float64), 1, "all_to_all")


def p2p(num_gpus: int, src: int, dst: int, nbytes: float) -> Transfer:
    m = np.zeros((num_gpus, num_gpus))
    m[src, dst] = nbytes
    return Transfer(m, 1, "p2p")


def _ring(num_gpus: int, group, nbytes_per_link: float, passes: int, kind: str) -> Transfer:
    ranks = ring_order(group)
    p = len(ranks)
    m = np.zeros((num_gpus, num_gpus))
    if p > 1:
        m[ranks, np.roll(ranks, -1)] = nbytes_per_link
    return Transfer(m, passes * max(p - 1, 0), kind)


def all_gather(num_gpus: int, group, bytes_per_rank: float) -> Transfer:
    """Ring all-gather: each rank forwards the other p - 1 chunks of `bytes_per_rank`."""
    p = len(group)
    return _ring(num_gpus, group, (p - 1) * bytes_per_rank, 1, "all_gather")


def reduce_scatter(num_gpus: int, group, bytes_per_rank: float) -> Transfer:
    """Ring reduce-scatter of a `bytes_per_rank` input: each rank sends (p - 1) / p of it."""
    p = len(group)
    return _ring(num_gpus, group, (p - 1) / p * bytes_per_rank, 1, "reduce_scatter")


def all_reduce(num_gpus: int, group, bytes_per_rank: float) -> Transfer:
    """Ring all-reduce = reduce-scatter + all-gather: 2 (p - 1) / p of the buffer per rank."""
    p = len(group)
    return _ring(num_gpus, group, 2 * (p - 1) / p * bytes_per_rank, 2, "all_reduce")


def _split(topo: Topology, traffic: np.ndarray):
    """Intra-node pair bytes `[B, n_intra]` and cross-node bytes sent and received per GPU
    `[B, G]` each, from `traffic [B, G, G]` (the diagonal is ignored)."""
    B, G = traffic.shape[0], topo.num_gpus
    flat = traffic.reshape(B, G * G)
    intra = flat[:, topo.intra_pairs]  # [B, n_intra]
    diag = np.diagonal(traffic, axis1=1, axis2=2)
    src, dst = np.divmod(topo.intra_pairs, G)
    intra_out = np.zeros((B, G))
    intra_in = np.zeros((B, G))
    for b in range(B):  # tiny: n_intra = G * (gpus_per_node - 1)
        intra_out[b] = np.bincount(src, intra[b], minlength=G)
        intra_in[b] = np.bincount(dst, intra[b], minlength=G)
    cross_out = traffic.sum(axis=2) - diag - intra_out
    cross_in = traffic.sum(axis=1) - diag - intra_in
    return intra, np.maximum(cross_out, 0.0), np.maximum(cross_in, 0.0)


def link_loads(topo: Topology, traffic: np.ndarray) -> np.ndarray:
    """Bytes on each edge, `traffic [..., G, G]` -> `[..., num_edges]` (diagonal ignored).

    Uses the structured paths: intra-node pairs by their own path, cross-node bytes by the
    sender's up path and the receiver's down path; equal to `pair_links.T @ traffic`."""
    G = topo.num_gpus
    t = np.asarray(traffic, np.float64).reshape(-1, G, G)
    intra, cross_out, cross_in = _split(topo, t)
    loads = (topo.intra_links.T @ intra.T).T + (topo.up_matrix.T @ cross_out.T).T \
        + (topo.down_matrix.T @ cross_in.T).T
    return loads.reshape(*np.shape(traffic)[:-2], -1)


def bytes_by_class(topo: Topology, traffic: np.ndarray) -> np.ndarray:
    """Bytes per link class, each pair counted once under its path's highest class,
    `traffic [..., G, G]` -> `[..., 3]` (order of LINK_CLASSES)."""
    G = topo.num_gpus
    t = np.asarray(traffic, np.float64).reshape(-1, G, G)
    intra, cross_out, _ = _split(topo, t)
    cls = topo.pair_class.reshape(-1)[topo.intra_pairs]
    out = np.stack([intra[:, cls == c].sum(axis=1) for c in range(len(LINK_CLASSES))], axis=1)
    out[:, LINK_CLASSES.index("network")] += cross_out.sum(axis=1)
    return out.reshape(*np.shape(traffic)[:-2], len(LINK_CLASSES))


def analytic_times(topo: Topology, traffic: np.ndarray, steps: int = 1,
                   calibration=None, kind: str = "all_to_all") -> np.ndarray:
    """Alpha-beta time in seconds of a batch of collectives, `traffic [B, G, G]` -> `[B]`."""
    traffic = np.asarray(traffic, np.float64)
    intra, cross_out, cross_in = _split(topo, traffic)
    loads = (topo.intra_links.T @ intra.T).T + (topo.up_matrix.T @ cross_out.T).T \
        + (topo.down_matrix.T @ cross_in.T).T  # [B, E]
    beta = (loads / topo.edge_bw).max(axis=1, initial=0.0)
    lat_intra = topo.pair_latency.reshape(-1)[topo.intra_pairs]
    path_lat = np.where(intra > 0, lat_intra, 0.0).max(axis=1, initial=0.0)
    if topo.up_links.shape[1]:  # cross-node: slowest active sender's up plus receiver's down
        up_lat = topo.edge_latency[topo.up_links].sum(axis=1)
        down_lat = topo.edge_latency[topo.down_links].sum(axis=1)
        cross = np.where(cross_out > 0, up_lat, 0.0).max(axis=1) + np.where(cross_in > 0, down_lat, 0.0).max(axis=1)
        path_lat = np.maximum(path_lat, cross)
    active = (intra > 0).any(axis=1) | (cross_out > 0).any(axis=1)
    alpha = topo.cluster.collective_latency_us * 1e-6
    t = np.where(active, alpha + steps * path_lat + beta, 0.0)
    if calibration is not None:
        t = calibration.collective_override(kind, topo, traffic, t)
    return t


def analytic_cost(topo: Topology, transfer: Transfer, calibration=None) -> CollectiveCost:
    """Cost of one collective with the per-tier breakdown."""
    t = float(analytic_times(topo, transfer.traffic[None], transfer.steps, calibration,
                             transfer.kind)[0])
    m = transfer.traffic.copy()
    np.fill_diagonal(m, 0.0)
    per_edge = link_loads(topo, m) / topo.edge_bw
    tiers = {c: float(per_edge[topo.edge_class == i].max(initial=0.0))
             for i, c in enumerate(LINK_CLASSES)}
    by_cls = dict(zip(LINK_CLASSES, bytes_by_class(topo, m).tolist()))
    return CollectiveCost(t, by_cls, tiers)
