"""From routing to traffic: which GPU each token's experts live on, and what dispatch sends.

Placement (COMMON.md): `phy2log [num_moe_layers, num_physical]`; physical expert p lives on EP
rank `p // (num_physical // ep)`. A token's copy goes once to each distinct remote GPU that
holds one of its experts (DeepEP's dispatch); experts on its own GPU cost no traffic.
A logical expert with several replicas is served by the replica on the token's own GPU if
there is one, else by the replica on the rank with the fewest token copies so far in that
layer (ties to the lower rank), tokens taken in order: deterministic.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from specmoe.errors import InputError
from specmoe.specs import ModelSpec


@dataclass
class Dispatch:
    """counts:        int64 [ep, num_moe_layers, ep]  tokens sent from rank (first axis) to
                      rank (last axis) once per distinct destination; the diagonal counts
                      tokens with at least one local expert (no traffic). `copies` is the
                      same as a `[num_moe_layers, ep, ep]` view.
    expert_tokens: int64 [num_moe_layers, num_physical]  token copies each physical expert computes
    tokens_per_gpu: int64 [ep]  tokens whose attention runs on each rank (token2gpu counts)
    routed:        int64 [num_moe_layers, ep]  tokens that use an MoE layer (not skipped), per source
    sent:          int64 [ep, num_moe_layers]  counts summed over destinations (diagonal included)
    received:      int64 [num_moe_layers, ep]  counts summed over sources (diagonal included)
    """

    counts: np.ndarray
    expert_tokens: np.ndarray
    tokens_per_gpu: np.ndarray
    routed: np.ndarray
    sent: np.ndarray
    received: np.ndarray

    @property
    def copies(self) -> np.ndarray:
        return self.counts.transpose(1, 0, 2)

    @property
    def remote_copies(self) -> int:
        c = self.counts
        return int(c.sum() - np.trace(c, axis1=0, axis2=2).sum())


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


def _check_ids(ids: np.ndarray, E: int) -> bool:
    """InputError unless every id is in [-1, E); returns whether any is -1."""
    if ids.dtype.kind == "i" and ids.size and int(ids.view(f"u{ids.itemsize}").max()) < E:
        return False  # one pass: negative ids read as unsigned are huge, so all are in [0, E)
    lo, hi = int(ids.min(initial=0)), int(ids.max(initial=0))
    if lo < -1 or hi >= E:
        raise InputError("topk_ids", "", f"expert id {lo if lo < -1 else hi} outside [-1, {E})")
    return lo < 0


def route(topk_ids: np.ndarray, token2gpu: np.ndarray, phy2log: np.ndarray, ep: int) -> Dispatch:
    """Dispatch counts for `topk_ids [T, L, K]` (-1 = none), `token2gpu [T]`, `phy2log [L, P]`.

    Counting (and the id range check) runs over blocks of source ranks, so each block's data
    and histogram stay in cache; large routings count the blocks on a thread pool."""
    _, L, K = topk_ids.shape
    P = phy2log.shape[1]
    per_rank = P // ep
    E = int(phy2log.max()) + 1
    src = np.asarray(token2gpu, np.int64)
    phys, replicated = _physical(np.asarray(topk_ids), src, phy2log, per_rank, ep, E)
    tokens_per_gpu = np.bincount(src, minlength=ep).astype(np.int64)
    per_expert = per_rank > 1 or replicated
    copies = np.zeros((ep, L, ep), np.int64)
    expert_tokens = np.zeros((L, P), np.int64)
    routed = np.zeros((ep, L), np.int64)
    sent, received = np.zeros((ep, L), np.int64), np.zeros((L, ep), np.int64)
    block = max(1, 65536 // (L * ep))  # source ranks per histogram of <= 64k bins (in L2)
    count = partial(_count_block, L=L, P=P, K=K, ep=ep, block=block, per_rank=per_rank,
                    per_expert=per_expert, tokens_per_gpu=tokens_per_gpu)
    blocks = _source_blocks(phys, src, ep, block)
    # numpy's bincount and ufuncs release the GIL: large routings count blocks on threads;
    # each block writes its own rows, so the result does not depend on the thread count
    parts = _pool().map(count, blocks) if phys.size >= _PARALLEL_MIN else map(count, blocks)
    for s0, blk, sent_b, received_b, routed_b, experts_b in parts:
        nb = len(blk)
        copies[s0:s0 + nb] = blk
        sent[s0:s0 + nb] = sent_b
        received += received_b
        routed[s0:s0 + nb] = routed_b
        if experts_b is not None:
            expert_tokens += experts_b
    if not per_expert:  # dst is the physical expert: its tokens are the column sums
        expert_tokens = received
    return Dispatch(copies, expert_tokens, tokens_per_gpu, np.ascontiguousarray(routed.T),
                    sent, received)


def _count_block(item, *, L, P, K, ep, block, per_rank, per_expert, tokens_per_gpu):
    """One block of source ranks: (first rank, copies `[nb, L, ep]`, sent `[nb, L]`, received
    `[L, ep]`, routed `[nb, L]`, expert token counts `[L, P]` or None)."""
    s0, chunk, local = item
    nb = min(block, ep - s0)
    has_none = _check_ids(chunk, P)  # physical ids (== logical ones when contiguous)
    dst = chunk // per_rank if per_rank > 1 else chunk  # [..., L, K]; -1 stays negative
    valid = chunk >= 0 if has_none or per_rank > 1 else None
    if per_rank > 1:  # two experts of a token on one GPU: one copy (top-k ids are distinct)
        for k in range(1, K):
            for j in range(k):
                valid[..., k] &= dst[..., k] != dst[..., j]
    key = _keys(dst, local, L, ep)
    dump = nb * L * ep
    if valid is not None:
        key = np.where(valid, key, dump)
    blk = np.bincount(key.ravel(), minlength=dump + 1)[:dump].reshape(nb, L, ep)
    experts = None
    if per_expert:
        ok = chunk >= 0
        layer_off = np.arange(L, dtype=np.int64).reshape((1,) * (chunk.ndim - 2) + (L, 1))
        experts = np.bincount((layer_off * P + chunk)[ok], minlength=L * P).reshape(L, P)
    if has_none:
        used = (chunk >= 0).any(axis=-1).reshape(-1, L)  # [n, L]
        who = np.broadcast_to(local, chunk.shape).reshape(-1, L, chunk.shape[-1])[:, 0, 0]
        routed = np.stack([np.bincount(who, used[:, l], minlength=nb) for l in range(L)], axis=1)
    else:
        routed = np.broadcast_to(tokens_per_gpu[s0:s0 + nb, None], (nb, L))
    return s0, blk, blk.sum(axis=2), blk.sum(axis=0), routed, experts  # sums while in cache


_PARALLEL_MIN = 1 << 22  # routing entries (T * L * K) worth a thread pool (~4M: a few ms)
_POOL: dict = {}  # pid -> executor: a forked worker (whatif --jobs) must not reuse its parent's


def _pool() -> ThreadPoolExecutor:
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                        thread_name_prefix="specmoe-route")
    return _POOL[pid]


def _keys(dst: np.ndarray, local: np.ndarray, L: int, ep: int) -> np.ndarray:
    """Histogram keys `(local * L + layer) * ep + dst`, int64 `dst.shape` (`dst [..., L, K]`,
    `local` broadcastable to it). The offset is expanded over (L, K) first so the add runs
    over long contiguous rows (a broadcast over the last axis of K runs in loops of K), and
    the sum is int64 as np.bincount wants (an int32 key would be converted, another pass)."""
    K = dst.shape[-1]
    off = np.repeat(np.arange(L, dtype=np.int64) * ep, K)  # [L * K]
    if dst.ndim == 4:  # round-robin view `[T / ep, nb, L, K]`: source = column
        nb = local.size
        whole = (np.arange(nb, dtype=np.int64)[:, None] * (L * ep) + off).reshape(nb, L, K)
        return np.add(dst, whole, dtype=np.int64)
    base = local.reshape(-1, 1).astype(np.int64) * (L * ep)  # [n, 1]
    return np.add(dst.reshape(len(base), L * K), base + off, dtype=np.int64).reshape(dst.shape)


def _source_blocks(phys: np.ndarray, src: np.ndarray, ep: int, block: int):
    """Yield (first rank, routing of the block's tokens `[..., L, K]`, their rank - first rank
    broadcastable to it)."""
    T = len(src)
    if T % ep == 0 and np.array_equal(src, np.arange(T) % ep):  # round-robin: strided views
        view = phys.reshape(T // ep, ep, *phys.shape[1:])  # [T / ep, ep, L, K]
        for s0 in range(0, ep, block):
            nb = min(block, ep - s0)
            yield s0, view[:, s0:s0 + nb], np.arange(nb, dtype=np.int64).reshape(1, nb, 1, 1)
        return
    order = np.argsort(src, kind="stable")
    sorted_src = src[order]
    bounds = np.searchsorted(sorted_src, np.arange(0, ep + block, block))
    for i, s0 in enumerate(range(0, ep, block)):
        rows = order[bounds[i]:bounds[i + 1]]
        yield s0, phys[rows], (sorted_src[bounds[i]:bounds[i + 1]] - s0)[:, None, None]


def _physical(ids, src, phy2log, per_rank, ep, E) -> tuple[np.ndarray, bool]:
    """Physical expert of every (token, layer, k), `[T, L, K]` int32 (-1 = none), and whether
    any logical expert is replicated."""
    L = phy2log.shape[0]
    if phy2log.shape[1] == E and (phy2log == np.arange(E)).all():  # contiguous: phys == logical
        return ids, False
    _check_ids(ids, E)  # before the table lookups below
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
