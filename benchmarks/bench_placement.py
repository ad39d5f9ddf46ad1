"""Placement benchmark: held-out traffic on the ESFT traces, ILP optimality gap, search time.

    python benchmarks/bench_placement.py            # writes benchmarks/results/placement.json

1. DeepSeek-V2-Lite ESFT traces (intent, law), EP=8 on dgx-h100, profile 25% / held-out 75%:
   remote copies per token per layer, local activation rate, load imbalance and the
   simulator's MoE-layer and step time, for every method against contiguous and EPLB.
2. Optimality gap: METIS+KL and greedy against the exact MILP (HiGHS) on small instances cut
   from the real trace (the 12 busiest experts of a layer, 48 tokens, 4 ranks).
3. Search time for deepseek-v3 (58 MoE layers x 256 experts) on 256 GPUs (32x8-h100-ib400),
   on a planted synthetic trace of realistic skew, and on 32 GPUs (8 experts per GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specmoe.planner import grouping, ilp, search, shuffle  # noqa: E402
from specmoe.planner.commands import build  # noqa: E402
from specmoe.planner.synthetic import planted_trace  # noqa: E402
from specmoe.traces.importers import import_esft  # noqa: E402
from specmoe.traces.routing import save  # noqa: E402

ESFT = Path("/work/shared/data/routing/deepseek-v2-lite-esft")
KEYS = ("remote_copies_per_token_layer", "local_activation_rate", "load_imbalance",
        "max_layer_imbalance", "predicted_moe_layer_us", "step_time_us")


def esft_rows(tmp: Path) -> list[dict]:
    rows = []
    for task in ("intent", "law"):
        path = tmp / f"esft_{task}.npz"
        save(import_esft(ESFT / task), path)
        for method, attention, R, bound in (
                ("speculative", "tp", 0, 1.10), ("speculative", "tp", 0, 1.06),
                ("speculative", "tp", 0, 1.04), ("speculative", "dp", 0, 1.10),
                ("grouping", "tp", 0, 1.10), ("greedy", "tp", 0, 1.10),
                ("speculative", "tp", 8, 1.10)):
            args = argparse.Namespace(model="deepseek-v2-lite", cluster="dgx-h100",
                                      routing=str(path), ep=8, method=method,
                                      attention=attention, redundant=R, profile_frac=0.25,
                                      balance=bound, seed=0)
            _, out = build(args)
            c, e = out["baseline_contiguous"], out["baseline_eplb"]
            k = "remote_copies_per_token_layer"
            row = dict(trace=task, method=method, attention=attention, redundant=R, balance=bound,
                       **{x: out[x] for x in KEYS},
                       contiguous={x: c[x] for x in KEYS}, eplb={x: e[x] for x in KEYS},
                       reduction_vs_contiguous=round(1 - out[k] / c[k], 4),
                       reduction_vs_eplb=round(1 - out[k] / e[k], 4),
                       prediction=out.get("prediction"), search_seconds=out["search_seconds"])
            rows.append(row)
            print(f"{task:6s} {method:11s} {attention} R={R:<2d} B={bound:.2f} copies {out[k]:.3f} "
                  f"(contig {c[k]:.3f}, eplb {e[k]:.3f}) -{row['reduction_vs_contiguous']:.1%} "
                  f"vs contig, -{row['reduction_vs_eplb']:.1%} vs eplb; imb "
                  f"{out['load_imbalance']:.3f} (eplb {e['load_imbalance']:.3f}); moe "
                  f"{out['predicted_moe_layer_us']:.0f} us (contig {c['predicted_moe_layer_us']:.0f}, "
                  f"eplb {e['predicted_moe_layer_us']:.0f})", flush=True)
    return rows


def ilp_rows() -> list[dict]:
    tr = import_esft(ESFT / "intent")
    rows = []
    for layer in (0, 12, 25):
        ids = tr.topk_ids[:, layer]
        busiest = np.argsort(-np.bincount(ids.ravel(), minlength=64), kind="stable")[:12]
        remap = np.full(64, -1); remap[busiest] = np.arange(12)
        sub = remap[ids]
        keep = np.flatnonzero((sub >= 0).sum(1) >= 2)[:48]
        sub = np.sort(sub[keep], 1)
        w = np.bincount(sub[sub >= 0], minlength=12).astype(float)
        cap = grouping.capacities(12, 4)
        t0 = time.perf_counter()
        e2r, opt, status, lower = ilp.exact_layer(sub, 12, cap, w, 1.10, time_limit=60)
        t_ilp = time.perf_counter() - t0
        X = grouping.incidence(sub, 12)
        W = np.asarray((X.T @ X).todense()); np.fill_diagonal(W, 0)
        t0 = time.perf_counter()
        kl = grouping.kl_refine(X, grouping.repair_sizes(grouping.metis_parts(W, 4, 0), W, cap),
                                None, w, 4, 1.10)
        t_kl = time.perf_counter() - t0
        gr = grouping.greedy_layer(W, None, w, cap, 1.10)
        h, g = grouping.remote_copies(X, kl, None, 4), grouping.remote_copies(X, gr, None, 4)
        rows.append(dict(layer=layer, tokens=len(sub), experts=12, ranks=4, bound=1.10,
                         ilp_objective=opt, ilp_lower_bound=lower, ilp_status=int(status),
                         ilp_seconds=round(t_ilp, 2), metis_kl=h, metis_kl_seconds=round(t_kl, 3),
                         greedy=g, gap_metis_kl=round(h / lower - 1, 4),
                         gap_greedy=round(g / lower - 1, 4)))
        print(f"ILP layer {layer}: optimum {opt:.0f} (lower bound {lower:.0f}, status {status}, "
              f"{t_ilp:.1f} s); METIS+KL {h:.0f} (gap {h / lower - 1:.1%}); greedy {g:.0f} "
              f"(gap {g / lower - 1:.1%})", flush=True)
    return rows


def v3_rows() -> list[dict]:
    rows = []
    # ESFT measured: the busiest expert carries 2.9-4.7x the mean load; these skews give about
    # that (recorded below as measured_hottest_over_mean).
    tr = planted_trace(64, 64, 58, 256, 8, 32, stay=0.7, noise=0.15, skew=1.2, cluster_skew=0.6,
                       seed=0)
    prof, held = tr.split_by_sequence(0.25)
    from specmoe.traces.stats import expert_load, imbalance
    hot = float(imbalance(expert_load(tr)).mean())
    for gpus, R, restarts in ((256, 0, 3), (256, 256, 3), (32, 0, 1)):
        t0 = time.perf_counter()
        p = search.fit_placement(prof, "grouping", gpus, R, 1.10, 0, restarts=restarts)
        pred = shuffle.Predictor.fit(prof.topk_ids, 256, None, use_request=False)
        secs = time.perf_counter() - t0
        t2g = search.schedule(held, p, gpus, "tp-token", pred)
        m = search.evaluate(held, p, gpus, t2g, 7168, 2)
        base = search.evaluate(held, search.fit_placement(prof, "contiguous", gpus, R), gpus,
                               np.arange(held.num_tokens) % gpus, 7168, 2)
        rows.append(dict(model="deepseek-v3 (synthetic planted trace)", gpus=gpus, redundant=R,
                         restarts=restarts,
                         profile_tokens=prof.num_tokens, search_seconds=round(secs, 2),
                         measured_hottest_over_mean=round(hot, 2),
                         remote_copies_per_token_layer=m["remote_copies_per_token_layer"],
                         contiguous_remote_copies=base["remote_copies_per_token_layer"],
                         load_imbalance=m["load_imbalance"]))
        print(f"deepseek-v3 58x256 on {gpus} GPUs, R={R}: search {secs:.1f} s "
              f"(profile {prof.num_tokens} tokens); copies {m['remote_copies_per_token_layer']:.3f} "
              f"vs contiguous {base['remote_copies_per_token_layer']:.3f}; imbalance "
              f"{m['load_imbalance']:.3f}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks/results/placement.json"))
    ap.add_argument("--tmp", default="/tmp/specmoe-bench-placement")
    args = ap.parse_args()
    tmp = Path(args.tmp); tmp.mkdir(parents=True, exist_ok=True)
    out = dict(command="python benchmarks/bench_placement.py",
               machine=dict(cpus=os.cpu_count(), python=platform.python_version()),
               esft=esft_rows(tmp), ilp_gap=ilp_rows(), search_time=v3_rows())
    Path(args.output).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print("wrote", args.output)


if __name__ == "__main__":
    main()
