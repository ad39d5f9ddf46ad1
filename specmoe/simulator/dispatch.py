"""From routing to traffic: which GPU each token's experts live on, and what dispatch sends.

Placement (COMMON.md): `phy2log [num_moe_layers, num_physical]`; physical expert p lives on EP
rank `p // (num_physical // ep)`. A token's copy goes once to each distinct remote GPU that
holds one of its experts (DeepEP's dispatch); experts on its own GPU cost no traffic.
A logical expert with several replicas is served by the replica on the token's own GPU if
there is one, else by the replica on the rank with the fewest token copies so far in that
layer (ties to the lower rank), tokens taken in order: deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specmoe.errors import InputError
from specmoe.specs import ModelSpec


@dataclass
class Dispatch:
    """copies:        int64 [num_moe_layers, ep, ep]  tokens sent from rank (row) to rank
                      (column) once per distinct destination; the diagonal counts tokens
                      with at least one local expert (no traffic)
    expert_tokens: int64 [num_moe_layers, num_physical]  token copies each physical expert computes
    tokens_per_gpu: int64 [ep]  tokens whose attention runs on each rank (token2gpu counts)
    routed:        int64 [num_moe_layers, ep]  tokens that use an MoE layer (not skipped), per source
    """

    copies: np.ndarray
    expert_tokens: np.ndarray
    tokens_per_gpu: np.ndarray
    routed: np.ndarray

    @property
    def remote_copies(self) -> int:
        c = self.copies
        return int(c.sum() - np.trace(c, axis1=1, axis2=2).sum())


def default_phy2log(model: ModelSpec, ep: int) -> np.ndarray:
    """Contiguous placement, `[num_moe_layers, num_experts]`: expert e on rank e // (E / ep)."""
    if model.num_experts % ep:
        raise InputError("--ep", "", f"{model.name} has {model.num_experts} experts, not divisible "
                         f"by ep={ep}; give a placement (--plan) with redundant experts")
    return np.tile(np.arange(model.num_experts, dtype=np.int64), (model.num_moe_layers, 1))


def check_phy2log(phy2log, model: ModelSpec, ep: int, source="phy2log") -> np.ndarray:
    """Validate a placement for `model` on `ep` ranks; InputError names the reason."""
    a = np.asarray(phy2log)
    L, E = model.num_moe_layers, model.num_experts
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise InputError(source, "physical_to_logical_map",
                         f"expected an integer array [num_moe_layers, num_physical], got shape {a.shape}")
    if a.shape[0] != L:
        raise InputError(source, "physical_to_logical_map",
                         f"has {a.shape[0]} layers but {model.name} has {L} MoE layers")
    if a.shape[1] % ep:
        raise InputError(source, "physical_to_logical_map",
                         f"{a.shape[1]} physical experts do not divide over ep={ep} ranks")
    if a.shape[1] < E:
        raise InputError(source, "physical_to_logical_map",
                         f"{a.shape[1]} physical slots cannot hold {model.name}'s {E} experts")
    if a.min() < 0 or a.max() >= E:
        raise InputError(source, "physical_to_logical_map",
                         f"logical expert id outside [0, {E}) (model {model.name})")
    for layer in range(L):
        missing = np.setdiff1d(np.arange(E), a[layer])
        if missing.size:
            raise InputError(source, f"physical_to_logical_map[{layer}]",
                             f"logical expert {int(missing[0])} has no physical slot")
    return a.astype(np.int64)


def _replica_phys(phy2log_l: np.ndarray, E: int) -> tuple[np.ndarray, np.ndarray]:
    """Per logical expert: number of replicas `[E]` and its lowest physical slot `[E]`."""
    count = np.bincount(phy2log_l, minlength=E)
    first = np.full(E, -1, np.int64)
    order = np.arange(len(phy2log_l))[::-1]
    first[phy2log_l[order]] = order  # last write wins: the lowest index
    return count, first


def route(topk_ids: np.ndarray, token2gpu: np.ndarray, phy2log: np.ndarray, ep: int) -> Dispatch:
    """Dispatch counts for `topk_ids [T, L, K]` (-1 = none), `token2gpu [T]`, `phy2log [L, P]`."""
    T, L, K = topk_ids.shape
    P = phy2log.shape[1]
    per_rank = P // ep
    E = int(phy2log.max()) + 1
    ids = np.asarray(topk_ids)
    src = np.asarray(token2gpu, np.int64)
    phys, replicated = _physical(ids, src, phy2log, per_rank, ep, E)
    dst = phys // per_rank if per_rank > 1 else phys  # [T, L, K]; -1 stays negative
    valid = phys >= 0
    if per_rank > 1:  # two experts of a token on one GPU: one copy (top-k ids are distinct)
        for k in range(1, K):
            for j in range(k):
                valid[..., k] &= dst[..., k] != dst[..., j]
    # key (src, layer, dst): a token's keys share one src, so its writes stay in a small window
    base = ((src[:, None] * L + np.arange(L)) * ep).astype(np.int32)  # [T, L]
    key = base[:, :, None] + dst
    dump = ep * L * ep
    key = np.where(valid, key, dump) if not valid.all() else key
    copies = np.bincount(key.ravel(), minlength=dump + 1)[:dump].reshape(ep, L, ep).transpose(1, 0, 2)
    if per_rank == 1 and not replicated:  # dst is the physical expert: counts are its tokens
        expert_tokens = copies.sum(axis=1)
    else:
        ok = phys >= 0
        key = (np.arange(L, dtype=np.int32)[None, :, None] * P + phys)[ok]
        expert_tokens = np.bincount(key, minlength=L * P).reshape(L, P)
    tokens_per_gpu = np.bincount(src, minlength=ep).astype(np.int64)
    if ids.min(initial=0) >= 0:
        routed = np.tile(tokens_per_gpu, (L, 1))
    else:
        used = (phys >= 0).any(axis=2)  # [T, L]
        routed = np.stack([np.bincount(src[used[:, l]], minlength=ep) for l in range(L)])
    return Dispatch(np.ascontiguousarray(copies, np.int64), expert_tokens.astype(np.int64),
                    tokens_per_gpu, routed.astype(np.int64))


def _physical(ids, src, phy2log, per_rank, ep, E) -> tuple[np.ndarray, bool]:
    """Physical expert of every (token, layer, k), `[T, L, K]` int32 (-1 = none), and whether
    any logical expert is replicated."""
    L = phy2log.shape[0]
    if (phy2log == phy2log[0]).all() and np.bincount(phy2log[0], minlength=E).max() == 1:
        count, first = _replica_phys(phy2log[0], E)
        return np.append(first, -1).astype(np.int32)[ids], False  # -1 indexes the last slot
    phys = np.empty(ids.shape, np.int32)
    replicated = False
    for layer in range(L):
        count, first = _replica_phys(phy2log[layer], E)
        phys[:, layer] = np.append(first, -1).astype(np.int32)[ids[:, layer]]
        if (count > 1).any():
            replicated = True
            _assign_replicas(phys[:, layer], ids[:, layer], src, phy2log[layer], count, per_rank, ep)
    return phys, replicated


def _assign_replicas(phys_l, ids_l, token2gpu, phy2log_l, count, per_rank, ep) -> None:
    """Resolve replicated experts of one layer in place (`phys_l [T, K]`), per the module rule."""
    P = len(phy2log_l)
    rank_of = np.arange(P) // per_rank
    single = (phys_l >= 0) & (count[np.maximum(ids_l, 0)] == 1)
    load = np.bincount(rank_of[phys_l[single]], minlength=ep).astype(np.int64)
    pending = []
    for e in np.flatnonzero(count > 1):
        slots = np.flatnonzero(phy2log_l == e)
        t_ix, k_ix = np.nonzero(ids_l == e)  # row-major: tokens in order
        home = dict(zip(rank_of[slots].tolist(), slots.tolist()))
        src = token2gpu[t_ix]
        local = np.array([home.get(int(s), -1) for s in src], np.int64) if len(src) else np.zeros(0, np.int64)
        hit = local >= 0
        phys_l[t_ix[hit], k_ix[hit]] = local[hit]
        np.add.at(load, rank_of[local[hit]], 1)
        pending.append((slots, t_ix[~hit], k_ix[~hit]))
    for slots, t_ix, k_ix in pending:
        n = len(t_ix)
        if not n:
            continue
        ranks = rank_of[slots]
        level = load[ranks][:, None] + np.arange(n)[None, :]  # [replicas, n] the i-th extra copy
        which = np.broadcast_to(np.arange(len(slots))[:, None], level.shape)
        order = np.lexsort((ranks[which].ravel(), level.ravel()))[:n]
        chosen = which.ravel()[order]
        phys_l[t_ix, k_ix] = slots[chosen]
        np.add.at(load, ranks[chosen], 1)
