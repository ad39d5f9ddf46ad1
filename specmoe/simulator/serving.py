"""Serving: continuous batching of a request trace over memoised step costs.

Iteration-level scheduling (Orca / vLLM without chunked prefill): whenever waiting requests
fit (batch slots, KV capacity, a prefill token budget), one prefill iteration runs their
prompts and yields their first tokens; otherwise one decode iteration advances every running
request. KV capacity = EP GPUs' memory minus the weights and a reserve, in tokens; a request
reserves its prompt plus its output when admitted (no preemption).

Speed: the network model is not run per iteration. `StepCosts` memoises `simulate_step` on a
grid of (batch tokens, context) points, each with routing sampled from the routing trace
(seeded), and interpolates bilinearly between grid points (decode cost is affine in context:
KV reads; and piecewise affine in batch). Between events (an arrival that can be admitted,
a request finishing) decode iterations are advanced in one jump. docs/simulator.md reports
the approximation's measured error.

Speculative decoding plugs in through `Decoder`: one iteration's time for a batch, and how
many tokens each request advances (1 for plain decoding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from specmoe.errors import InputError
from specmoe.simulator.routing import routing_for
from specmoe.specs import ClusterSpec, ModelSpec, load_gpu
from specmoe.traces.requests import RequestTrace
from specmoe.traces.routing import RoutingTrace

BATCH_GRID = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
              2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)
CONTEXT_GRID = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class StepCosts:
    """Memoised step times in seconds: `decode_s(tokens, mean_context)`, `prefill_s(tokens,
    context)`. Grid points are simulate_step results; between them, bilinear interpolation."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, ep: int,
                 routing: RoutingTrace | None = None, seed: int = 0, **step_kw):
        self.model, self.cluster, self.ep, self.routing, self.seed = model, cluster, ep, routing, seed
        self.step_kw = step_kw
        self._memo: dict[tuple[str, int, int], float] = {}
        self.notes: list[str] = []

    def _point(self, phase: str, tokens: int, context: int) -> float:
        key = (phase, tokens, context)
        if key not in self._memo:
            from specmoe.simulator.step import simulate_step
            n = max(tokens, 1)
            ids, note = routing_for(self.model, self.routing, n, self.seed * 1_000_003 + n)
            res = simulate_step(self.model, self.cluster, ep=self.ep, topk_ids=ids, phase=phase,
                                context_len=context, seed=self.seed, **self.step_kw)
            self._memo[key] = res.step_time_us * 1e-6
            if not self.notes:
                self.notes = [note] + res.notes
        return self._memo[key]

    @staticmethod
    def _bracket(grid, x: float):
        i = int(np.clip(np.searchsorted(grid, x), 1, len(grid) - 1))
        lo, hi = grid[i - 1], grid[i]
        w = (x - lo) / (hi - lo)
        return lo, hi, float(np.clip(w, 0.0, 1.0)) if x <= grid[-1] else float(w)

    def cost_s(self, phase: str, tokens: float, context: float) -> float:
        b0, b1, wb = self._bracket(BATCH_GRID, max(tokens, 1.0))
        c0, c1, wc = self._bracket(CONTEXT_GRID, max(context, 1.0))
        f = self._point
        lo = (1 - wc) * f(phase, b0, c0) + wc * f(phase, b0, c1)
        hi = (1 - wc) * f(phase, b1, c0) + wc * f(phase, b1, c1)
        return (1 - wb) * lo + wb * hi

    def decode_s(self, tokens: float, mean_context: float) -> float:
        return self.cost_s("decode", tokens, mean_context)

    def prefill_s(self, tokens: float, context: float) -> float:
        return self.cost_s("prefill", tokens, context)


class Decoder(Protocol):
    """One decode iteration: its time and the tokens each running request advances.
    `fixed_advance` (an int) lets the loop jump over many identical iterations at once."""

    fixed_advance: int | None

    def iteration(self, costs: StepCosts, batch: int, mean_context: float,
                  rng: np.random.Generator) -> tuple[float, np.ndarray]: ...


class PlainDecoding:
    fixed_advance = 1

    def iteration(self, costs, batch, mean_context, rng):
        return costs.decode_s(batch, mean_context), np.ones(batch, np.int64)


@dataclass
class ServingConfig:
    max_batch_size: int = 256
    max_prefill_tokens: int = 16384
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 100.0
    slo_percentile: float = 90.0
    memory_reserve: float = 0.10  # of GPU memory, for activations and workspaces
    kv_capacity_tokens: int | None = None  # derived from GPU memory when None


def kv_capacity_tokens(model: ModelSpec, cluster: ClusterSpec, ep: int, reserve: float) -> int:
    """KV-cache tokens that fit on `ep` GPUs after the weights (bf16) and the reserve."""
    mem = ep * load_gpu(cluster.gpu).memory_bytes * (1 - reserve)
    free = mem - model.total_params() * model.dtype_bytes
    if free <= 0:
        raise InputError("--ep", "", f"{model.name} weights ({model.total_params() * model.dtype_bytes / 1e9:.0f} GB) "
                         f"do not fit on {ep} x {cluster.gpu}")
    return int(free // model.kv_bytes_per_token())


@dataclass
class ServingResult:
    requests: pd.DataFrame  # arrival_s, input_tokens, output_tokens, ttft_s, tpot_s, e2e_s, finish_s
    summary: dict
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"summary": self.summary, "notes": self.notes}


@dataclass
class _State:
    """Running requests, `[batch]` each: request index, tokens still to generate, context."""

    idx: np.ndarray
    left: np.ndarray
    ctx: np.ndarray


def serve(trace: RequestTrace, costs: StepCosts, config: ServingConfig = ServingConfig(),
          decoder: Decoder | None = None, seed: int = 0) -> ServingResult:
    """Simulate serving `trace`; every request runs to completion."""
    decoder = decoder or PlainDecoding()
    cap = config.kv_capacity_tokens or kv_capacity_tokens(costs.model, costs.cluster, costs.ep,
                                                          config.memory_reserve)
    arr, inp, out = trace.arrival_s, trace.input_tokens, trace.output_tokens
    n = len(arr)
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    rng = np.random.default_rng(seed)
    run = _State(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    t, nxt, kv, queue, decode_time = 0.0, 0, 0, [], 0.0
    running_s = np.zeros(2)  # integrals over time of the running count: decode iterations, all
    too_big = np.flatnonzero(inp + out > cap)
    while nxt < n or queue or len(run.idx):
        while nxt < n and arr[nxt] <= t:
            if inp[nxt] + out[nxt] <= cap:
                queue.append(nxt)
            nxt += 1
        if not queue and not len(run.idx):
            if nxt >= n:
                break
            t = max(t, arr[nxt])
            continue
        new = _admit(queue, run, inp, out, kv, cap, config)
        if new is not None:
            toks = inp[new]
            dt = costs.prefill_s(float(toks.sum()), float((toks ** 2).sum() / toks.sum()))
            running_s[1] += dt * len(run.idx)  # running requests stall during a prefill
            t += dt
            first[new] = t
            kv += int((inp[new] + out[new]).sum())
            run = _State(np.r_[run.idx, new], np.r_[run.left, out[new] - 1],
                         np.r_[run.ctx, inp[new] + 1.0])
        elif len(run.idx):
            dt, steps = _decode(run, decoder, costs, rng, t, arr, nxt, n, queue, config, kv, cap)
            running_s += dt * len(run.idx)
            decode_time += dt
            t += dt
        done = run.left <= 0
        if done.any():
            finish[run.idx[done]] = t
            kv -= int((inp[run.idx[done]] + out[run.idx[done]]).sum())
            run = _State(run.idx[~done], run.left[~done], run.ctx[~done])
    mean_batch = running_s[0] / decode_time if decode_time else 0.0
    return _result(trace, first, finish, mean_batch, running_s[1], too_big, cap, config, costs)


def _admit(queue, run, inp, out, kv, cap, config) -> np.ndarray | None:
    """Pop the requests that fit (FCFS, stop at the first that does not)."""
    slots = config.max_batch_size - len(run.idx)
    take, tokens = [], 0
    for i in queue:
        need = int(inp[i] + out[i])
        if len(take) >= slots or kv + need > cap or (take and tokens + inp[i] > config.max_prefill_tokens):
            break
        take.append(i)
        kv += need
        tokens += int(inp[i])
    del queue[:len(take)]
    return np.array(take, np.int64) if take else None


def _decode(run, decoder, costs, rng, t, arr, nxt, n, queue, config, kv, cap):
    """Advance the running batch by one iteration, or by many identical ones when the
    decoder advances a fixed number of tokens and nothing can happen in between."""
    B = len(run.idx)
    if decoder.fixed_advance is None:
        dt, adv = decoder.iteration(costs, B, float(run.ctx.mean()), rng)
        run.left -= adv
        run.ctx += adv
        return dt, 1
    a = decoder.fixed_advance
    k = int(np.ceil(run.left.min() / a))  # iterations until the first request finishes
    dt1, _ = decoder.iteration(costs, B, float(run.ctx.mean()), rng)
    if B < config.max_batch_size and nxt < n and not queue:  # the next arrival may be admitted
        k = min(k, max(1, int(np.ceil((arr[nxt] - t) / dt1))))
    # a non-empty queue is blocked on KV capacity (or FCFS behind it) until a request finishes
    mid = float(run.ctx.mean()) + a * (k - 1) / 2.0  # decode cost is affine in context
    dt = k * decoder.iteration(costs, B, mid, rng)[0]
    run.left -= a * k
    run.ctx += a * k
    return dt, k


def _result(trace, first, finish, mean_batch, running_s, too_big, cap, config, costs) -> ServingResult:
    out = trace.output_tokens
    e2e = finish - trace.arrival_s
    ttft = first - trace.arrival_s
    tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), np.nan)
    df = pd.DataFrame({"arrival_s": trace.arrival_s, "input_tokens": trace.input_tokens,
                       "output_tokens": out, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
                       "finish_s": finish})
    served = ~np.isnan(finish)
    makespan = float(np.nanmax(finish)) if served.any() else 0.0
    ok = served & (ttft * 1e3 <= config.slo_ttft_ms) & ~(tpot * 1e3 > config.slo_tpot_ms)
    pct = lambda x, q: float(np.nanpercentile(x, q)) if served.any() else float("nan")  # noqa: E731
    summary = {"requests": int(len(df)), "served": int(served.sum()), "rejected": int(len(too_big)),
               "makespan_s": round(makespan, 6),
               "throughput_tokens_per_s": round(float(out[served].sum()) / makespan, 3) if makespan else 0.0,
               "throughput_requests_per_s": round(float(served.sum()) / makespan, 6) if makespan else 0.0,
               "mean_decode_batch": round(mean_batch, 4),
               "mean_running": round(running_s / makespan, 4) if makespan else 0.0,
               "kv_capacity_tokens": int(cap),
               "slo_attainment": round(float(ok.mean()), 6),
               "slo": {"ttft_ms": config.slo_ttft_ms, "tpot_ms": config.slo_tpot_ms}}
    for name, x in (("ttft_ms", ttft * 1e3), ("tpot_ms", tpot * 1e3), ("e2e_ms", e2e * 1e3)):
        summary[name] = {f"p{q}": round(pct(x, q), 3) for q in (50, 90, 99)}
    notes = list(costs.notes)
    if len(too_big):
        notes.append(f"{len(too_big)} requests need more KV cache than the cluster has; rejected")
    notes.append(f"step costs memoised on {len(costs._memo)} (tokens, context) grid points, "
                 "bilinear in between")
    return ServingResult(df, summary, notes)
