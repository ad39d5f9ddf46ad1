"""One GPU call: check correctness, tune a small config set, benchmark everything.

Writes under OUT (default benchmarks/results): kernels_h200.json (the list of result rows
{kernel, shape, time_us, hbm_frac, baseline, baseline_time_us, ...}), kernels_h200_meta.json
(device, versions, command, GPU correctness checks, every tuning config timed), configs.json
(tuned configs keyed by device and shape, copied to specmoe/kernels/configs.json) and prints a table.
Usage: PYTHONPATH=. python benchmarks/kernels_run.py [--out DIR] [--budget SECONDS] [--skip-tune]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton

from benchmarks import kernels_moe as bm
from benchmarks import kernels_tree_attention as bt
from benchmarks.kernels_common import elapsed
from specmoe.kernels import _common


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def stored_tables(dev_name):
    t = _common._load_configs().get("devices", {}).get(dev_name, {})
    key = f"E{bm.E}_H{bm.H}_F{bm.FF}"
    return (t.get("tree_attention", {}).get(f"G{bt.HQ // bt.HKV}_D{bt.D}", {}).get(str(bt.T)),
            t.get("moe_gate_up", {}).get(key), t.get("moe_down", {}).get(key))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run")
    ap.add_argument("--skip-tune", action="store_true", help="use the stored configs.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "sms": torch.cuda.get_device_properties(dev).multi_processor_count, "cmd": " ".join(sys.argv)}
    print(meta)
    torch.manual_seed(0)
    rows, checks, tuning = [], {}, {}
    tree_cfg, tab_gu, tab_dn = stored_tables(name)

    checks["tree_attention"] = bt.check(dev)
    print("tree check", checks["tree_attention"], f"t={elapsed():.0f}s")
    if not args.skip_tune or tree_cfg is None:
        tree_cfg, tuning["tree_attention"] = bt.tune(dev, budget_s=0.25 * args.budget)
    print("tree config", tree_cfg, f"t={elapsed():.0f}s")
    rows += bt.bench(dev, tree_cfg)
    tree16_cfg, tuning["tree_attention_T16"] = bt.tune(dev, ctx=32768, budget_s=0.35 * args.budget, T=16,
                                                        candidates=bt.CANDIDATES_T16)
    rows += bt.bench(dev, tree16_cfg, T=16, contexts=(32768,))
    write_json(out / "kernels_h200.json", rows)
    print(f"tree done t={elapsed():.0f}s")

    w13, w2 = bm.make_weights(dev)
    if not args.skip_tune or tab_gu is None:
        tab_gu, tab_dn, tuning["moe"] = bm.tune(dev, w13, w2, budget_s=0.75 * args.budget)
    configs = {"version": 1, "devices": {name: {
        "tree_attention": {f"G{bt.HQ // bt.HKV}_D{bt.D}": {str(bt.T): tree_cfg, "16": tree16_cfg}},
        "moe_gate_up": {f"E{bm.E}_H{bm.H}_F{bm.FF}": tab_gu},
        "moe_down": {f"E{bm.E}_H{bm.H}_F{bm.FF}": tab_dn}}}}
    write_json(out / "configs.json", configs)
    write_json(out / "kernels_h200_meta.json", {"meta": meta, "checks": checks, "tuning": tuning})
    checks["moe"] = bm.check(dev, w13, w2, tab_gu, tab_dn)
    print("moe check", checks["moe"], f"t={elapsed():.0f}s")
    rows += bm.bench(dev, w13, w2, tab_gu, tab_dn)
    del w13, w2
    torch.cuda.empty_cache()
    pack_rows, checks["pack"] = bm.bench_pack(dev)
    rows += pack_rows
    write_json(out / "kernels_h200.json", rows)
    write_json(out / "kernels_h200_meta.json", {"meta": meta, "checks": checks, "tuning": tuning})

    print(f"\n{'kernel':16} {'shape':44} {'time_us':>9} {'graph_us':>9} {'hbm':>6} {'flop':>6} {'baseline':>26} {'base_us':>9}")
    for r in rows:
        s = ",".join(f"{k}={v}" for k, v in r["shape"].items()
                     if k in ("M", "T", "ctx_max", "lens", "E", "R", "experts_hit"))
        print(f"{r['kernel']:16} {s:44} {r['time_us']:9.1f} {r.get('graph_time_us') or float('nan'):9.1f} {r['hbm_frac']:6.3f} {r['flop_frac']:6.3f} "
              f"{r['baseline']:>26} {r['baseline_time_us'] if r['baseline_time_us'] else float('nan'):9.1f}")
    print("checks", json.dumps(checks))
    print(f"total {elapsed():.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
