"""The simpy engine of one step: micro-batches walk the layers, sharing a compute stream and a
communication stream.

Each layer is attention -> gate -> dispatch -> experts -> combine (dense layers: attention ->
FFN). Compute phases end when the slowest GPU ends (the EP group runs in lockstep, as the
collectives between phases synchronise it). With two micro-batches, one micro-batch's
collectives overlap the other's compute (DeepSeek's two-micro-batch overlap); with one they
run back to back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
import simpy

COMPUTE_PHASES = ("attention", "gate", "experts")
COMM_PHASES = ("attention_comm", "dispatch", "combine")


@dataclass
class LayerWork:
    """What one micro-batch does in one layer.

    compute: phase -> float [ep] microseconds per GPU (attention, gate, experts)
    comm:    phase -> a `Comm` (attention_comm for TP attention, dispatch, combine)
    """

    compute: dict[str, np.ndarray]
    comm: dict[str, "Comm"] = field(default_factory=dict)


@dataclass
class Comm:
    """A collective and its time (priced by network.py or, in its own simpy run, flow.py)."""

    time_s: float = 0.0


@dataclass
class Record:
    micro_batch: int
    layer: int
    phase: str
    start_s: float
    end_s: float
    per_gpu_s: np.ndarray | None  # compute phases: each GPU's busy time


def run(work: list[list[LayerWork]]) -> list[Record]:
    """Simulate micro-batches `work[m][layer]`; returns one Record per phase executed."""
    env = simpy.Environment()
    shared = len(work) > 1  # one micro-batch never waits for a stream: skip the resources
    compute = simpy.Resource(env, capacity=1) if shared else None
    comm = simpy.Resource(env, capacity=1) if shared else None
    records: list[Record] = []

    def compute_phase(m, layer, phase, per_gpu_us):
        req = compute.request() if shared else None
        if req is not None:
            yield req
        start = env.now
        yield env.timeout(float(per_gpu_us.max(initial=0.0)) * 1e-6)
        records.append(Record(m, layer, phase, start, env.now, per_gpu_us * 1e-6))
        if req is not None:
            compute.release(req)

    def comm_phase(m, layer, phase, c: Comm):
        req = comm.request() if shared else None
        if req is not None:
            yield req
        start = env.now
        yield env.timeout(c.time_s)
        records.append(Record(m, layer, phase, start, env.now, None))
        if req is not None:
            comm.release(req)

    def micro_batch(m, layers):
        for i, lw in enumerate(layers):
            for phase in ("attention", "attention_comm", "gate", "dispatch", "experts", "combine"):
                if phase in lw.compute:
                    yield from compute_phase(m, i, phase, lw.compute[phase])
                elif phase in lw.comm:
                    yield from comm_phase(m, i, phase, lw.comm[phase])

    for m, layers in enumerate(work):
        env.process(micro_batch(m, layers))
    env.run()
    return records
