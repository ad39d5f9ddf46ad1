"""Fast vectorised placement metrics: where each activation is dispatched, and what it costs.

Conventions (COMMON.md): physical expert p lives on EP rank `p // (num_physical // ep)`. A token
is dispatched from its source GPU `token2gpu`; as in DeepEP, one copy of the token goes to each
distinct remote rank that holds one of its experts, whatever the number of experts there.
A logical expert with several replicas serves a token on the token's own GPU when it has a
replica there; otherwise it goes to the replica on the rank with the fewest activations so far in that layer
(counting local hits and single-replica experts first; replicated experts in id order, tokens
in order, ties to the lower rank) -- the simulator's rule (specmoe.simulator.dispatch).
"""
from __future__ import annotations

import numpy as np


def slot2rank(num_physical: int, ep: int) -> np.ndarray:
    """EP rank of each physical slot, `[num_physical]`."""
    return np.arange(num_physical) // (num_physical // ep)


def replica_counts(phy2log_l: np.ndarray, num_experts: int, ep: int) -> np.ndarray:
    """Replicas of each logical expert on each rank, `[num_experts, ep]`, for one layer."""
    ranks = slot2rank(len(phy2log_l), ep)
    has = np.zeros((num_experts, ep), np.int64)
    np.add.at(has, (phy2log_l, ranks), 1)
    return has


def dispatch_ranks(ids_l: np.ndarray, phy2log_l: np.ndarray, ep: int, num_experts: int,
                   token2gpu_l: np.ndarray) -> np.ndarray:
    """Destination rank of each activation for one layer, `[T, K]`, -1 where no expert.

    ids_l: `[T, K]` logical expert ids; phy2log_l: `[num_physical]`; token2gpu_l: `[T]`.
    """
    has = replica_counts(phy2log_l, num_experts, ep) > 0  # [E, G]
    valid = ids_l >= 0
    e = np.where(valid, ids_l, 0)
    src = np.broadcast_to(token2gpu_l[:, None], ids_l.shape)
    local = has[e, src] & valid
    single = has.sum(1) == 1
    first_rank = has.argmax(1)  # [E]
    dest = np.where(local, src, first_rank[e])
    dest = np.where(valid, dest, -1)
    fixed = valid & (local | single[e])
    load = np.bincount(dest[fixed], minlength=ep).astype(np.int64)
    for x in np.flatnonzero(~single):
        where = np.flatnonzero((~fixed & (e == x)).ravel())  # remote uses of x, token order
        if not len(where):
            continue
        ranks = np.flatnonzero(has[x])
        n = len(where)
        level = load[ranks][:, None] + np.arange(n)[None, :]  # [replicas, n]: i-th extra use
        which = np.broadcast_to(np.arange(len(ranks))[:, None], level.shape).ravel()
        chosen = ranks[which[np.lexsort((ranks[which], level.ravel()))[:n]]]
        dest.ravel()[where] = chosen  # token order takes the fills in (level, rank) order
        np.add.at(load, chosen, 1)
    return dest


def layer_counts(dest: np.ndarray, ep: int) -> np.ndarray:
    """Activations of each token on each rank, `dest [T, K]` -> `[T, G]`."""
    T = dest.shape[0]
    ok = dest >= 0
    rows = np.broadcast_to(np.arange(T)[:, None], dest.shape)[ok]
    return np.bincount(rows * ep + dest[ok], minlength=T * ep).reshape(T, ep)


def evaluate_arrays(topk_ids: np.ndarray, phy2log: np.ndarray, ep: int, num_experts: int,
                    token2gpu: np.ndarray) -> dict:
    """Held-out figures for a placement and a token schedule.

    topk_ids: `[T, L, K]`; phy2log: `[L, num_physical]`; token2gpu: `[T]` (the same GPU at
    every layer) or `[T, L]` (a per-layer source, possible with TP attention).
    Returns remote_copies_per_token_layer, local_activation_rate (activations served on the
    token's own GPU / all activations), load_imbalance (mean over layers of max/mean rank
    load), gpu_load `[L, G]`, and remote_copies `[T, L]`.
    """
    T, L, _ = topk_ids.shape
    t2g = np.broadcast_to(token2gpu.reshape(T, -1), (T, L)) if T else np.zeros((0, L), int)
    copies = np.zeros((T, L), np.int64)
    load = np.zeros((L, ep), np.int64)
    local = active = 0
    for layer in range(L):
        dest = dispatch_ranks(topk_ids[:, layer], phy2log[layer], ep, num_experts, t2g[:, layer])
        cnt = layer_counts(dest, ep)  # [T, G]
        own = cnt[np.arange(T), t2g[:, layer]]
        copies[:, layer] = (cnt > 0).sum(1) - (own > 0)
        load[layer] = cnt.sum(0)
        local += int(own.sum())
        active += int((dest >= 0).sum())
    mean = load.mean(1)
    imb = np.divide(load.max(1), mean, out=np.ones_like(mean), where=mean > 0)
    return dict(remote_copies_per_token_layer=float(copies.mean()) if copies.size else 0.0,
                local_activation_rate=local / active if active else 0.0,
                load_imbalance=float(imb.mean()), max_layer_imbalance=float(imb.max()),
                gpu_load=load, remote_copies=copies)
