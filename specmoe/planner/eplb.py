"""An EPLB-style load balancer, written from the published algorithm (deepseek-ai/EPLB).

Three steps per MoE layer, all on the measured per-expert load:
1. replication: add replicas one at a time, each to the logical expert with the highest load
   per replica (load / replica count);
2. greedy balanced packing: items sorted by decreasing weight, each put into the lightest
   pack that still has room (every pack ends with the same number of items);
3. hierarchical variant: pack expert groups onto nodes first (so that group-limited routing
   stays inside a node), replicate within each node, then pack the node's physical experts
   onto its GPUs. Without usable groups the global variant is one node holding everything.
We never put two replicas of one expert on the same GPU (a vLLM expert map cannot express it).
"""
from __future__ import annotations

import numpy as np


def replicate(weight: np.ndarray, num_physical: int, max_replicas: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Replicate the expert with the highest load per replica until `num_physical` slots;
    an expert never gets more than `max_replicas` copies (one per GPU is the useful most).

    weight: `[num_logical]`. Returns phy2log `[num_physical]` (logical ids first, then the
    replicas in the order they were added) and logcnt `[num_logical]` (replicas per expert).
    """
    n = len(weight)
    if num_physical < n:
        raise ValueError(f"num_physical {num_physical} < num_logical {n}")
    phy2log = list(range(n))
    logcnt = np.ones(n, np.int64)
    w = np.asarray(weight, np.float64)
    for _ in range(num_physical - n):
        per = w / logcnt
        if max_replicas is not None:
            per = np.where(logcnt < max_replicas, per, -np.inf)
        j = int(np.argmax(per))  # ties: lowest id
        phy2log.append(j)
        logcnt[j] += 1
    return np.asarray(phy2log, np.int64), logcnt


def balanced_packing(weight: np.ndarray, num_packs: int, labels: np.ndarray | None = None
                     ) -> np.ndarray:
    """Pack `weight [n]` items into `num_packs` packs of n / num_packs items each.

    Items are taken heaviest first (stable on ties) and each goes to the lightest pack with
    room; when `labels [n]` is given, a pack already holding an item of the same label is
    skipped if any other pack has room. Returns pack `[n]`.
    """
    n = len(weight)
    if n % num_packs:
        raise ValueError(f"{n} items do not split evenly into {num_packs} packs")
    cap = n // num_packs
    pack = np.full(n, -1, np.int64)
    pack_w = np.zeros(num_packs)
    pack_n = np.zeros(num_packs, np.int64)
    held: list[set] = [set() for _ in range(num_packs)]
    for i in np.argsort(-np.asarray(weight, np.float64), kind="stable"):
        room = pack_n < cap
        if labels is not None:
            fresh = room & np.array([labels[i] not in h for h in held])
            room = fresh if fresh.any() else room
        p = int(np.argmin(np.where(room, pack_w, np.inf)))
        pack[i] = p
        pack_w[p] += weight[i]
        pack_n[p] += 1
        if labels is not None:
            held[p].add(labels[i])
    return pack


def rebalance_layer(weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int,
                    num_gpus: int) -> np.ndarray:
    """phy2log `[num_physical]` for one layer; hierarchical when groups divide into nodes."""
    E = len(weight)
    if num_groups <= 0 or E % num_groups or num_groups % num_nodes or num_physical % num_gpus \
            or num_gpus % num_nodes:
        num_groups, num_nodes = 1, 1  # global policy
    group_size = E // num_groups
    # 1. expert groups -> nodes
    group_w = weight.reshape(num_groups, group_size).sum(1)
    group2node = balanced_packing(group_w, num_nodes)
    phy_per_node, gpus_per_node = num_physical // num_nodes, num_gpus // num_nodes
    slots_per_gpu = num_physical // num_gpus
    out = []
    for node in range(num_nodes):
        experts = np.concatenate([np.arange(g * group_size, (g + 1) * group_size)
                                  for g in np.flatnonzero(group2node == node)])
        # 2. replicate inside the node
        local_phy, logcnt = replicate(weight[experts], phy_per_node, gpus_per_node)
        phy_w = weight[experts][local_phy] / logcnt[local_phy]
        # 3. physical experts -> GPUs of the node
        gpu = balanced_packing(phy_w, gpus_per_node, labels=local_phy)
        for g in range(gpus_per_node):
            mine = np.flatnonzero(gpu == g)
            mine = mine[np.argsort(experts[local_phy[mine]], kind="stable")]
            assert len(mine) == slots_per_gpu
            out.append(experts[local_phy[mine]])
    return np.concatenate(out).astype(np.int64)


def rebalance(weight: np.ndarray, num_physical: int, ep: int, num_groups: int = 1,
              num_nodes: int = 1) -> np.ndarray:
    """EPLB placement for every layer.

    weight: `[num_layers, num_logical]` measured load; returns phy2log
    `[num_layers, num_physical]`. Rank g owns slots [g * P / ep, (g + 1) * P / ep).
    """
    weight = np.asarray(weight, np.float64)
    return np.stack([rebalance_layer(w, num_physical, num_groups, num_nodes, ep) for w in weight])
