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


@dataclass
class Split:
    """A batch of traffic matrices reduced to what the structured paths need.

    intra:     [B, n_intra] bytes of each intra-node pair (topo.intra_pairs)
    cross_out: [B, G] bytes each GPU sends to other nodes
    cross_in:  [B, G] bytes each GPU receives from other nodes
    """

    intra: np.ndarray
    cross_out: np.ndarray
    cross_in: np.ndarray

    def sent(self, topo: Topology) -> np.ndarray:
        """Bytes each GPU sends and receives, the larger of the two, `[B, G]`."""
        G = topo.num_gpus
        src, dst = np.divmod(topo.intra_pairs, G)
        out = self.cross_out + np.stack([np.bincount(src, x, minlength=G) for x in self.intra])
        inn = self.cross_in + np.stack([np.bincount(dst, x, minlength=G) for x in self.intra])
        return np.maximum(out, inn)


def split(topo: Topology, traffic: np.ndarray) -> Split:
    """`traffic [B, G, G]` bytes (diagonal ignored) -> Split."""
    traffic = np.asarray(traffic, np.float64)
    return split_counts(topo, traffic.transpose(1, 0, 2), 1.0)


def split_counts(topo: Topology, counts: np.ndarray, nbytes: float,
                 sent: np.ndarray | None = None, received: np.ndarray | None = None) -> Split:
    """`counts [ep, B, ep]` (source rank, batch, destination rank; the EP group is GPUs
    0..ep-1) times `nbytes` per count -> Split, in two passes over the counts (none when their
    sums `sent [ep, B]` and `received [B, ep]` are given)."""
    ep, B, _ = counts.shape
    G = topo.num_gpus
    src, dst = np.divmod(topo.intra_pairs, G)
    inside = (src < ep) & (dst < ep)
    intra = np.zeros((B, len(src)))
    intra[:, inside] = counts[src[inside], :, dst[inside]].T * nbytes  # [B, n_intra]
    diag = counts[np.arange(ep), :, np.arange(ep)].T  # [B, ep]
    out_all = np.zeros((B, G))
    in_all = np.zeros((B, G))
    sent = counts.sum(axis=2) if sent is None else sent
    received = counts.sum(axis=0) if received is None else received
    out_all[:, :ep] = (sent.T - diag) * nbytes
    in_all[:, :ep] = (received - diag) * nbytes
    intra_out = np.stack([np.bincount(src, x, minlength=G) for x in intra])
    intra_in = np.stack([np.bincount(dst, x, minlength=G) for x in intra])
    return Split(intra, np.maximum(out_all - intra_out, 0.0), np.maximum(in_all - intra_in, 0.0))


def _loads(topo: Topology, sp_: Split) -> np.ndarray:
    return (topo.intra_links.T @ sp_.intra.T).T + (topo.up_matrix.T @ sp_.cross_out.T).T \
        + (topo.down_matrix.T @ sp_.cross_in.T).T  # [B, E]


def link_loads(topo: Topology, traffic: np.ndarray) -> np.ndarray:
    """Bytes on each edge, `traffic [..., G, G]` -> `[..., num_edges]` (diagonal ignored).

    Uses the structured paths: intra-node pairs by their own path, cross-node bytes by the
    sender's up path and the receiver's down path; equal to `pair_links.T @ traffic`."""
    G = topo.num_gpus
    loads = _loads(topo, split(topo, np.reshape(traffic, (-1, G, G))))
    return loads.reshape(*np.shape(traffic)[:-2], -1)


def class_bytes(topo: Topology, sp_: Split) -> np.ndarray:
    """Bytes per link class `[B, 3]` (LINK_CLASSES order), each pair under its path's highest class."""
    cls = topo.pair_class.reshape(-1)[topo.intra_pairs]
    out = np.stack([sp_.intra[:, cls == c].sum(axis=1) for c in range(len(LINK_CLASSES))], axis=1)
    out[:, LINK_CLASSES.index("network")] += sp_.cross_out.sum(axis=1)
    return out


def bytes_by_class(topo: Topology, traffic: np.ndarray) -> np.ndarray:
    """Bytes per link class, `traffic [..., G, G]` -> `[..., 3]` (order of LINK_CLASSES)."""
    G = topo.num_gpus
    out = class_bytes(topo, split(topo, np.reshape(traffic, (-1, G, G))))
    return out.reshape(*np.shape(traffic)[:-2], len(LINK_CLASSES))


def analytic_times(topo: Topology, traffic: "np.ndarray | Split", steps: int = 1,
                   calibration=None, kind: str = "all_to_all") -> np.ndarray:
    """Alpha-beta time in seconds of a batch of collectives, `traffic [B, G, G]` (or its
    Split) -> `[B]`."""
    sp_ = traffic if isinstance(traffic, Split) else split(topo, traffic)
    beta = (_loads(topo, sp_) / topo.edge_bw).max(axis=1, initial=0.0)
    lat_intra = topo.pair_latency.reshape(-1)[topo.intra_pairs]
    path_lat = np.where(sp_.intra > 0, lat_intra, 0.0).max(axis=1, initial=0.0)
    if topo.up_links.shape[1]:  # cross-node: slowest active sender's up plus receiver's down
        up_lat = topo.edge_latency[topo.up_links].sum(axis=1)
        down_lat = topo.edge_latency[topo.down_links].sum(axis=1)
        cross = np.where(sp_.cross_out > 0, up_lat, 0.0).max(axis=1) \
            + np.where(sp_.cross_in > 0, down_lat, 0.0).max(axis=1)
        path_lat = np.maximum(path_lat, cross)
    active = (sp_.intra > 0).any(axis=1) | (sp_.cross_out > 0).any(axis=1)
    alpha = topo.cluster.collective_latency_us * 1e-6
    t = np.where(active, alpha + steps * path_lat + beta, 0.0)
    if calibration is not None:
        t = calibration.collective_override(kind, topo, sp_, t)
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
