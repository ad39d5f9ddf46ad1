"""Speculative expert grouping: put experts that serve the same tokens on the same GPU.

Per layer, on the profiling split:
1. partition the co-activation graph (`W[a, b]` = tokens that use both a and b) with METIS
   into `ep` parts, then repair part sizes to exactly `num_experts / ep` each;
2. label the parts so that they chain across layers: part i of layer l goes to the rank whose
   layer l-1 experts send the most tokens to it (Hungarian matching, scipy);
3. refine with Kernighan-Lin style swaps on the true objective, remote dispatch copies given
   each token's source GPU, under a load bound (max/mean rank load <= `bound`).
Swaps keep every rank's expert count; swaps that touch disjoint rank pairs change disjoint
columns of the token x rank count matrix, so their gains add exactly and a whole matching of
them is applied per pass.
"""
from __future__ import annotations

import numpy as np
import pymetis
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment


def incidence(ids_l: np.ndarray, num_experts: int) -> sp.csr_matrix:
    """Multi-hot token x expert matrix for one layer, `ids_l [T, K]` -> `[T, E]` float32."""
    T, K = ids_l.shape
    rows = np.repeat(np.arange(T), K)
    cols = ids_l.ravel()
    ok = cols >= 0
    X = sp.csr_matrix((np.ones(ok.sum(), np.float32), (rows[ok], cols[ok])), shape=(T, num_experts))
    X.data[:] = 1.0  # a repeated id counts once
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


def capacities(num_experts: int, ep: int) -> np.ndarray:
    """Experts per rank when the E logical experts are spread as evenly as possible, `[ep]`."""
    q, r = divmod(num_experts, ep)
    return np.array([q + 1] * r + [q] * (ep - r), np.int64)


def metis_parts(W: np.ndarray, ep: int, seed: int) -> np.ndarray:
    """METIS k-way partition of the weighted graph `W [E, E]` (symmetric, zero diagonal).

    Returns part `[E]`. Edge weights are scaled to integers (METIS needs them > 0)."""
    E = len(W)
    if ep == 1:
        return np.zeros(E, np.int64)
    if ep >= E:
        return np.arange(E) % ep
    scale = 1000.0 / max(W.max(), 1e-12)
    Wi = np.rint(W * scale).astype(np.int64)
    np.fill_diagonal(Wi, 0)
    starts, adj, ew = [0], [], []
    for a in range(E):
        nb = np.flatnonzero(Wi[a] > 0)
        adj.extend(nb.tolist())
        ew.extend(Wi[a, nb].tolist())
        starts.append(len(adj))
    if not adj:  # no co-activation at all
        return np.arange(E) % ep
    res = pymetis.part_graph(ep, adjacency=pymetis.CSRAdjacency(starts, adj), eweights=ew,
                             options=pymetis.Options(seed=int(seed) % (2**31), ufactor=1))
    return np.asarray(res.vertex_part, np.int64)


def repair_sizes(part: np.ndarray, W: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Move experts from over-full parts to parts with room until part p has cap[p] experts.

    The expert moved is the one least attached to its part; it goes to the part with room it
    is most attached to. `part [E]`, `W [E, E]`, `cap [ep]`."""
    part = part.copy()
    ep = len(cap)
    while True:
        size = np.bincount(part, minlength=ep)
        over, under = np.flatnonzero(size > cap), np.flatnonzero(size < cap)
        if not len(over):
            return part
        onehot = np.eye(ep)[part]  # [E, ep]
        attach = W @ onehot  # [E, ep]
        cand = np.flatnonzero(np.isin(part, over))
        own = attach[cand, part[cand]]
        best_to = under[np.argmax(attach[np.ix_(cand, under)], 1)]
        gain = attach[cand, best_to] - own
        i = int(np.argmax(gain))
        part[cand[i]] = best_to[i]


def align(prev_e2r: np.ndarray, part: np.ndarray, trans: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Label parts with ranks so tokens stay on their rank from layer l-1 to l.

    prev_e2r `[E]` ranks at layer l-1; part `[E]` parts at layer l; trans `[E, E]` tokens
    using a at l-1 and b at l. Only parts of equal size may swap labels (sizes must match
    `cap`). Returns e2r `[E]` for layer l."""
    ep = len(cap)
    P = np.eye(ep)[prev_e2r]  # [E, ep]  expert(l-1) -> rank
    Q = np.eye(ep)[part]  # [E, ep]  expert(l) -> part
    flow = P.T @ trans @ Q  # [rank, part]
    size = np.bincount(part, minlength=ep)
    cost = -flow + np.where(size[None, :] == cap[:, None], 0.0, 1e12)
    rank_of_part = np.empty(ep, np.int64)
    r, c = linear_sum_assignment(cost)
    rank_of_part[c] = r
    return rank_of_part[part]


def _swap_gains(X, XT, e2r, home, ep):
    """Exact change in remote copies for swapping every pair of experts, `[E, E]`.

    With C[t, g] = experts of token t on rank g and "remote" meaning g != home[t] (every g
    when home is None): moving a token's expert off g saves a copy when C[t, g] == 1,
    moving one onto g costs a copy when C[t, g] == 0, and tokens that use both swapped
    experts see no change (the Corr term cancels what the first two terms count for them).
    """
    E = X.shape[1]
    R = np.zeros((E, ep), np.float32)
    R[np.arange(E), e2r] = 1
    C = np.asarray(X @ R)  # [T, G]
    remote = np.ones_like(C, bool) if home is None else (np.arange(ep)[None, :] != home[:, None])
    Z = ((C == 0) & remote).astype(np.float32)
    U = ((C == 1) & remote).astype(np.float32)
    M = np.asarray(XT @ Z)  # [E, G] cost of moving a onto g
    S = np.asarray(XT @ U)[np.arange(E), e2r]  # [E] saving of moving a off its rank
    Y = X.multiply(U[:, e2r]).tocsr()
    corr = np.asarray((Y.T @ X).todense())
    D1 = M[:, e2r] - S[:, None]  # [a, b]: a moves to b's rank
    return D1 + D1.T + corr + corr.T, C


def kl_refine(X: sp.csr_matrix, e2r: np.ndarray, home: np.ndarray | None, weight: np.ndarray,
              ep: int, bound: float, max_passes: int = 400, improve: bool = True) -> np.ndarray:
    """Swap experts between ranks while it lowers remote copies, under the load bound.

    X `[T, E]` incidence; e2r `[E]`; home `[T]` source rank of each token (None: count every
    rank a token touches); weight `[H, E]` (or `[E]`) loads: the bound max/mean <= `bound`
    must hold for every row (the profile and bootstrap resamples of it, so the plan does not
    lean on one sample). While a row breaks the bound, each pass makes the cheapest swap
    that lightens the heaviest rank; `improve=False` stops after that repair. Returns the
    refined e2r `[E]`."""
    e2r = e2r.copy()
    XT = X.T.tocsr()
    w = np.atleast_2d(np.asarray(weight, np.float64))  # [H, E]
    cap = bound * w.sum(1) / ep  # [H]
    for _ in range(max_passes):
        D, _ = _swap_gains(X, XT, e2r, home, ep)
        load = np.stack([np.bincount(e2r, weights=row, minlength=ep) for row in w])  # [H, G]
        ga, gb = e2r[:, None], e2r[None, :]
        dw = w[:, None, :] - w[:, :, None]  # [H, a, b] = w_b - w_a
        new_max = np.maximum(load[:, ga] + dw, load[:, gb] - dw)  # [H, E, E]
        old_max = np.maximum(load[:, ga], load[:, gb])
        capc = cap[:, None, None]
        over = load.max(1) > cap + 1e-9  # [H]
        if over.any():  # repair: lighten the heaviest rank (relative to cap) of a bad row
            r = int(np.argmax(load.max(1) / cap))
            h = int(np.argmax(load[r]))
            ok = (ga != gb) & ((ga == h) | (gb == h)) & (new_max[r] < load[r, h] - 1e-9)
            # other rows may not be pushed over their cap (unless they already are)
            ok &= np.all((new_max <= capc) | (new_max <= old_max) | (np.arange(len(w)) == r)
                         [:, None, None], axis=0)
            if ok.any():
                a, b = np.unravel_index(np.argmin(np.where(ok, D, np.inf)), D.shape)
                e2r[a], e2r[b] = e2r[b], e2r[a]
                continue
            # the bound cannot be repaired by swaps: improve traffic without raising any max
        if not improve:  # balance repair only
            break
        capc = np.maximum(cap, load.max(1))[:, None, None]
        ok = (ga != gb) & np.all(new_max <= capc, axis=0)
        gain = np.where(ok, D, 0.0)
        cand = np.flatnonzero(np.triu(gain < -0.5, 1).ravel())
        if not len(cand):
            break
        cand = cand[np.argsort(gain.ravel()[cand], kind="stable")][: 8 * ep]
        used = np.zeros(ep, bool)
        for a, b in zip(*np.unravel_index(cand, D.shape)):
            if not (used[e2r[a]] or used[e2r[b]]):
                used[e2r[a]] = used[e2r[b]] = True
                e2r[a], e2r[b] = e2r[b], e2r[a]
    return e2r


def remote_copies(X: sp.csr_matrix, e2r: np.ndarray, home: np.ndarray | None, ep: int) -> float:
    """Total remote copies of one layer (distinct ranks per token when home is None)."""
    R = np.zeros((X.shape[1], ep), np.float32)
    R[np.arange(X.shape[1]), e2r] = 1
    C = np.asarray(X @ R) > 0
    if home is None:
        return float(C.sum())
    return float(C.sum() - C[np.arange(len(home)), home].sum())


def greedy_layer(W: np.ndarray, prev_aff: np.ndarray | None, weight: np.ndarray,
                 cap: np.ndarray, bound: float) -> np.ndarray:
    """Greedy affinity packing (the comparison heuristic): experts by decreasing load, each
    to the rank with room and load under the bound that it is most attached to.

    W `[E, E]` co-activation; prev_aff `[E, ep]` tokens flowing from rank g's layer l-1
    experts to e (or None); weight `[E]`; cap `[ep]` experts per rank. Returns e2r `[E]`."""
    E, ep = len(W), len(cap)
    limit = bound * weight.sum() / ep
    e2r = np.full(E, -1, np.int64)
    load = np.zeros(ep)
    onehot = np.zeros((E, ep))
    for e in np.argsort(-weight, kind="stable"):
        room = np.bincount(e2r[e2r >= 0], minlength=ep) < cap
        aff = W[e] @ onehot + (0.0 if prev_aff is None else prev_aff[e])
        fits = room & (load + weight[e] <= limit)
        pick = np.where(fits if fits.any() else room, aff - 1e-9 * load, -np.inf)
        g = int(np.argmax(pick))
        e2r[e], load[g], onehot[e, g] = g, load[g] + weight[e], 1.0
    return e2r


def add_replicas(e2r: np.ndarray, W: np.ndarray, weight: np.ndarray, num_redundant: int,
                 ep: int, bound: float = np.inf) -> list[list[int]]:
    """Which experts get the redundant slots, and where (one layer).

    The experts to replicate are EPLB's (highest load per replica first); each replica goes
    to the rank with a free slot, not yet holding it, whose experts co-activate with it most
    (tokens there then find it locally), among the ranks whose load stays within `bound` x
    the mean when the replica takes an equal share of the expert's load (else the lightest).
    Returns extra[g]: logical ids added to rank g."""
    from specmoe.planner.eplb import replicate
    E = len(e2r)
    per_rank = (E + num_redundant) // ep
    free = per_rank - np.bincount(e2r, minlength=ep)
    phy, _ = replicate(weight, E + num_redundant, ep)
    extra: list[list[int]] = [[] for _ in range(ep)]
    onehot = np.eye(ep)[e2r]  # [E, ep] replicas of each expert on each rank
    limit = bound * weight.sum() / ep
    for e in phy[E:]:
        aff = W[e] @ onehot
        ok = (free > 0) & (onehot[e] == 0)
        ok = ok if ok.any() else free > 0
        load = _replica_loads(onehot, weight)
        share = weight[e] / (onehot[e].sum() + 1)
        fits = ok & (load - np.where(onehot[e] > 0, weight[e] / onehot[e].sum() - share, 0)
                     + share <= limit)
        g = int(np.argmax(np.where(fits, aff, -np.inf))) if fits.any() \
            else int(np.argmin(np.where(ok, load, np.inf)))
        extra[g].append(int(e))
        free[g] -= 1
        onehot[e, g] = 1.0
    return _fix_duplicates(e2r, extra)


def _fix_duplicates(e2r: np.ndarray, extra: list[list[int]]) -> list[list[int]]:
    """Swap replicas between ranks until no rank holds an expert twice (when the greedy
    order left a replica only a rank that already had it)."""
    held = [set(np.flatnonzero(e2r == g).tolist()) for g in range(len(extra))]
    for g, reps in enumerate(extra):
        for i, e in enumerate(reps):
            if e not in held[g] and reps.count(e) == 1:
                continue
            for h, other in enumerate(extra):
                j = next((j for j, f in enumerate(other) if h != g and e not in held[h]
                          and e not in other and f not in held[g] and f not in reps), None)
                if j is not None:
                    reps[i], other[j] = other[j], e
                    break
    return extra


def _replica_loads(onehot: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rank loads `[ep]` when each expert's load is split evenly over its replicas."""
    return (onehot / onehot.sum(1, keepdims=True)).T @ weight
