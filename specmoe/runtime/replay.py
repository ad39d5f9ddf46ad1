"""Routing replay and recording.

Replay forces the gate's decisions from a RoutingTrace, so a model with random weights at a
real model's size routes like the real model (the gate still runs, so its time counts).
Recording keeps the gate's decisions and writes them in the routing-trace .npz format.
"""
from __future__ import annotations

import numpy as np
import torch

from specmoe.errors import InputError
from specmoe.traces.routing import RoutingTrace


class RoutingReplay:
    """phys [T, L, k] (physical slots, -1 none) and weights [T, L, k] for the local tokens."""

    def __init__(self, phys: np.ndarray, weights: np.ndarray, device):
        self.phys = torch.as_tensor(np.ascontiguousarray(phys), dtype=torch.long, device=device)
        self.weights = torch.as_tensor(np.ascontiguousarray(weights), dtype=torch.float32, device=device)
        self._layers = [(self.phys[:, i].contiguous(), self.weights[:, i].contiguous())
                        for i in range(self.phys.shape[1])]

    def __call__(self, moe_layer: int, x):
        return self._layers[moe_layer]


def check_trace_fits(trace: RoutingTrace, num_experts: int, num_moe_layers: int, source) -> None:
    if trace.num_experts != num_experts:
        raise InputError(source, "meta.num_experts",
                         f"trace has {trace.num_experts} experts, the model {num_experts}")
    if trace.num_layers < num_moe_layers:
        raise InputError(source, "topk_ids",
                         f"trace has {trace.num_layers} MoE layers, the model {num_moe_layers}")


def decode_rows(trace: RoutingTrace, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n trace rows standing for decode tokens, and the row of each one's previous token
    (same sequence, position - 1), which a request-level predictor may look at. `[n]`, `[n]`."""
    key = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(trace.seq_id, trace.position))}
    prev = np.array([key.get((int(s), int(p) - 1), -1) for s, p in zip(trace.seq_id, trace.position)])
    ok = np.flatnonzero(prev >= 0)
    if ok.size == 0:
        raise InputError("trace", "position", "no token has its previous token in the trace")
    rows = rng.choice(ok, size=n, replace=n > ok.size)
    return rows, prev[rows]


class Recorder:
    """Collects the gate's choices per MoE layer; `trace()` builds a RoutingTrace."""

    def __init__(self):
        self.ids: dict[int, list] = {}
        self.w: dict[int, list] = {}

    def add(self, moe_layer: int, ids, w) -> None:
        self.ids.setdefault(moe_layer, []).append(ids.detach().cpu().numpy())
        self.w.setdefault(moe_layer, []).append(w.detach().float().cpu().numpy())

    def trace(self, model: str, num_experts: int, phase: str = "decode") -> RoutingTrace:
        layers = sorted(self.ids)
        ids = np.stack([np.concatenate(self.ids[i]) for i in layers], axis=1).astype(np.int32)
        w = np.stack([np.concatenate(self.w[i]) for i in layers], axis=1).astype(np.float32)
        n = ids.shape[0]
        meta = {"model": model, "num_experts": num_experts, "top_k": int(ids.shape[2]),
                "phase": phase, "source": "specmoe.runtime"}
        return RoutingTrace(ids, w, np.zeros(n, np.int64), np.arange(n, dtype=np.int64), meta)
