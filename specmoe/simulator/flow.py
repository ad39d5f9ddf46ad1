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
(see its docstring); the default is exact.
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
    """Flows x links, with the index orders progressive filling needs (built once per
    collective; events then only mask flows out).

    links: int [nnz] link of each incidence, grouped by flow (csr order)
    indptr: int [F + 1]; owner: int [nnz] flow of each incidence
    by_link: int [nnz] incidences sorted by link; link_starts, link_ids: the groups' starts and links
    """

    links: np.ndarray
    indptr: np.ndarray
    owner: np.ndarray
    by_link: np.ndarray
    link_starts: np.ndarray
    link_ids: np.ndarray
    num_links: int

    @classmethod
    def from_csr(cls, a: sp.csr_matrix) -> "Incidence":
        links, indptr = a.indices.astype(np.int64), a.indptr.astype(np.int64)
        owner = np.repeat(np.arange(a.shape[0]), np.diff(indptr))
        by_link = np.argsort(links, kind="stable")
        ls = links[by_link]
        starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]]) if len(ls) else np.zeros(0, np.int64)
        return cls(links, indptr, owner, by_link, starts, ls[starts], a.shape[1])


def max_min_rates(inc: "Incidence | sp.csr_matrix", capacity: np.ndarray,
                  active: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates `[F]` of the `active [F]` flows (others get 0), every flow's row of
    the incidence non-empty, `capacity [E]`."""
    if sp.issparse(inc):
        inc = Incidence.from_csr(sp.csr_matrix(inc))
    F, E = len(inc.indptr) - 1, inc.num_links
    links, owner = inc.links, inc.owner
    starts = inc.indptr[:-1]
    frozen = np.zeros(F, bool) if active is None else ~active
    rate = np.zeros(F)
    left = capacity.astype(np.float64).copy()
    while not frozen.all():
        n = np.bincount(links, weights=~frozen[owner], minlength=E)
        share = np.full(E, np.inf)
        np.divide(left, n, out=share, where=n > 0)
        m = np.minimum.reduceat(share[links], starts)  # [F] tightest share of each flow
        m[frozen] = np.inf
        best = np.full(E, np.inf)  # [E] smallest tightest-share among a link's flows
        best[inc.link_ids] = np.minimum.reduceat(m[owner[inc.by_link]], inc.link_starts)
        neck = (n > 0) & (share <= best * (1 + 1e-9))
        on_neck = np.minimum.reduceat(np.where(neck, share, np.inf)[links], starts)
        new = ~frozen & (on_neck <= m * (1 + 1e-9))
        rate[new] = m[new]
        frozen |= new
        left -= np.bincount(links, weights=np.where(new, rate, 0.0)[owner], minlength=E)
        np.maximum(left, 0.0, out=left)
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
        rows, rem = self._flows(traffic)
        inc = Incidence.from_csr(self.pair_links[rows])
        loads = np.bincount(inc.links, weights=rem[inc.owner], minlength=inc.num_links)
        window = self.coalesce * float((loads / self.capacity).max(initial=0.0))
        finish = np.full(len(rows), np.nan)
        active = np.ones(len(rows), bool)
        t0, recomputations = env.now, 0
        while active.any():
            rate = max_min_rates(inc, self.capacity, active)
            recomputations += 1
            ends = np.full(len(rows), np.inf)
            ends[active] = rem[active] / rate[active]
            first = ends.min()
            done = ends <= first + window + _EPS * first
            dt = float(ends[done].max())
            yield env.timeout(dt)
            rem = np.where(active, np.maximum(rem - rate * dt, 0.0), rem)
            finish[done] = env.now - t0 - (dt - ends[done])
            rem[done] = 0.0
            active &= ~done
        out.update(transfer_s=env.now - t0, finish=finish, rows=rows, recomputations=recomputations)

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
