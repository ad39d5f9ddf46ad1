"""Flow tier: every (src, dst) transfer is a flow along its graph path; flows share links
max-min fairly, and rates are recomputed whenever a flow starts or ends. simpy drives it.

Max-min rates come from progressive filling, vectorised over a padded flow x link table
and done in parallel rounds: a link whose fair share `left / unfrozen_flows` is the
smallest among the links of all its flows is a bottleneck for every one of them, so all such
links freeze their flows at once (Bertsekas & Gallager, Data Networks, 2nd ed., sec. 6.5.2;
the parallel form needs far fewer rounds than one link per round). All copies between one
pair of GPUs form one flow. Several collectives simulated together (`simulate_many`, one
simpy environment each) have their rate recomputations answered in one batch (RateSolver):
most rounds of progressive filling freeze only a few flows, so for one collective their cost
is mostly fixed per-call overhead, which the batch pays once for all collectives.

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
    """Flows x links as a padded table.

    pad: intp [D, F] each flow's links (D = most links on one flow), padded with num_links,
         a dummy link of infinite share; read column by column it lists each flow's links in
         flow order, the order every per-link sum below accumulates in (deterministic)
    """

    pad: np.ndarray
    num_links: int

    @classmethod
    def from_csr(cls, a: sp.csr_matrix) -> "Incidence":
        indptr = a.indptr.astype(np.int64)
        deg = np.diff(indptr)
        owner = np.repeat(np.arange(a.shape[0]), deg)
        pad = np.full((int(deg.max(initial=1)), a.shape[0]), a.shape[1], np.intp)
        pad[np.arange(len(owner)) - indptr[owner], owner] = a.indices
        return cls(pad, a.shape[1])

    def subset(self, keep: np.ndarray) -> "Incidence":
        """The flows where `keep [F]` is true, renumbered in order."""
        return Incidence(self.pad.compress(keep, axis=1), self.num_links)

    def link_sum(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Per link, the number (or the sum of `weights [F]`) of its flows, `[num_links]`;
        summed in flow order."""
        return _link_sum(self.pad, weights, self.num_links)


def _link_sum(pad: np.ndarray, weights, E: int) -> np.ndarray:
    w = None if weights is None else np.broadcast_to(weights, pad.shape).T.ravel()
    return np.bincount(pad.T.ravel(), weights=w, minlength=E + 1)[:E]


def _shared_bottleneck(inc: Incidence, capacity: np.ndarray) -> float | None:
    """The capacity of a link that every flow crosses, if no other link on their paths is
    slower (then no other link can ever bind); else None."""
    F = inc.pad.shape[1]
    if not set(inc.pad[:, 0].tolist()) & set(inc.pad[:, -1].tolist()) - {inc.num_links}:
        return None  # the first and last flows share no link (the common case): no count
    count = inc.link_sum()
    common = np.flatnonzero(count == F)
    if not len(common):
        return None
    cap = float(capacity[common].min())
    used = count > 0
    return cap if capacity[used].min() >= cap else None


def max_min_rates(inc: "Incidence | sp.csr_matrix", capacity: np.ndarray,
                  active: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates `[F]` of the `active [F]` flows (others get 0), every flow having at
    least one link, `capacity [E]`. A link is a bottleneck when none of its unfrozen flows has
    a tighter link (`share[l] <= m[f]` for all its flows f, m = the flow's tightest share);
    flows on a bottleneck at their tightest share freeze at it. Per-link counts and freed
    capacity are updated from the newly frozen flows only; the working arrays are compacted
    when a quarter of them is frozen, else frozen flows are parked on the dummy link."""
    if sp.issparse(inc):
        inc = Incidence.from_csr(sp.csr_matrix(inc))
    F, E = inc.pad.shape[1], inc.num_links
    rate = np.zeros(F)
    ids = np.arange(F) if active is None else np.flatnonzero(active)
    rows = [r.take(ids).astype(np.intp, copy=False) for r in inc.pad]  # D x [F], own copies
    # (frozen flows get overwritten); intp: take() converts any other index type, slowly
    left = capacity.astype(np.float64).copy()
    n = sum(np.bincount(r, minlength=E + 1)[:E] for r in rows)
    share = np.full(E + 1, np.inf)  # the last slot is the padding's dummy link
    ok = np.empty(E + 1, bool)
    todo, width = len(ids), len(ids)  # unfrozen flows; flows in the working arrays
    while todo:
        share[:E] = np.inf
        np.divide(left, n, out=share[:E], where=n > 0)
        sh = [share.take(r) for r in rows]  # each flow's share on each of its links
        m = functools.reduce(np.minimum, sh)  # tightest share of each flow
        limit = m * (1 + 1e-9)
        loose = [np.greater(x, limit) for x in sh]  # not (one of) the flow's tightest links
        ok.fill(True)  # links none of whose flows has a tighter link elsewhere: bottlenecks
        for r, lo in zip(rows, loose):
            ok[np.compress(lo, r)] = False
        ok[E] = False  # frozen flows left in the arrays point only at E: never new again
        new = functools.reduce(np.logical_or, [np.greater(ok.take(r), lo) for r, lo in zip(rows, loose)])
        sel = np.flatnonzero(new)
        m_new = m.take(sel)
        rate[ids.take(sel)] = m_new
        gone = np.stack([r.take(sel) for r in rows], axis=1).ravel()  # flow by flow
        n -= np.bincount(gone, minlength=E + 1)[:E]
        left -= np.bincount(gone, weights=np.repeat(m_new, len(rows)), minlength=E + 1)[:E]
        np.maximum(left, 0.0, out=left)
        todo -= len(sel)
        if 4 * todo < 3 * width:  # a quarter of the working arrays is frozen: compact them
            keep = ~new & (rows[0] != E)
            ids, rows = np.compress(keep, ids), [np.compress(keep, r) for r in rows]
            width = len(ids)
        else:  # few froze (late rounds): park them on the dummy link instead of copying all
            for r in rows:
                r[sel] = E
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

    def transfer(self, env: simpy.Environment, traffic: np.ndarray, out: dict,
                 solver: "RateSolver | None" = None):
        """simpy process: move `traffic [G, G]` bytes; rates recomputed as flows end (by
        `solver` when given, together with other collectives' requests)."""
        rows, size = self._flows(traffic)
        inc = Incidence.from_csr(self.pair_links[rows])
        loads = inc.link_sum(size)
        window = self.coalesce * float((loads / self.capacity).max(initial=0.0))
        finish = np.full(len(rows), np.nan)
        ids, rem = np.arange(len(rows)), size.copy()  # the flows still active
        t0, recomputations = env.now, 0
        while len(ids):
            tail = _shared_bottleneck(inc, self.capacity)
            if tail is not None:  # the rest drains through one link at its full rate
                yield from self._drain(env, t0, tail, ids, rem, finish)
                break
            if solver is None:
                rate = max_min_rates(inc, self.capacity)
            else:
                rate = yield solver.request(env, inc)
            recomputations += 1
            ends = rem / rate
            first = ends.min()
            done = ends <= first + window + _EPS * first
            ends_done = np.compress(done, ends)
            dt = float(ends_done.max())
            yield env.timeout(dt)
            finish[np.compress(done, ids)] = env.now - t0 - (dt - ends_done)
            keep = ~done
            rem -= rate * dt
            ids, rem, inc = np.compress(keep, ids), np.compress(keep, rem), inc.subset(keep)
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

    def collective(self, env, traffic: np.ndarray, steps: int = 1, out: dict | None = None,
                   solver: "RateSolver | None" = None):
        """simpy process: alpha (launch and sync), the transfer, then the last bytes' latency."""
        out = {} if out is None else out
        if not len(self._flows(traffic)[0]):
            return
        yield env.timeout(self.topo.cluster.collective_latency_us * 1e-6)
        yield env.process(self.transfer(env, traffic, out, solver))
        yield env.timeout(steps * self._latency(traffic))

    def simulate_many(self, traffics, steps: int = 1) -> list[FlowResult]:
        """Run independent collectives `traffics [B, G, G]`, each alone on the network in its own
        simpy environment (as the engine serialises them), and report each one's FlowResult.

        The environments advance in lockstep: each runs until its transfer asks for rates,
        then one RateSolver call answers every request at once. The answers are those of
        separate runs (the networks are independent copies); batching only saves the
        per-round overhead of progressive filling, which dominates for small rounds."""
        solver = RateSolver(self.capacity)
        envs, outs = [], []
        for traffic in traffics:
            env, out = simpy.Environment(), {}
            env.process(self.collective(env, traffic, steps, out, solver))
            envs.append(env)
            outs.append(out)
        while True:
            for env in envs:
                while not solver.waiting(env) and env.peek() < np.inf:
                    env.step()
            if not solver.pending:
                break
            solver.solve()
        G = self.topo.num_gpus
        results = []
        for env, out in zip(envs, outs):
            finish = np.full(G * G, np.nan)
            if out:
                finish[out["rows"]] = out["finish"]
            results.append(FlowResult(env.now, out.get("transfer_s", 0.0), finish.reshape(G, G),
                                      out.get("recomputations", 0)))
        return results

    def simulate(self, traffic: np.ndarray, steps: int = 1) -> FlowResult:
        """Run one collective alone and report its time and each flow's finish time."""
        return self.simulate_many([traffic], steps)[0]

    def time(self, traffic: np.ndarray, steps: int = 1) -> float:
        return self.simulate(traffic, steps).time_s


class RateSolver:
    """Rate requests of collectives running in separate simpy environments on separate copies
    of one network (`capacity [E]`), answered together: collective b's links are renumbered
    b * E + e, so one progressive filling over the block-diagonal union gives every
    collective its own max-min rates (no link is shared between blocks, and each block's
    per-link sums run over its own flows in their order: the same floats as alone)."""

    def __init__(self, capacity: np.ndarray):
        self.capacity = capacity
        self.pending: list[tuple[simpy.Environment, simpy.Event, Incidence]] = []
        self._waiting: set[int] = set()

    def request(self, env: simpy.Environment, inc: Incidence) -> simpy.Event:
        ev = env.event()
        self.pending.append((env, ev, inc))
        self._waiting.add(id(env))
        return ev

    def waiting(self, env: simpy.Environment) -> bool:
        return id(env) in self._waiting

    def solve(self) -> None:
        pending, self.pending, self._waiting = self.pending, [], set()
        E, B = len(self.capacity), len(pending)
        D = max(inc.pad.shape[0] for _, _, inc in pending)
        pads = []
        for b, (_, _, inc) in enumerate(pending):  # block b: links b (E + 1) + [0, E], E = its dummy
            p = inc.pad + b * (E + 1)
            if p.shape[0] < D:
                p = np.vstack([p, np.full((D - p.shape[0], p.shape[1]), b * (E + 1) + E, p.dtype)])
            pads.append(p)
        capacity = np.tile(np.append(self.capacity, np.inf), B)  # a dummy's share stays inf
        rate = max_min_rates(Incidence(np.concatenate(pads, axis=1), B * (E + 1)), capacity)
        bounds = np.cumsum([0] + [p.shape[1] for p in pads])
        for b, (_, ev, _) in enumerate(pending):
            ev.succeed(rate[bounds[b]:bounds[b + 1]])
