"""Flow tier: every (src, dst) transfer is a flow along its graph path; flows share links
max-min fairly, and rates are recomputed whenever a flow starts or ends. simpy drives it.

Max-min rates come from progressive filling, vectorised over the flow x link incidence
matrix and done in parallel rounds: a link whose fair share `left / unfrozen_flows` is the
smallest among the links of all its flows is a bottleneck for every one of them, so all such
links freeze their flows at once (Bertsekas & Gallager, Data Networks, 2nd ed., sec. 6.5.2;
the parallel form needs far fewer rounds than one link per round). All copies between one
pair of GPUs form one flow.

A collective costs `alpha + transfer + steps * max_path_latency`: the NCCL floor
(`collective_latency_us`) to launch and synchronise, the fluid transfer, and the propagation of
the last bytes. `FlowNetwork(coalesce=...)` can batch nearly simultaneous completions
(see its docstring); the default is exact. Once every remaining flow crosses one link that
no other link on their paths can out-limit, the rest drains in closed form (equal shares,
ends in order of size).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import simpy

from specmoe.simulator.topology import Topology

_EPS = 1e-12


@dataclass
class Incidence:
    """Flows x links as a padded table, with the orders progressive filling needs.

    pad:   int [D, F] each flow's links (D = most links on one flow), padded with num_links,
           a dummy link of infinite share
    links, owner: int [nnz] every real (flow, link) incidence
    links_by_link, owner_by_link: int [nnz] the same incidences sorted by link;
    link_starts, link_ids: where each link's group starts in that order, and its link
    """

    pad: np.ndarray
    num_links: int
    links: np.ndarray
    owner: np.ndarray
    links_by_link: np.ndarray
    owner_by_link: np.ndarray
    link_starts: np.ndarray
    link_ids: np.ndarray

    @classmethod
    def from_csr(cls, a: sp.csr_matrix) -> "Incidence":
        indptr = a.indptr.astype(np.int64)
        deg = np.diff(indptr)
        owner = np.repeat(np.arange(a.shape[0]), deg)
        links = a.indices.astype(np.int64)
        pad = np.full((int(deg.max(initial=1)), a.shape[0]), a.shape[1], np.int64)
        pad[np.arange(len(owner)) - indptr[owner], owner] = links
        by_link = np.argsort(links, kind="stable")
        return cls._grouped(pad, a.shape[1], links, owner, links[by_link], owner[by_link])

    @classmethod
    def _grouped(cls, pad, num_links, links, owner, lbl, obl) -> "Incidence":
        starts = np.flatnonzero(np.concatenate([[True], lbl[1:] != lbl[:-1]])) if len(lbl) \
            else np.zeros(0, np.int64)
        return cls(pad, num_links, links, owner, lbl, obl, starts, lbl[starts])

    def subset(self, keep: np.ndarray) -> "Incidence":
        """The flows where `keep [F]` is true, renumbered in order (no re-sorting)."""
        renum = np.cumsum(keep) - 1
        a, b = keep[self.owner], keep[self.owner_by_link]
        return Incidence._grouped(np.ascontiguousarray(self.pad[:, keep]), self.num_links,
                                  self.links[a], renum[self.owner[a]],
                                  self.links_by_link[b], renum[self.owner_by_link[b]])


def _row_min(values: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """min over each flow's links of `values [E + 1]`, `pad [D, F]` -> `[F]`."""
    out = values[pad[0]]
    for row in pad[1:]:
        np.minimum(out, values[row], out=out)
    return out


def _shared_bottleneck(inc: Incidence, capacity: np.ndarray) -> float | None:
    """The capacity of a link that every flow crosses, if no other link on their paths is
    slower (then no other link can ever bind); else None."""
    F = inc.pad.shape[1]
    count = np.bincount(inc.links, minlength=inc.num_links)
    common = np.flatnonzero(count == F)
    if not len(common):
        return None
    cap = float(capacity[common].min())
    used = count > 0
    return cap if capacity[used].min() >= cap else None


def max_min_rates(inc: "Incidence | sp.csr_matrix", capacity: np.ndarray,
                  active: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates `[F]` of the `active [F]` flows (others get 0), every flow having at
    least one link, `capacity [E]`. Frozen flows are dropped from the working set whenever
    they are the majority, so late rounds (few flows left) are cheap."""
    if sp.issparse(inc):
        inc = Incidence.from_csr(sp.csr_matrix(inc))
    F, E = inc.pad.shape[1], inc.num_links
    rate = np.zeros(F)
    ids = np.arange(F) if active is None else np.flatnonzero(active)
    w = inc if len(ids) == F else inc.subset(np.asarray(active, bool))
    left = capacity.astype(np.float64).copy()
    share = np.full(E + 1, np.inf)  # the last slot is the padding's dummy link
    neck_share = np.full(E + 1, np.inf)
    frozen = np.zeros(len(ids), bool)
    while not frozen.all():
        n = np.bincount(w.links, weights=~frozen[w.owner], minlength=E)
        share[:E] = np.inf
        np.divide(left, n, out=share[:E], where=n > 0)
        m = _row_min(share, w.pad)  # tightest share of each flow
        m[frozen] = np.inf
        best = np.full(E, np.inf)  # smallest tightest-share among a link's flows
        best[w.link_ids] = np.minimum.reduceat(m[w.owner_by_link], w.link_starts)
        neck = (n > 0) & (share[:E] <= best * (1 + 1e-9))
        neck_share[:E] = np.where(neck, share[:E], np.inf)
        on_neck = _row_min(neck_share, w.pad)
        new = ~frozen & (on_neck <= m * (1 + 1e-9))
        rate[ids[new]] = m[new]
        frozen |= new
        left -= np.bincount(w.links, weights=np.where(new, m, 0.0)[w.owner], minlength=E)
        np.maximum(left, 0.0, out=left)
        if 2 * frozen.sum() >= len(ids) and frozen.sum() >= 512:  # compaction pays off on big sets
            keep = ~frozen
            ids, w, frozen = ids[keep], w.subset(keep), np.zeros(int(keep.sum()), bool)
    return rate


@dataclass
class FlowResult:
    time_s: float  # the whole collective: alpha + transfer + latency
    transfer_s: float
    finish_s: np.ndarray  # [G, G] when each pair's flow ended (from the transfer start); NaN if none
    recomputations: int


@functools.lru_cache(maxsize=16)
def binding_links(topo: Topology) -> np.ndarray:
    """Edges whose constraint can bind, `[E]` bool. An edge is implied by another whose
    pairs include all of its pairs at no more capacity (e.g. a GPU's hop to its own NIC and
    the NIC's uplink): dropping it leaves the feasible rates, so the max-min rates, unchanged."""
    P = (topo.pair_links > 0).astype(np.float64)
    overlap = (P.T @ P).toarray()  # [E, E] shared pairs
    count = np.diag(overlap)
    cap = topo.edge_bw
    idx = np.arange(len(cap))
    subset = overlap >= count[:, None] - 0.5  # pairs(e) within pairs(e')
    tighter = (cap[None, :] < cap[:, None]) | ((cap[None, :] == cap[:, None])
                                                & ((count[None, :] > count[:, None]) | (idx[None, :] < idx[:, None])))
    implied = (subset & tighter & (idx[None, :] != idx[:, None])).any(axis=1)
    return ~implied & (count > 0)


class FlowNetwork:
    """Flow-level collectives on one topology.

    `coalesce` trades exactness for speed: after each rate computation the flows that end
    within `coalesce` x (this collective's bottleneck time) of the first completion all run to
    their own exact completion at their current rates, and the capacity they free is handed
    out at the end of that window (so bytes are exact and time can only be overestimated).
    0 gives the exact event-by-event simulation."""

    def __init__(self, topo: Topology, coalesce: float = 0.0):
        self.topo, self.coalesce = topo, coalesce
        keep = binding_links(topo)
        self.pair_links = topo.pair_links[:, np.flatnonzero(keep)].tocsr()
        self.capacity = topo.edge_bw[keep]

    def _latency(self, traffic: np.ndarray) -> float:
        m = np.asarray(traffic) > 0
        np.fill_diagonal(m, False)
        return float(self.topo.pair_latency[m].max(initial=0.0))

    def _flows(self, traffic: np.ndarray):
        G = self.topo.num_gpus
        flat = np.asarray(traffic, np.float64).reshape(-1).copy()
        flat[np.arange(G) * (G + 1)] = 0.0
        rows = np.flatnonzero(flat > 0)
        return rows, flat[rows]

    def transfer(self, env: simpy.Environment, traffic: np.ndarray, out: dict):
        """simpy process: move `traffic [G, G]` bytes; rates recomputed as flows end."""
        rows, size = self._flows(traffic)
        inc = Incidence.from_csr(self.pair_links[rows])
        loads = np.bincount(inc.links, weights=size[inc.owner], minlength=inc.num_links)
        window = self.coalesce * float((loads / self.capacity).max(initial=0.0))
        finish = np.full(len(rows), np.nan)
        ids, rem = np.arange(len(rows)), size.copy()  # the flows still active
        t0, recomputations = env.now, 0
        while len(ids):
            tail = _shared_bottleneck(inc, self.capacity)
            if tail is not None:  # the rest drains through one link at its full rate
                yield from self._drain(env, t0, tail, ids, rem, finish)
                break
            rate = max_min_rates(inc, self.capacity)
            recomputations += 1
            ends = rem / rate
            first = ends.min()
            done = ends <= first + window + _EPS * first
            dt = float(ends[done].max())
            yield env.timeout(dt)
            finish[ids[done]] = env.now - t0 - (dt - ends[done])
            keep = ~done
            ids, rem, inc = ids[keep], (rem - rate * dt)[keep], inc.subset(keep)
        out.update(transfer_s=env.now - t0, finish=finish, rows=rows, recomputations=recomputations)

    def _drain(self, env, t0, cap: float, ids, rem, finish):
        """Flows sharing one bottleneck of capacity `cap` that nothing else can limit: max-min
        splits it equally, so they end in order of size; flow i (sorted) ends after
        sum_{j<i} rem_j + (n - i) rem_i bytes have crossed the link."""
        order = np.argsort(rem, kind="stable")
        r = rem[order]
        n = len(r)
        ends = (np.cumsum(r) - r + (n - np.arange(n)) * r) / cap
        finish[ids[order]] = env.now - t0 + ends
        yield env.timeout(float(ends[-1]))

    def collective(self, env, traffic: np.ndarray, steps: int = 1, out: dict | None = None):
        """simpy process: alpha (launch and sync), the transfer, then the last bytes' latency."""
        out = {} if out is None else out
        if not len(self._flows(traffic)[0]):
            return
        yield env.timeout(self.topo.cluster.collective_latency_us * 1e-6)
        yield env.process(self.transfer(env, traffic, out))
        yield env.timeout(steps * self._latency(traffic))

    def simulate(self, traffic: np.ndarray, steps: int = 1) -> FlowResult:
        """Run one collective alone and report its time and each flow's finish time."""
        env = simpy.Environment()
        out: dict = {}
        env.process(self.collective(env, traffic, steps, out))
        env.run()
        G = self.topo.num_gpus
        finish = np.full(G * G, np.nan)
        if out:
            finish[out["rows"]] = out["finish"]
        return FlowResult(env.now, out.get("transfer_s", 0.0), finish.reshape(G, G),
                          out.get("recomputations", 0))

    def time(self, traffic: np.ndarray, steps: int = 1) -> float:
        return self.simulate(traffic, steps).time_s
