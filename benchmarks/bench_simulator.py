"""Simulator speed benchmarks (issue 3 targets), with a cProfile summary of the hot path.

    python benchmarks/bench_simulator.py [--quick] [-o benchmarks/results/simulator.json]

Cases: one decode step of deepseek-v3 with 128 tokens per GPU (synthetic skewed routing, since
no routing trace of deepseek-v3 is at hand), analytic tier on 32x8 GPUs and flow tier on 8x8
and 32x8; and one hour of the Azure conversation trace served by mixtral-8x7b on dgx-h100 with
EP=8. Routing synthesis and topology construction happen before the timed region and are
reported separately. Times are wall seconds on this machine (`os.cpu_count()` is recorded).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specmoe.simulator.routing import synthetic_topk  # noqa: E402
from specmoe.simulator.serving import ServingConfig, StepCosts, serve  # noqa: E402
from specmoe.simulator.step import simulate_step  # noqa: E402
from specmoe.simulator.topology import build_topology  # noqa: E402
from specmoe.specs import load_cluster, load_model  # noqa: E402
from specmoe.traces.requests import load_requests  # noqa: E402


def _timed(fn, repeats: int):
    """(best wall s, median wall s, median CPU s of this process, result)."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(times), sorted(times)[len(times) // 2], sorted(cpu)[len(cpu) // 2], out


def step_case(cluster_name: str, network: str, target_s: float, repeats: int) -> dict:
    model, cluster = load_model("deepseek-v3"), load_cluster(cluster_name)
    t = time.perf_counter()
    ids = synthetic_topk(model, 128 * cluster.num_gpus, seed=0)
    synth_s = time.perf_counter() - t
    t = time.perf_counter()
    build_topology(cluster)
    topo_s = time.perf_counter() - t
    run = lambda: simulate_step(model, cluster, topk_ids=ids, network=network)  # noqa: E731
    best, median, cpu, res = _timed(run, repeats)
    return {"case": f"deepseek-v3 decode, 128 tok/GPU, {network}, {cluster_name}",
            "wall_s": round(median, 4), "best_s": round(best, 4), "cpu_s": round(cpu, 4),
            "target_s": target_s,
            "meets_target": median <= target_s, "repeats": repeats,
            "setup_routing_s": round(synth_s, 3), "setup_topology_s": round(topo_s, 3),
            "simulated_step_us": round(res.step_time_us, 1),
            "simulated_dispatch_us_mean": round(float(res.layers.dispatch_us[3:].mean()), 2)}


def serve_case(duration_s: float, target_s: float) -> dict:
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    trace = load_requests("azure-conv").window(duration_s)
    t, c = time.perf_counter(), time.process_time()
    costs = StepCosts(model, cluster, 8, None, seed=0)
    res = serve(trace, costs, ServingConfig())
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    s = res.summary
    return {"case": f"serve-sim azure-conv {duration_s:g} s, mixtral-8x7b, dgx-h100, EP=8",
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "target_s": target_s * duration_s / 3600,
            "meets_target": wall <= target_s * duration_s / 3600,
            "requests": s["requests"], "grid_points": len(costs._memo),
            "speedup_vs_real_time": round(s["makespan_s"] / wall, 1),
            "ttft_p50_ms": s["ttft_ms"]["p50"], "tpot_p50_ms": s["tpot_ms"]["p50"]}


def serving_memo_error(points: int = 12) -> dict:
    """Relative error of the memoised decode cost against simulate_step at random (batch,
    context) points off the grid, each with fresh routing; and the routing-sampling noise
    alone (simulate_step with two routing seeds at the same point)."""
    import numpy as np
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    costs = StepCosts(model, cluster, 8, None, seed=0)
    rng = np.random.default_rng(7)
    memo_err, noise = [], []
    for i in range(points):
        b, ctx = int(rng.integers(3, 250)), int(rng.integers(100, 6000))
        runs = [simulate_step(model, cluster, ep=8, topk_ids=synthetic_topk(model, b, 1000 + 2 * i + j),
                              context_len=ctx).step_time_us * 1e-6 for j in (0, 1)]
        memo_err.append(abs(costs.decode_s(b, ctx) - runs[0]) / runs[0])
        noise.append(abs(runs[1] - runs[0]) / runs[0])
    return {"points": points, "memo_rel_err_mean": round(float(np.mean(memo_err)), 5),
            "memo_rel_err_max": round(float(np.max(memo_err)), 5),
            "routing_noise_rel_mean": round(float(np.mean(noise)), 5),
            "routing_noise_rel_max": round(float(np.max(noise)), 5)}


def flow_coalesce_error(layers: int = 4) -> dict:
    """Flow-tier dispatch time with the step's batching of completions against the exact
    event-by-event simulation, on deepseek-v3 dispatches over 8x8 GPUs."""
    import numpy as np
    from specmoe.simulator.dispatch import default_phy2log, route
    from specmoe.simulator.flow import FlowNetwork
    from specmoe.simulator.step import FLOW_COALESCE
    model, cluster = load_model("deepseek-v3"), load_cluster("8x8-h100-ib400")
    G = cluster.num_gpus
    ids = synthetic_topk(model, 128 * G, seed=0)[:, :layers]
    d = route(ids, np.arange(len(ids)) % G, default_phy2log(model, G)[:layers], G)
    topo = build_topology(cluster)
    errs, events = [], []
    for l in range(layers):
        m = d.copies[l] * float(model.hidden_size * model.dtype_bytes)
        np.fill_diagonal(m, 0.0)
        exact = FlowNetwork(topo, 0.0).simulate(m)
        fast = FlowNetwork(topo, FLOW_COALESCE).simulate(m)
        errs.append((fast.time_s - exact.time_s) / exact.time_s)
        events.append((exact.recomputations, fast.recomputations))
    return {"coalesce": FLOW_COALESCE, "layers": layers, "rel_err": [round(e, 5) for e in errs],
            "recomputations_exact_vs_batched": events}


def profile(fn, top: int = 12) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
    lines = [l for l in buf.getvalue().splitlines() if l.strip()]
    start = next(i for i, l in enumerate(lines) if "ncalls" in l)
    return "\n".join(lines[start - 1:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 32x8 flow case")
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "simulator.json"))
    args = ap.parse_args(argv)
    rows = [step_case("32x8-h100-ib400", "analytic", 0.05, 5),
            step_case("8x8-h100-ib400", "flow", 1.0, 3)]
    if not args.quick:
        rows.append(step_case("32x8-h100-ib400", "flow", 10.0, 3))
    rows.append(serve_case(3600, 60.0))
    model, cluster = load_model("deepseek-v3"), load_cluster("32x8-h100-ib400")
    ids = synthetic_topk(model, 128 * cluster.num_gpus, seed=0)
    prof_analytic = profile(lambda: simulate_step(model, cluster, topk_ids=ids))
    c8 = load_cluster("8x8-h100-ib400")
    ids8 = synthetic_topk(model, 128 * c8.num_gpus, seed=0)
    prof_flow = profile(lambda: simulate_step(model, c8, topk_ids=ids8, network="flow"))
    accuracy = {"serving_memo": serving_memo_error(), "flow_coalesce": flow_coalesce_error()}
    print(f"{'case':<62} {'wall s':>9} {'CPU s':>9} {'target s':>9}  ok")
    for r in rows:
        print(f"{r['case']:<62} {r['wall_s']:>9.3f} {r['cpu_s']:>9.3f} {r['target_s']:>9.3f}  "
              f"{'yes' if r['meets_target'] else 'NO'}")
    print("\naccuracy:", json.dumps(accuracy, indent=1))
    print("\nprofile, analytic step on 32x8:\n" + prof_analytic)
    print("\nprofile, flow step on 8x8:\n" + prof_flow)
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average": os.getloadavg()},
           "results": rows, "accuracy": accuracy, "profile_analytic_32x8": prof_analytic, "profile_flow_8x8": prof_flow,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
