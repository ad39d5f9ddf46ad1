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
the last bytes. Flows whose remaining time is within `coalesce` (relative) of the elapsed
transfer time complete together, which bounds the number of rate recomputations; the error
this adds is below `coalesce` of the transfer time (default 1e-3).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import simpy

from specmoe.simulator.topology import Topology

_EPS = 1e-12


def max_min_rates(flow_links: sp.csr_matrix, capacity: np.ndarray) -> np.ndarray:
    """Max-min fair rates, `flow_links [F, E]` (every row non-empty), `capacity [E]` -> `[F]`."""
    F, E = flow_links.shape
    indptr, links = flow_links.indptr, flow_links.indices
    owner = np.repeat(np.arange(F), np.diff(indptr))  # [nnz] flow of each incidence
    by_link = np.argsort(links, kind="stable")  # incidences grouped by link
    link_sorted = links[by_link]
    link_starts = np.flatnonzero(np.r_[True, link_sorted[1:] != link_sorted[:-1]])
    link_ids = link_sorted[link_starts]
    rate = np.zeros(F)
    frozen = np.zeros(F, bool)
    left = capacity.astype(np.float64).copy()
    while not frozen.all():
        n = np.bincount(links, weights=~frozen[owner], minlength=E)
        share = np.full(E, np.inf)
        np.divide(left, n, out=share, where=n > 0)
        m = np.minimum.reduceat(share[links], indptr[:-1])  # [F] tightest share of each flow
        m[frozen] = np.inf
        best = np.full(E, np.inf)  # [E] smallest tightest-share among a link's flows
        best[link_ids] = np.minimum.reduceat(m[owner[by_link]], link_starts)
        neck = (n > 0) & (share <= best * (1 + 1e-9))
        on_neck = np.minimum.reduceat(np.where(neck, share, np.inf)[links], indptr[:-1])
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


class _Fabric:
    """The flows in flight in one simpy environment."""

    def __init__(self, env: simpy.Environment, topo: Topology, coalesce: float):
        self.env, self.topo, self.coalesce = env, topo, coalesce
        self.rows: list[np.ndarray] = []  # per collective: pair rows into pair_links
        self.remaining: list[np.ndarray] = []
        self.finish: list[np.ndarray] = []
        self.started: list[float] = []
        self.done: list[simpy.Event] = []
        self.wake = env.event()
        self.recomputations = 0
        env.process(self._run())

    def submit(self, traffic: np.ndarray) -> tuple[simpy.Event, int]:
        G = self.topo.num_gpus
        flat = np.asarray(traffic, np.float64).reshape(-1).copy()
        flat[np.arange(G) * (G + 1)] = 0.0
        rows = np.flatnonzero(flat > 0)
        ev = self.env.event()
        self.rows.append(rows)
        self.remaining.append(flat[rows])
        self.finish.append(np.full(len(rows), np.nan))
        self.started.append(self.env.now)
        self.done.append(ev)
        if not len(rows):
            ev.succeed()
        elif not self.wake.triggered:
            self.wake.succeed()
        return ev, len(self.rows) - 1

    def _active(self):
        parts = [(c, np.flatnonzero(np.isnan(f))) for c, f in enumerate(self.finish)
                 if not self.done[c].triggered]
        return [(c, i) for c, i in parts if len(i)]

    def _run(self):
        pl = self.topo.pair_links
        while True:
            active = self._active()
            if not active:
                self.wake = self.env.event()
                yield self.wake
                continue
            rows = np.concatenate([self.rows[c][i] for c, i in active])
            rates = max_min_rates(pl[rows], self.topo.edge_bw)
            self.recomputations += 1
            rem = np.concatenate([self.remaining[c][i] for c, i in active])
            dt = float((rem / rates).min())
            self.wake = self.env.event()
            t0 = self.env.now
            yield self.env.timeout(dt) | self.wake
            elapsed = self.env.now - t0
            self._advance(active, rates, elapsed)

    def _advance(self, active, rates, elapsed):
        pos = 0
        for c, i in active:
            r = rates[pos:pos + len(i)]
            pos += len(i)
            rem = self.remaining[c][i] - r * elapsed
            since = self.env.now - self.started[c]
            ended = rem <= r * since * self.coalesce + _EPS * self.remaining[c][i]
            self.remaining[c][i] = np.maximum(rem, 0.0)
            self.finish[c][i[ended]] = since
            if not np.isnan(self.finish[c]).any():
                self.done[c].succeed()


_FABRICS: "weakref.WeakKeyDictionary[simpy.Environment, _Fabric]" = weakref.WeakKeyDictionary()


class FlowNetwork:
    """Flow-level collectives on one topology."""

    def __init__(self, topo: Topology, coalesce: float = 1e-3):
        self.topo, self.coalesce = topo, coalesce

    def _fabric(self, env) -> _Fabric:
        fab = _FABRICS.get(env)
        if fab is None:
            fab = _FABRICS[env] = _Fabric(env, self.topo, self.coalesce)
        return fab

    def _latency(self, traffic: np.ndarray) -> float:
        m = np.asarray(traffic) > 0
        np.fill_diagonal(m, False)
        return float(self.topo.pair_latency[m].max(initial=0.0))

    def collective(self, env, traffic: np.ndarray, steps: int = 1, out: dict | None = None):
        """simpy process: one collective of `traffic [G, G]` bytes."""
        if not (np.asarray(traffic) > 0).any():
            return
        fab = self._fabric(env)
        yield env.timeout(self.topo.cluster.collective_latency_us * 1e-6)
        t0 = env.now
        ev, c = fab.submit(traffic)
        yield ev
        if out is not None:
            G = self.topo.num_gpus
            finish = np.full(G * G, np.nan)
            finish[fab.rows[c]] = fab.finish[c]
            out.update(transfer_s=env.now - t0, finish_s=finish.reshape(G, G),
                       recomputations=fab.recomputations)
        yield env.timeout(steps * self._latency(traffic))

    def process(self, traffic: np.ndarray, steps: int = 1):
        """A factory `env -> generator` for the step engine."""
        return lambda env: self.collective(env, traffic, steps)

    def simulate(self, traffic: np.ndarray, steps: int = 1) -> FlowResult:
        """Run one collective alone and report its time and each flow's finish time."""
        env = simpy.Environment()
        out: dict = {}
        env.process(self.collective(env, traffic, steps, out))
        env.run()
        G = self.topo.num_gpus
        if not out:
            return FlowResult(0.0, 0.0, np.full((G, G), np.nan), 0)
        alpha = self.topo.cluster.collective_latency_us * 1e-6
        total = alpha + out["transfer_s"] + steps * self._latency(traffic)
        return FlowResult(total, out.get("transfer_s", 0.0),
                          out.get("finish_s", np.full((G, G), np.nan)), out.get("recomputations", 0))

    def time(self, traffic: np.ndarray, steps: int = 1) -> float:
        return self.simulate(traffic, steps).time_s
