"""Price final candidates with the simulator (specmoe.simulator.step.simulate_step).

The simulator takes one source GPU per token for the whole step (`token2gpu [T]`). A TP
attention schedule moves tokens per layer (`[T, L]`), so we price each MoE layer on its own
(a one-MoE-layer copy of the model with that layer's sources) and splice those layer times
into the full step priced with the first layer's sources.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def price(model, cluster, ep: int, topk_ids: np.ndarray, phy2log: np.ndarray,
          token2gpu: np.ndarray, attention: str, phase: str, seed: int = 0) -> dict:
    """predicted_moe_layer_us, step_time_us and cross-GPU bytes per step for one batch.

    topk_ids `[T, L, K]`; token2gpu `[T]` or `[T, L]`."""
    from specmoe.simulator.step import simulate_step

    phase = "prefill" if phase == "prefill" else "decode"
    kw = dict(ep=ep, phase=phase, attention=attention, seed=seed)
    first = token2gpu if token2gpu.ndim == 1 else token2gpu[:, 0]
    full = simulate_step(model, cluster, topk_ids=topk_ids, token2gpu=first, phy2log=phy2log, **kw)
    moe_rows = full.layers[full.layers.kind == "moe"]
    step_us, moe_us = full.step_time_us, full.moe_layer_us
    bytes_step = float(sum(full.bytes_by_link_class.values()))
    if token2gpu.ndim == 2:
        one = dataclasses.replace(model, num_layers=model.num_dense_layers + 1)
        dp_kw = dict(kw, attention="dp")  # dispatch/combine bytes alone (no TP-attention bytes)
        moe_bytes_full = _total(simulate_step(model, cluster, topk_ids=topk_ids, token2gpu=first,
                                              phy2log=phy2log, **dp_kw))
        per_layer, moe_bytes = [], 0.0
        for l in range(topk_ids.shape[1]):
            args = dict(topk_ids=topk_ids[:, l:l + 1], token2gpu=token2gpu[:, l],
                        phy2log=phy2log[l:l + 1])
            per_layer.append(simulate_step(one, cluster, **args, **kw).moe_layer_us)
            moe_bytes += _total(simulate_step(one, cluster, **args, **dp_kw))
        step_us += float(np.sum(per_layer) - moe_rows.total_us.sum())
        moe_us = float(np.mean(per_layer))
        bytes_step += moe_bytes - moe_bytes_full
    return dict(predicted_moe_layer_us=round(moe_us, 3), step_time_us=round(step_us, 3),
                cross_gpu_bytes_per_step=round(bytes_step, 1))


def _total(res) -> float:
    return float(sum(res.bytes_by_link_class.values()))
