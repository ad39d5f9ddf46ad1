"""Baseline placements and the checks every `phy2log` must pass.

phy2log: int `[num_moe_layers, num_physical_experts]`; physical slot p lives on EP rank
`p // (num_physical // ep)` (SGLang, vLLM and DeepSeek EPLB convention).
"""
from __future__ import annotations

import numpy as np


def check_sizes(num_experts: int, num_redundant: int, ep: int) -> int:
    """Number of physical slots; raises ValueError when the layout is impossible."""
    num_physical = num_experts + num_redundant
    if num_redundant < 0:
        raise ValueError(f"num_redundant_experts must be >= 0, got {num_redundant}")
    if num_physical % ep:
        raise ValueError(f"num_experts + num_redundant_experts = {num_physical} is not divisible "
                         f"by the EP size {ep}")
    if num_physical < ep:
        raise ValueError(f"{num_physical} physical experts cannot fill {ep} EP ranks")
    return num_physical


def contiguous(num_layers: int, num_experts: int, ep: int, num_redundant: int = 0) -> np.ndarray:
    """Expert e in slot e; redundant slots (if any) repeat experts 0, 1, ... in order.

    Returns `[num_layers, num_experts + num_redundant]`.
    """
    num_physical = check_sizes(num_experts, num_redundant, ep)
    row = np.arange(num_physical) % num_experts
    return np.tile(row, (num_layers, 1)).astype(np.int64)


def round_robin(num_layers: int, num_experts: int, ep: int, num_redundant: int = 0) -> np.ndarray:
    """Expert e on rank e % ep; replica r (of expert r % E) on the next rank in turn that has
    room and does not hold that expert yet. Returns `[L, num_physical]`."""
    num_physical = check_sizes(num_experts, num_redundant, ep)
    per_rank = num_physical // ep
    ranks: list[list[int]] = [[] for _ in range(ep)]
    for i in range(num_physical):
        e = i % num_experts
        for step in range(ep):
            g = (i + step) % ep
            if len(ranks[g]) < per_rank and e not in ranks[g]:
                break
        else:  # only when a rank must hold an expert twice (more replicas than ranks)
            g = next(g for g in range(ep) if len(ranks[g]) < per_rank)
        ranks[g].append(e)
    return np.tile(np.concatenate(ranks), (num_layers, 1)).astype(np.int64)


def expert2rank_from(phy2log: np.ndarray, num_experts: int, ep: int) -> np.ndarray:
    """Rank of the first replica of each logical expert, `[L, num_experts]`."""
    L, P = phy2log.shape
    ranks = np.arange(P) // (P // ep)
    out = np.full((L, num_experts), -1, np.int64)
    for layer in range(L):
        # reversed so that the first (lowest) slot wins
        out[layer, phy2log[layer, ::-1]] = ranks[::-1]
    return out


def from_groups(expert2rank: np.ndarray, ep: int, extra: list[list[list[int]]] | None = None
                ) -> np.ndarray:
    """Build phy2log from a rank per expert plus optional replicas per rank.

    expert2rank: `[L, E]`; extra[l][g]: logical experts replicated on rank g at layer l.
    Each rank's slots are its experts in ascending id order, then its replicas.
    """
    L, _ = expert2rank.shape
    rows = []
    for layer in range(L):
        slots = []
        for g in range(ep):
            mine = np.flatnonzero(expert2rank[layer] == g).tolist()
            slots.append(mine + (extra[layer][g] if extra else []))
        if len({len(s) for s in slots}) != 1:
            raise ValueError(f"layer {layer}: ranks hold unequal numbers of experts "
                             f"{[len(s) for s in slots]}")
        rows.append(np.concatenate(slots))
    return np.asarray(rows, np.int64)


def check_phy2log(phy2log: np.ndarray, num_experts: int, ep: int) -> str | None:
    """The export rules; returns a problem description or None when the map is valid."""
    a = np.asarray(phy2log)
    if a.ndim != 2:
        return f"expected [num_layers, num_physical_experts], got shape {a.shape}"
    if not np.issubdtype(a.dtype, np.integer):
        return f"expected integers, got {a.dtype}"
    if a.shape[1] % ep:
        return f"num_physical_experts {a.shape[1]} is not divisible by the EP size {ep}"
    if a.size and (a.min() < 0 or a.max() >= num_experts):
        return f"logical expert ids must lie in [0, {num_experts})"
    for layer, row in enumerate(a):
        missing = np.setdiff1d(np.arange(num_experts), row)
        if len(missing):
            return f"layer {layer}: logical experts {missing[:8].tolist()} have no slot"
        per_rank = row.reshape(ep, -1)
        for g, slots in enumerate(per_rank):
            if len(np.unique(slots)) != len(slots):
                return f"layer {layer}: rank {g} holds the same expert twice"
    return None
