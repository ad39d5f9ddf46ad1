"""Token (request) schedules: which GPU each decode token's request runs on (`token2gpu`).

Shuffling is lossless: a token's output does not depend on the GPU that runs its attention
(tests/runtime/test_ep.py). Policies:
  - `round_robin`: token t on GPU t % ep (no prediction);
  - `request_affinity` (speculative token shuffling, DESIGN.md): predict the token's experts
    from the previous token of its request (all MoE layers) and put it on the GPU that holds
    most of them, with `tokens_per_gpu` slots per GPU so attention stays balanced; the most
    confident tokens choose first.
"""
from __future__ import annotations

import numpy as np

from specmoe.errors import InputError

POLICIES = ("round_robin", "request_affinity")


def round_robin(num_tokens: int, ep: int) -> np.ndarray:
    return np.arange(num_tokens) % ep


def affinity(pred_ids: np.ndarray, phy2log: np.ndarray, ep: int) -> np.ndarray:
    """Experts of each token on each rank, `[T, ep]`, from predicted ids `[T, L, k]`.

    A replicated expert counts for every rank that holds it.
    """
    t, layers, _ = pred_ids.shape
    spr = phy2log.shape[1] // ep
    aff = np.zeros((t, ep))
    for layer in range(layers):
        held = np.zeros((phy2log[layer].max() + 1, ep))  # [E, ep] expert on rank
        held[phy2log[layer], np.arange(phy2log.shape[1]) // spr] = 1
        ids = pred_ids[:, layer]
        valid = ids >= 0
        aff += (held[np.where(valid, ids, 0)] * valid[..., None]).sum(1)
    return aff


def request_affinity(pred_ids: np.ndarray, phy2log: np.ndarray, ep: int,
                     tokens_per_gpu: int) -> np.ndarray:
    """Capacity-constrained greedy: token2gpu `[T]` with at most tokens_per_gpu per GPU."""
    aff = affinity(pred_ids, phy2log, ep)
    t = aff.shape[0]
    if t > ep * tokens_per_gpu:
        raise InputError("token_schedule", "tokens_per_gpu",
                         f"{t} tokens do not fit {ep} GPUs x {tokens_per_gpu}")
    srt = np.sort(aff, axis=1)
    margin = srt[:, -1] - (srt[:, -2] if ep > 1 else 0)
    order = np.lexsort((np.arange(t), -margin))  # most confident first, ties by index
    free = np.full(ep, tokens_per_gpu)
    out = np.empty(t, dtype=np.int64)
    for i in order:
        prefs = np.lexsort((np.arange(ep), -aff[i]))
        g = next(g for g in prefs if free[g] > 0)
        out[i] = g
        free[g] -= 1
    return out


def token2gpu(policy: str, num_tokens: int, ep: int, *, pred_ids=None, phy2log=None,
              tokens_per_gpu: int | None = None) -> np.ndarray:
    if policy in ("round_robin", "none", None):
        return round_robin(num_tokens, ep)
    if policy == "request_affinity":
        return request_affinity(pred_ids, phy2log, ep, tokens_per_gpu or -(-num_tokens // ep))
    raise InputError("token_schedule", "policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
