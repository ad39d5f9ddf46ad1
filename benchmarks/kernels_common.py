"""Shared pieces of the kernel benchmarks: ceilings, timing, result rows."""
from __future__ import annotations

import time

import torch
import triton

# Ceilings of the H200 from the issue (measured on this workplace's H200s: copy ~4.3 TB/s counting
# read + write, bf16 matmul 769-798 TFLOP/s on random data; KINDS.md).
HBM_BYTES_PER_S = 4.19e12
BF16_FLOP_PER_S = 772e12
START = time.time()


def elapsed() -> float:
    return time.time() - START


CUDA = torch.cuda.is_available()   # False: a CPU dry run (TRITON_INTERPRET=1, tiny sizes) of the code paths


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def bench_us(fn, rep_ms: int = 100) -> float:
    """Median time in microseconds (triton.testing.do_bench: events, L2 flushed between reps).
    Without a GPU: one call's wall time (the dry run checks code paths, not speed)."""
    if not CUDA:
        t0 = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t0)
    return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")


def host_us(fn, n: int = 30) -> float:
    """Median host (CPU) time to issue one call, in microseconds: the launch overhead that an
    eager caller pays and a CUDA graph removes. Synchronized before each call so the launch queue
    never fills (a full queue would make the CPU wait for the GPU)."""
    ts = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    sync()
    return 1e6 * sorted(ts)[len(ts) // 2]


def row(kernel, shape, time_us, bytes_, flops, baseline, baseline_time_us, **extra):
    """One result row; hbm_frac = bytes / time / 4.19 TB/s, flop_frac = flops / time / 772 TFLOP/s."""
    r = {"kernel": kernel, "shape": shape, "time_us": round(time_us, 2),
         "hbm_frac": round(bytes_ / (time_us * 1e-6) / HBM_BYTES_PER_S, 4),
         "flop_frac": round(flops / (time_us * 1e-6) / BF16_FLOP_PER_S, 4),
         "bytes": int(bytes_), "flops": int(flops),
         "baseline": baseline,
         "baseline_time_us": None if baseline_time_us is None else round(baseline_time_us, 2)}
    r.update(extra)
    return r


def rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


def try_time(fn, rep_ms=100):
    """Time fn, or None (with the reason printed) when it fails (OOM, unsupported backend)."""
    try:
        fn()
        sync()
        return bench_us(fn, rep_ms)
    except Exception as exc:                                         # noqa: BLE001 - report, go on
        print(f"  baseline failed: {type(exc).__name__}: {str(exc)[:160]}")
        torch.cuda.empty_cache()
        return None


def graph_us(fn, rep_ms: int = 100):
    """Median time of one CUDA-graph replay of fn (launch overhead removed), or None if fn
    cannot be captured (host syncs)."""
    if not CUDA:
        return None
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        return bench_us(g.replay, rep_ms)
    except Exception as exc:                                         # noqa: BLE001 - report, go on
        print(f"  graph capture failed: {type(exc).__name__}: {str(exc)[:160]}")
        torch.cuda.synchronize()
        return None
