"""A replayed decode step with no host synchronisation, captured as CUDA graphs.

Under routing replay the host knows every token's experts before the step, so it knows each
layer's dispatch: which local tokens go to which rank (`t_idx`), their slot/weight metadata,
and the split sizes of both all-to-alls (send and receive counts; the count exchange the live
path does, ep.EPMoE.dispatch, is not needed). Every phase is then a fixed-shape sequence of
kernels and NCCL calls, which we capture once per (layer, phase) into a CUDA graph (one shared
memory pool, replayed in capture order) and replay with CUDA events between the graphs. This
times the GPU's work instead of Python's kernel launches (about 30 us each on the lent H200
machine, which made the eager runtime host-bound: benchmarks/results/h200-run1/README.md).
"""
from __future__ import annotations

import gc

import numpy as np
import torch
import torch.distributed as dist

from specmoe.runtime.ep import EPLayout
from specmoe.runtime.model import KVCache, MoEModel


def layer_dispatch(phys_l: np.ndarray, token2gpu: np.ndarray, rank: int, spr: int, ep: int):
    """Host plan of one MoE layer for `rank`: phys_l [N, k] global physical ids (-1 none).

    Returns t_idx [S] (local token index of each sent row, rows ordered by destination),
    slots int32 [S, k] (slot on the destination or -1), mask [S, k] (which of the token's
    weights go with the row), send counts [ep], receive counts [ep].
    """
    dst = np.where(phys_l >= 0, phys_l // spr, -1)  # [N, k]
    hit = np.zeros((len(phys_l), ep), bool)
    for j in range(phys_l.shape[1]):
        ok = dst[:, j] >= 0
        hit[np.flatnonzero(ok), dst[ok, j]] = True
    mine = np.flatnonzero(token2gpu == rank)
    local = {int(t): i for i, t in enumerate(mine)}
    rows = [(d, t) for d in range(ep) for t in mine if hit[t, d]]
    t_glob = np.array([t for _, t in rows], np.int64)
    d_of = np.array([d for d, _ in rows], np.int64)
    t_idx = np.array([local[int(t)] for t in t_glob], np.int64)
    mask = dst[t_glob] == d_of[:, None] if len(rows) else np.zeros((0, phys_l.shape[1]), bool)
    slots = np.where(mask, phys_l[t_glob] - d_of[:, None] * spr, -1).astype(np.int32)
    send = np.array([hit[mine, d].sum() for d in range(ep)], np.int64)
    recv = np.array([hit[token2gpu == s, rank].sum() for s in range(ep)], np.int64)
    return t_idx, slots, mask, send, recv


def capture_graphs(fns) -> list:
    """One CUDA graph per function, captured in order on a side stream into one shared memory
    pool (so they must be replayed in the same order). capture_begin/end directly: the
    torch.cuda.graph context would gc.collect() and empty the cache before every capture.
    Thread-local capture mode lets NCCL's watchdog thread query its events meanwhile.

    Python's cyclic garbage collector is run first and held off during the captures: a
    collection inside a capture can destroy an earlier case's graphs (cudaGraphExecDestroy is
    not permitted while capturing), which invalidates the capture and leaves the CUDA RNG in
    capture state, so the next random fill fails with "Offset increment outside graph capture"
    (H200 run 2, EP=1)."""
    gc.collect()
    pool = torch.cuda.graph_pool_handle()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graphs = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.stream(side):
            for fn in fns:
                g = torch.cuda.CUDAGraph()
                g.capture_begin(pool=pool, capture_error_mode="thread_local")
                try:
                    fn()
                finally:
                    g.capture_end()
                graphs.append(g)
    finally:
        if was_enabled:
            gc.enable()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    return graphs


class ReplayStep:
    """Segments (layer, phase, fn) of one decode step on one rank; fn mutates `self.buf`."""

    def __init__(self, model: MoEModel, layout: EPLayout, rank: int, device, phys: np.ndarray,
                 weights: np.ndarray, token2gpu: np.ndarray, cache: KVCache, context: int,
                 group=None):
        self.model, self.layout, self.rank, self.group = model, layout, rank, group
        self.cache, self.context, self.device = cache, context, device
        self.ep = layout.ep
        mine = np.flatnonzero(token2gpu == rank)
        self.b = len(mine)
        g = torch.Generator(device=device).manual_seed(rank)
        ids = torch.randint(0, model.cfg.vocab_size, (self.b, 1), device=device, generator=g)
        self.buf: dict = {"ids": ids}
        self.plans, self.graphs, self.capture_error = [], None, None
        self.bytes_sent, self.local_pairs, self.pairs = 0, 0, 0
        row_bytes = model.cfg.hidden_size * 2
        for i in range(phys.shape[1]):
            t_idx, slots, mask, send, recv = layer_dispatch(phys[:, i], token2gpu, rank,
                                                            layout.slots_per_rank, self.ep)
            w = np.where(mask, weights[mine][t_idx, i] if len(t_idx) else 0.0, 0.0).astype(np.float32)
            meta = np.concatenate([slots, w.view(np.int32)], 1)  # [S, 2k] int32
            self.plans.append({"t_idx": torch.as_tensor(t_idx, device=device),
                               "meta": torch.as_tensor(meta, device=device),
                               "send": send.tolist(), "recv": recv.tolist()})
            others = [d for d in range(self.ep) if d != rank]
            self.bytes_sent += int(send[others].sum() + recv[others].sum()) * row_bytes
            p = phys[mine, i]
            self.local_pairs += int(((p >= 0) & (p // layout.slots_per_rank == rank)).sum())
            self.pairs += int((p >= 0).sum())
        self.segments = self._segments()

    def _a2a(self, x, out_rows, out_splits, in_splits):
        if self.ep == 1:
            return x
        out = x.new_empty(out_rows, x.shape[1])
        dist.all_to_all_single(out, x, out_splits, in_splits, group=self.group)
        return out

    def _segments(self):
        m, buf, cfg = self.model, self.buf, self.model.cfg
        segs = []

        def embed():
            self.cache.length = self.context
            pos = torch.full((self.b, 1), self.context, device=self.device)
            x = m.embed_tokens(buf["ids"])
            from specmoe.runtime.model import rope_cos_sin
            buf["cos"], buf["sin"] = rope_cos_sin(pos, cfg.rope_dim or cfg.head_dim, cfg.rope_theta,
                                                  x.dtype, cfg.yarn)
            buf["x"] = x
        segs.append((-1, "embed", embed))
        for li, layer in enumerate(m.layers):
            segs.append((li, "attention", self._attention(layer)))
            if layer.is_moe:
                segs += self._moe(li, layer.mlp, self.plans[m.moe_index(li)])
            else:
                def ffn(layer=layer):
                    buf["x"] = buf["x"] + layer.mlp(buf["h"]).view_as(buf["x"])
                segs.append((li, "ffn", ffn))

        def head():
            buf["logits"] = m.lm_head(m.norm(buf["x"])).float()
        segs.append((-1, "head", head))
        return segs

    def _attention(self, layer):
        buf = self.buf

        def fn():
            x = buf["x"] + layer.self_attn(layer.input_layernorm(buf["x"]), buf["cos"], buf["sin"], self.cache)
            buf["x"] = x
            buf["h"] = layer.post_attention_layernorm(x).reshape(self.b, self.model.cfg.hidden_size)
        return fn

    def _moe(self, li, block, plan):
        buf, h, k = self.buf, self.model.cfg.hidden_size, self.model.cfg.top_k

        def gate():
            buf["gate"] = block.gate(buf["h"])  # computed and timed; replay decides

        def dispatch():
            x = buf["h"]
            meta = plan["meta"].view(x.dtype)  # [S, 2k] int32 -> [S, 2k * 4 / itemsize]
            send = torch.cat([x.index_select(0, plan["t_idx"]), meta], 1)
            buf["recv"] = self._a2a(send, sum(plan["recv"]), plan["recv"], plan["send"])

        def experts():
            r = buf["recv"]
            meta = r[:, h:].contiguous().view(torch.int32).reshape(r.shape[0], 2 * k)
            buf["y"] = block.experts(r[:, :h], meta[:, :k], meta[:, k:].view(torch.float32))

        def combine():
            back = self._a2a(buf["y"], sum(plan["send"]), plan["send"], plan["recv"])
            out = torch.zeros(self.b, h, dtype=torch.float32, device=self.device)
            out.index_add_(0, plan["t_idx"], back.float())
            buf["moe"] = out.to(buf["h"].dtype)

        def shared():
            s = block.shared(buf["h"])
            out = buf["moe"] if s is None else buf["moe"] + s
            buf["x"] = buf["x"] + out.view_as(buf["x"])
        return [(li, "gate", gate), (li, "dispatch", dispatch), (li, "experts", experts),
                (li, "combine", combine), (li, "shared", shared)]

    def capture(self) -> bool:
        """Run every segment once eagerly, then capture each into a CUDA graph. False (and
        eager replay) if capture fails."""
        for _, _, fn in self.segments:
            fn()
        torch.cuda.synchronize()
        try:
            self.graphs = capture_graphs([fn for _, _, fn in self.segments])
            return True
        except RuntimeError as e:
            self.graphs, self.capture_error = None, str(e).splitlines()[0][:300]
            torch.cuda.synchronize()
            return False

    def close(self) -> None:
        """Drop the graphs, segments and buffers now. The segments' closures refer back to
        self (a reference cycle), so without this the graphs live until a cyclic collection,
        which may come inside a later capture (see capture_graphs)."""
        self.graphs, self.segments, self.buf, self.plans = None, [], {}, []

    def run_eager(self) -> torch.Tensor:
        """One step without graphs or timing; logits float32 [B, 1, vocab]."""
        for _, _, fn in self.segments:
            fn()
        return self.buf["logits"]

    def run_timed(self) -> list[tuple[int, str, float]]:
        """One step; (layer, phase, us) per segment from CUDA events between segments."""
        evs = [torch.cuda.Event(enable_timing=True) for _ in range(len(self.segments) + 1)]
        evs[0].record()
        for j, (_, _, fn) in enumerate(self.segments):
            if self.graphs is not None:
                self.graphs[j].replay()
            else:
                fn()
            evs[j + 1].record()
        evs[-1].synchronize()
        return [(li, ph, evs[j].elapsed_time(evs[j + 1]) * 1e3)
                for j, (li, ph, _) in enumerate(self.segments)]
