"""`specmoe calibrate`: measure the kernels the runtime runs, on a grid of shapes.

Every figure is the median of `reps` CUDA-event timings after warm-ups, on random bf16
inputs (never zeros), rotating over several input sets so that small shapes do not time L2.
  - gemm: torch.mm [m, k] @ [k, n];
  - grouped_gemm: the runtime's Experts.forward (sort, gather, three grouped GEMMs, weighted
    scatter-add) for `tokens` (token, expert) pairs spread evenly over `experts` active
    experts; experts = 1 at the dense and shared widths is the MLP module;
  - attention: the runtime's attention module (GQA or absorbed MLA), one decode token per
    sequence, at `batch` sequences and `context` cached tokens, minus its projection GEMM;
  - collectives.all_to_all: torch.distributed.all_to_all_single over NCCL, `bytes` = what
    each rank sends to the other ranks, one curve per link class.
"""
from __future__ import annotations

import datetime
import platform

import numpy as np
import torch
import torch.distributed as dist

from specmoe.runtime.config import from_spec
from specmoe.runtime.model import (MLP, Attention, Experts, KVCache, MLAttention, init_random,
                                   rope_cos_sin)

GEMM_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# (n, k) the simulator asks for: attention projections (n = weight_elems / hidden), gate,
# LM head, of deepseek-v2-lite (hidden 2048) and mixtral-8x7b (hidden 4096); two square ones.
GEMM_NK = ((6720, 2048), (64, 2048), (102400, 2048), (10240, 4096), (8, 4096), (32000, 4096),
           (4096, 4096), (8192, 8192))
GROUPED_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072, 4096)
# (hidden, ffn, active-expert counts, local slots); one active expert of the dense/shared
# widths is the MLP module (dense layers and shared experts run as plain SwiGLU MLPs)
GROUPED_SHAPES = ((2048, 1408, (1, 2, 4, 8, 16, 24, 32), 32), (2048, 1408, (48, 64), 64),
                  (4096, 14336, (1, 2, 4, 8), 8))
MLP_SHAPES = ((2048, 10944), (2048, 2816), (4096, 14336))
ATTN_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ATTN_CONTEXT = (256, 1024, 4096)
ATTN_MODELS = ("deepseek-v2-lite", "mixtral-8x7b")
A2A_BYTES = tuple(2 ** p for p in range(8, 29, 2))  # 256 B .. 256 MiB per rank


def time_us(fn, reps: int = 20, warmup: int = 3, calls: int = 4) -> float:
    """Median CUDA-event time of one fn() in microseconds: `calls` back-to-back calls are
    captured in one CUDA graph (so the time is the GPU's, not Python's launch rate, as in the
    runtime's replay step), and each timed replay is divided by `calls`. Falls back to eager
    calls if capture fails."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    from specmoe.runtime.graphstep import capture_graphs

    def calls_fn():
        for _ in range(calls):
            fn()
    try:
        run = capture_graphs([calls_fn])[0].replay
        run()
    except RuntimeError:
        torch.cuda.synchronize()

        def run():
            for _ in range(calls):
                fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return float(np.median(times))


def _randn(shape, device, n=1):
    return [torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(n)]


def gemm_grid(device) -> list[dict]:
    rows = []
    for n, k in GEMM_NK:
        w = _randn((k, n), device)[0]
        for m in GEMM_M:
            xs = _randn((m, k), device, n=4)
            it = iter(range(1 << 30))
            rows.append({"m": m, "n": n, "k": k,
                         "us": time_us(lambda: torch.mm(xs[next(it) % 4], w))})
    return rows


def grouped_grid(device, experts: str = "torch") -> list[dict]:
    """Experts.forward (on the `experts` backend, as the runtime runs it) with `tokens` rows
    over `experts` active experts (round-robin), and the MLP module for one expert of the
    dense and shared widths."""
    rows = []
    for hidden, ffn, actives, slots in GROUPED_SHAPES:
        ex = init_random(Experts(slots, hidden, ffn).to(device=device, dtype=torch.bfloat16))
        ex.set_backend(experts)
        for tokens in GROUPED_TOKENS:
            x = _randn((tokens, hidden), device, n=2)
            w = torch.rand(tokens, 1, device=device)
            for a in actives:
                if a > tokens:
                    continue
                sl = (torch.arange(tokens, device=device) % a)[:, None]
                it = iter(range(1 << 30))
                with torch.no_grad():
                    us = time_us(lambda: ex(x[next(it) % 2], sl, w))
                rows.append({"tokens": tokens, "experts": a, "hidden": hidden, "ffn": ffn, "us": us})
        del ex
    for hidden, ffn in MLP_SHAPES:
        mlp = init_random(MLP(hidden, ffn).to(device=device, dtype=torch.bfloat16))
        for tokens in GROUPED_TOKENS:
            x = _randn((tokens, hidden), device, n=2)
            it = iter(range(1 << 30))
            with torch.no_grad():
                us = time_us(lambda: mlp(x[next(it) % 2]))
            rows.append({"tokens": tokens, "experts": 1, "hidden": hidden, "ffn": ffn, "us": us})
    return rows


def attention_grid(device) -> list[dict]:
    """Decode attention as the simulator splits it: `us` is the runtime's attention module
    minus the projection GEMM the simulator prices separately ([batch, hidden] @
    [hidden, weight_elems / hidden], timed here too); `module_us` keeps the whole."""
    from specmoe.specs import load_model

    rows = []
    for name in ATTN_MODELS:
        spec = load_model(name)
        cfg = from_spec(spec, num_layers=1)
        a, h = spec.attention, spec.hidden_size
        attn = MLAttention(cfg, 0) if cfg.kv_lora_rank else Attention(cfg, 0)
        attn = init_random(attn.to(device=device, dtype=torch.bfloat16))
        proj_n = -(-a.weight_elems(h) // h)
        wp = _randn((h, proj_n), device)[0]
        for ctx in ATTN_CONTEXT:
            cache = KVCache(cfg, max(ATTN_BATCH), ctx + 1, device, torch.bfloat16)
            cache.fill_random(ctx)
            for b in ATTN_BATCH:
                x = _randn((b, 1, h), device)[0]
                pos = torch.full((b, 1), ctx, device=device)
                cos, sin = rope_cos_sin(pos, cfg.rope_dim or cfg.head_dim, 1e4, torch.bfloat16)
                with torch.no_grad():
                    us = time_us(lambda: attn(x, cos, sin, cache))
                proj = time_us(lambda: torch.mm(x[:, 0], wp))
                rows.append({"batch": b, "context": ctx, "heads": cfg.num_heads,
                             "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
                             "us": max(us - proj, 0.1), "module_us": us, "proj_us": proj,
                             "model": name})
            del cache
    return rows


def all_to_all_curve(device, reps: int = 20) -> list[list[float]]:
    """[[bytes per rank, us], ...]; every rank calls this; the slowest rank's median."""
    world, out = dist.get_world_size(), []
    for nbytes in A2A_BYTES:
        n = max(nbytes // 2 // world * world, world)  # bf16 elements, divisible by world
        src = torch.randn(n, device=device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)

        def fn():
            dist.all_to_all_single(dst, src)
        dist.barrier()
        us = time_us(fn, reps=reps)
        del src, dst
        t = torch.tensor([us], device=device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        # the simulator's convention: bytes each rank sends to the others (not its own chunk)
        out.append([float(n * 2 * (world - 1) / world), float(t.item())])
    return out


def provenance(command: str) -> dict:
    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                         "nccl": ".".join(map(str, torch.cuda.nccl.version()))
                         if torch.cuda.is_available() else None,
                         "python": platform.python_version()},
            "command": command}
