"""`simulate_step`: the time of one decode or prefill step of an MoE model under EP.

The EP group is the cluster's first `ep` GPUs. Each token's attention runs on `token2gpu`
(DP attention) or, with TP attention, its node's GPUs share the heads of all the node's
tokens and exchange activations (all-gather before, reduce-scatter after: priced as one
all-reduce per layer). MoE layers run gate -> dispatch -> experts -> combine; dispatch sends
one copy per distinct remote GPU per token (dispatch.py), combine sends them back.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from specmoe.errors import InputError
from specmoe.simulator import engine
from specmoe.simulator.calibration import Calibration
from specmoe.simulator.compute import ComputeModel
from specmoe.simulator.dispatch import Dispatch, check_phy2log, default_phy2log, route
from specmoe.simulator.network import (Split, all_reduce, analytic_times, bytes_by_class,
                                       class_bytes, split_counts)
from specmoe.simulator.topology import LINK_CLASSES, Topology, build_topology
from specmoe.specs import ClusterSpec, ModelSpec, load_gpu

# Flow tier inside a step: completions within 1% of a collective's bottleneck time share one
# rate recomputation (flow.py); measured error on DeepSeek-V3 dispatches below 1% (docs/simulator.md).
FLOW_COALESCE = 1e-2

LAYER_COLUMNS = ("layer", "kind", "attention_us", "gate_us", "dispatch_us", "experts_us",
                 "combine_us", "total_us")


@dataclass
class StepResult:
    """One step. `layers`: one row per layer (LAYER_COLUMNS; a dense layer's FFN is in
    experts_us); `step_time_us` = sum of total_us + lm_head_us."""

    step_time_us: float
    layers: pd.DataFrame
    bytes_by_link_class: dict[str, float]
    remote_copies_per_token_layer: float
    moe_layer_us: float
    notes: list[str]
    lm_head_us: float = 0.0
    records: list = field(default_factory=list, repr=False)
    ep: int = 0

    def to_json(self) -> dict:
        layers = [{k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else
                       (int(v) if isinstance(v, (np.integer,)) else v)) for k, v in row.items()}
                  for row in self.layers.to_dict(orient="records")]
        return {"step_time_us": round(self.step_time_us, 3), "layers": layers,
                "bytes_by_link_class": {k: float(v) for k, v in sorted(self.bytes_by_link_class.items())},
                "remote_copies_per_token_layer": round(self.remote_copies_per_token_layer, 6),
                "moe_layer_us": round(self.moe_layer_us, 3), "lm_head_us": round(self.lm_head_us, 3),
                "notes": list(self.notes)}

    def timeline(self) -> pd.DataFrame:
        """Per-GPU busy intervals: columns gpu, micro_batch, layer, phase, start_us, end_us."""
        rows = []
        for r in self.records:
            per_gpu = r.per_gpu_s if r.per_gpu_s is not None else None
            n = len(per_gpu) if per_gpu is not None else self.ep
            for g in range(n):
                end = r.start_s + per_gpu[g] if per_gpu is not None else r.end_s
                rows.append((g, r.micro_batch, r.layer, r.phase, r.start_s * 1e6, end * 1e6))
        return pd.DataFrame(rows, columns=["gpu", "micro_batch", "layer", "phase", "start_us", "end_us"])


def _check_inputs(model, cluster, ep, topk_ids, token2gpu, phase, attention, network, context_len):
    if not 1 <= ep <= cluster.num_gpus:
        raise InputError("--ep", "", f"must be in [1, {cluster.num_gpus}] for cluster {cluster.name}")
    ids = np.asarray(topk_ids)
    if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError("topk_ids", "", f"expected integers [num_tokens, num_moe_layers, top_k], got {ids.shape}")
    if ids.shape[1] != model.num_moe_layers:
        raise InputError("topk_ids", "num_moe_layers",
                         f"routing has {ids.shape[1]} MoE layers, {model.name} has {model.num_moe_layers}")
    if ids.shape[0] == 0:
        raise InputError("topk_ids", "num_tokens", "no tokens")
    # the id range is checked by dispatch.route, block by block, while the data is in cache
    t2g = np.arange(ids.shape[0]) % ep if token2gpu is None else np.asarray(token2gpu)
    if t2g.shape != (ids.shape[0],) or not np.issubdtype(t2g.dtype, np.integer) \
            or t2g.min() < 0 or t2g.max() >= ep:
        raise InputError("token2gpu", "", f"expected {ids.shape[0]} ranks in [0, {ep})")
    for name, value, allowed in (("phase", phase, ("decode", "prefill")),
                                 ("attention", attention, ("dp", "tp")),
                                 ("network", network, ("analytic", "flow"))):
        if value not in allowed:
            raise InputError(f"--{name}", "", f"expected one of {', '.join(allowed)}, got {value!r}")
    if context_len < 1:
        raise InputError("--context", "", "must be >= 1")
    return ids, t2g.astype(np.int64)


def _micro_batches(t2g: np.ndarray, overlap: bool) -> list[np.ndarray]:
    """Token indices of each micro-batch: alternate a GPU's tokens between two when overlapping."""
    if not overlap:
        return [np.arange(len(t2g))]
    order = np.argsort(t2g, kind="stable")
    rank_in_gpu = np.empty(len(t2g), np.int64)
    starts = np.searchsorted(t2g[order], t2g[order])
    rank_in_gpu[order] = np.arange(len(t2g)) - starts
    return [np.flatnonzero(rank_in_gpu % 2 == m) for m in (0, 1)]


def _pad(m: np.ndarray, G: int) -> np.ndarray:
    """`[ep, ep]` -> `[G, G]` float bytes, diagonal zero (the EP group is the first ep GPUs)."""
    ep = m.shape[0]
    out = np.zeros((G, G))
    out[:ep, :ep] = m
    np.fill_diagonal(out, 0.0)
    return out


@functools.lru_cache(maxsize=16)
def _gpu_spec(name: str):
    """`load_gpu` parses YAML (about 2.5 ms, 5% of a 256-GPU analytic step); GPUSpec is frozen."""
    return load_gpu(name)


class _Context:
    """What every micro-batch of one step shares."""

    def __init__(self, model, cluster, ep, phy2log, phase, context_len, attention, network, cal):
        self.model, self.cluster, self.ep, self.phy2log = model, cluster, ep, phy2log
        self.phase, self.context_len, self.attention, self.network = phase, context_len, attention, network
        self.cal = cal
        self.topo: Topology = build_topology(cluster)
        self.cm = ComputeModel(model, _gpu_spec(cluster.gpu), cal)
        self.token_bytes = model.hidden_size * model.dtype_bytes
        self.tp = min(cluster.gpus_per_node, ep) if attention == "tp" else 1
        widths = np.asarray(model.expert_sizes, np.float64)
        self.phys_width = widths[phy2log]  # [L, P]
        if network == "flow":
            from specmoe.simulator.flow import FlowNetwork
            self.flow = FlowNetwork(self.topo, coalesce=FLOW_COALESCE)

    def comms(self, traffic, steps: int = 1, kind: str = "all_to_all",
              split: Split | None = None) -> list[engine.Comm]:
        """One Comm per collective: `traffic` is `[B, G, G]` bytes, or `(counts [ep, B, ep],
        bytes per count)`; `split` is its Split if already computed. Each flow-tier collective
        runs in its own simpy environment (collectives never overlap: the engine serialises them);
        the environments share one batched rate solver (flow.RateSolver)."""
        if self.network == "flow":
            if isinstance(traffic, tuple):
                counts, nbytes = traffic
                traffic = [_pad(counts[:, b, :] * nbytes, self.topo.num_gpus) for b in range(counts.shape[1])]
            return [engine.Comm(time_s=r.time_s) for r in self.flow.simulate_many(traffic, steps)]
        if split is None:
            split = split_counts(self.topo, *traffic) if isinstance(traffic, tuple) else traffic
        times = analytic_times(self.topo, split, steps, self.cal, kind)
        return [engine.Comm(time_s=float(t)) for t in times]

    def tp_traffic(self, tokens_per_gpu: np.ndarray) -> np.ndarray:
        """TP attention's activation exchange inside each node: `[1, G, G]` bytes."""
        G, tp = self.topo.num_gpus, self.tp
        m = np.zeros((G, G))
        for start in range(0, self.ep, tp):
            group = np.arange(start, min(start + tp, self.ep))
            nbytes = tokens_per_gpu[group].sum() * self.token_bytes
            m += all_reduce(G, group, nbytes).traffic
        return m[None]


def _layer_work(ctx: _Context, d: Dispatch, split: Split) -> list[engine.LayerWork]:
    """The LayerWork of every layer for one micro-batch (`split`: its dispatch traffic)."""
    m, cm, ep = ctx.model, ctx.cm, ctx.ep
    n = d.tokens_per_gpu.astype(np.float64)  # [ep]
    if ctx.tp > 1:
        group_tokens = np.repeat(np.add.reduceat(n, np.arange(0, ep, ctx.tp)), ctx.tp)[:ep]
        attn = cm.attention_us(group_tokens, ctx.context_len, ctx.phase, ctx.tp)
        tp_comm = ctx.comms(ctx.tp_traffic(n), 2 * (ctx.tp - 1), "all_reduce")[0]
    else:
        attn = cm.attention_us(n, ctx.context_len, ctx.phase)
        tp_comm = None
    gate = cm.gate_us(n)
    P = ctx.phy2log.shape[1]
    experts = cm.ffn_us(d.expert_tokens.reshape(-1, ep, P // ep),
                        ctx.phys_width.reshape(-1, ep, P // ep))  # [L_moe, ep]
    if m.num_shared_experts:
        experts = experts + cm.ffn_us(d.routed[:, :, None], [m.shared_expert_intermediate_size])
    dispatch = ctx.comms((d.counts, float(ctx.token_bytes)), split=split)
    combine = dispatch  # the transposed matrix on a topology with symmetric links: same time
    work = []
    for layer in range(m.num_layers):
        comm = {"attention_comm": tp_comm} if tp_comm is not None else {}
        if layer < m.num_dense_layers:
            ffn = cm.ffn_us(n[:, None], [m.dense_intermediate_size])
            work.append(engine.LayerWork({"attention": attn, "experts": ffn}, comm))
            continue
        i = layer - m.num_dense_layers
        comm.update(dispatch=dispatch[i], combine=combine[i])
        work.append(engine.LayerWork({"attention": attn, "gate": gate, "experts": experts[i]}, comm))
    return work


def _layers_frame(model: ModelSpec, records: list[engine.Record]) -> pd.DataFrame:
    L = model.num_layers
    cols = {c: np.zeros(L) for c in ("attention_us", "gate_us", "dispatch_us", "experts_us", "combine_us")}
    layer_end = np.zeros(L)
    for r in records:
        name = "attention_us" if r.phase == "attention_comm" else f"{r.phase}_us"
        cols[name][r.layer] += (r.end_s - r.start_s) * 1e6
        layer_end[r.layer] = max(layer_end[r.layer], r.end_s * 1e6)
    layer_end = np.maximum.accumulate(layer_end)
    total = np.diff(layer_end, prepend=0.0)
    kind = ["dense" if i < model.num_dense_layers else "moe" for i in range(L)]
    return pd.DataFrame({"layer": np.arange(L), "kind": kind, **cols, "total_us": total},
                        columns=list(LAYER_COLUMNS))


def simulate_step(model: ModelSpec, cluster: ClusterSpec, *, ep: int | None = None,
                  topk_ids: np.ndarray, token2gpu: np.ndarray | None = None,
                  phy2log: np.ndarray | None = None, phase: str = "decode",
                  context_len: int = 1024, attention: str = "dp", network: str = "analytic",
                  calibration: Calibration | None = None, overlap: bool = False,
                  seed: int = 0) -> StepResult:
    """Time one step of `model` on `cluster`'s first `ep` GPUs.

    topk_ids:  int [num_tokens, num_moe_layers, top_k], -1 = no expert (all -1: the token
               skips that layer's FFN)
    token2gpu: int [num_tokens], the EP rank where each token's attention runs (default
               round-robin)
    phy2log:   int [num_moe_layers, num_physical] (default contiguous)
    The engine is deterministic; `seed` is accepted for API stability and recorded nowhere.
    """
    ep = cluster.num_gpus if ep is None else int(ep)
    ids, t2g = _check_inputs(model, cluster, ep, topk_ids, token2gpu, phase, attention, network,
                             context_len)
    phy2log = default_phy2log(model, ep) if phy2log is None else check_phy2log(phy2log, model, ep)
    ctx = _Context(model, cluster, ep, phy2log, phase, context_len, attention, network, calibration)
    work, remote, by_cls = [], 0, np.zeros(len(LINK_CLASSES))
    for tok in _micro_batches(t2g, overlap):
        d = route(ids if len(tok) == len(ids) else ids[tok], t2g[tok], phy2log, ep)
        split = split_counts(ctx.topo, d.counts, ctx.token_bytes, d.sent, d.received)
        work.append(_layer_work(ctx, d, split))
        per_class = class_bytes(ctx.topo, split).sum(axis=0)  # dispatch bytes of all layers
        remote += round(per_class.sum() / ctx.token_bytes)
        by_cls += 2.0 * per_class  # combine sends the same bytes back
    records = engine.run(work)
    layers = _layers_frame(model, records)
    if ctx.tp > 1:
        tp_bytes = bytes_by_class(ctx.topo, ctx.tp_traffic(np.bincount(t2g, minlength=ep)))[0]
        by_cls = by_cls + tp_bytes * model.num_layers
    if phase == "decode":  # every token samples; in prefill only each prompt's last token
        heads = np.bincount(t2g, minlength=ep)
    else:
        heads = np.bincount(np.arange(max(1, -(-len(t2g) // context_len))) % ep, minlength=ep)
    lm_head = float(ctx.cm.lm_head_us(heads).max())
    moe = layers[layers.kind == "moe"]
    notes = _notes(ctx, overlap)
    res = StepResult(float(layers.total_us.sum()) + lm_head, layers,
                     dict(zip(LINK_CLASSES, map(float, by_cls))),
                     remote / (len(t2g) * model.num_moe_layers),
                     float(moe.total_us.mean()) if len(moe) else 0.0, notes, lm_head, records, ep)
    return res


def _notes(ctx: _Context, overlap: bool) -> list[str]:
    notes = list(ctx.cm.notes)
    net = ("network: analytic alpha-beta (bottleneck link per tier, NCCL floor "
           f"{ctx.cluster.collective_latency_us:g} us per collective)") if ctx.network == "analytic" \
        else ("network: flow tier (max-min fair sharing along graph paths; completions within "
              f"{FLOW_COALESCE:g} of a collective's bottleneck time batched)")
    notes.append(net)
    if ctx.cal is not None and ctx.cal.collectives and ctx.network == "analytic":
        notes.append("network: calibrated collective curves used where the bytes fall inside them")
    if ctx.ep < ctx.cluster.num_gpus:
        notes.append(f"ep={ctx.ep}: the EP group is GPUs 0..{ctx.ep - 1} of {ctx.cluster.num_gpus}")
    if ctx.tp > 1:
        notes.append(f"attention: tensor-parallel over {ctx.tp} GPUs per node")
    if overlap:
        notes.append("overlap: two micro-batches, communication overlapped with compute")
    return notes
