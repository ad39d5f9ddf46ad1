"""One GPU call: check correctness, tune a small config set, benchmark everything.

Writes under OUT (default benchmarks/results): kernels_h200.json (the list of result rows
{kernel, shape, time_us, hbm_frac, baseline, baseline_time_us, ...}), kernels_h200_meta.json
(device, versions, command, GPU correctness checks, every tuning config timed), configs.json
(tuned configs keyed by device and shape, copied to specmoe/kernels/configs.json) and prints a table.
Usage: PYTHONPATH=. python benchmarks/kernels_run.py [--out DIR] [--budget SECONDS] [--skip-tune] [--tiny]
CPU dry run of every code path: TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/kernels_run.py --tiny --out /tmp/k
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
from benchmarks.kernels_common import CUDA, elapsed
from specmoe.kernels import _common


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def stored_tables(dev_name):
    t = _common._load_configs().get("devices", {}).get(dev_name, {})
    key = f"E{bm.E}_H{bm.H}_F{bm.FF}"
    tree = t.get("tree_attention", {}).get(f"G{bt.HQ // bt.HKV}_D{bt.D}", {})
    return (tree.get(str(bt.T)), t.get("moe_gate_up", {}).get(key), t.get("moe_down", {}).get(key), tree.get("16"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for the tuning (the benches add ~60 s)")
    ap.add_argument("--skip-tune", action="store_true", help="use the stored configs.json")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: a CPU dry run of every code path "
                    "(TRITON_INTERPRET=1, no GPU); timings are meaningless")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        bm.set_tiny()
        bt.set_tiny()
    dev = torch.device("cuda" if CUDA else "cpu")
    name = _common.device_name(dev)
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "cmd": " ".join(sys.argv),
            "sms": torch.cuda.get_device_properties(dev).multi_processor_count if CUDA else None,
            "tiny": args.tiny}
    print(meta)
    torch.manual_seed(0)
    rows, checks, tuning = [], {}, {}
    tree_cfg, tab_gu, tab_dn, tree16_cfg = stored_tables(name)
    B_ = args.budget

    def save():
        write_json(out / "kernels_h200.json", rows)
        write_json(out / "kernels_h200_meta.json", {"meta": meta, "checks": checks, "tuning": tuning,
                                                    "targets": bm.targets(rows), "elapsed_s": round(elapsed(), 1)})

    checks["tree_attention"] = bt.check(dev)
    print("tree check", checks["tree_attention"], f"t={elapsed():.0f}s")
    if not args.skip_tune or tree_cfg is None:
        tree_cfg, tuning["tree_attention"] = bt.tune(dev, budget_s=0.2 * B_)
    print("tree config", tree_cfg, f"t={elapsed():.0f}s")
    rows += bt.bench(dev, tree_cfg)
    save()
    if not args.skip_tune or tree16_cfg is None:
        tree16_cfg, tuning["tree_attention_T16"] = bt.tune(dev, ctx=bt.CTX_T16, budget_s=elapsed() + 0.07 * B_, T=16,
                                                            candidates=bt.CANDIDATES_T16)
    rows += bt.bench(dev, tree16_cfg, T=16, contexts=(bt.CTX_T16,))
    save()
    print(f"tree done t={elapsed():.0f}s")

    w13, w2 = bm.make_weights(dev)
    checks["moe_smoke"] = bm.smoke(dev, w13, w2)
    print("moe smoke", checks["moe_smoke"], f"t={elapsed():.0f}s")
    if not args.skip_tune or not tab_gu:
        new_gu, new_dn, tuning["moe"] = bm.tune(dev, w13, w2, budget_s=B_, stored=(tab_gu, tab_dn))
        tab_gu, tab_dn = dict(tab_gu or {}, **new_gu), dict(tab_dn or {}, **new_dn)   # stored M kept if untuned
    configs = {"version": 1, "devices": {name: {
        "tree_attention": {f"G{bt.HQ // bt.HKV}_D{bt.D}": {str(bt.T): tree_cfg, "16": tree16_cfg}},
        "moe_gate_up": {f"E{bm.E}_H{bm.H}_F{bm.FF}": tab_gu},
        "moe_down": {f"E{bm.E}_H{bm.H}_F{bm.FF}": tab_dn}}}}
    write_json(out / "configs.json", configs)
    save()
    checks["moe"] = bm.check(dev, w13, w2, tab_gu, tab_dn)
    print("moe check", checks["moe"], f"t={elapsed():.0f}s")
    rows += bm.bench(dev, w13, w2, tab_gu, tab_dn)
    save()
    del w13, w2
    torch.cuda.empty_cache()
    pack_rows, checks["pack"] = bm.bench_pack(dev)
    rows += pack_rows
    save()

    print(f"\n{'kernel':16} {'shape':44} {'time_us':>9} {'graph_us':>9} {'host_us':>8} {'hbm':>6} {'flop':>6} {'baseline':>26} {'base_us':>9} {'grp_mm_us':>9}")
    for r in rows:
        s = ",".join(f"{k}={v}" for k, v in r["shape"].items()
                     if k in ("M", "T", "ctx_max", "lens", "E", "R", "experts_hit"))
        print(f"{r['kernel']:16} {s:44} {r['time_us']:9.1f} {r.get('graph_time_us') or float('nan'):9.1f} "
              f"{r.get('host_issue_us') or float('nan'):8.1f} {r['hbm_frac']:6.3f} {r['flop_frac']:6.3f} "
              f"{r['baseline']:>26} {r['baseline_time_us'] if r['baseline_time_us'] else float('nan'):9.1f} "
              f"{r.get('grouped_mm_time_us') or float('nan'):9.1f}")
    bad = {k: v for part in checks.values() for k, v in part.items()
           if (isinstance(v, float) and not v <= 1e-2) or v is False or isinstance(v, str)}
    print("checks", json.dumps(checks))
    print("check failures:", bad or "none")
    print("targets", json.dumps(bm.targets(rows)))
    print(f"total {elapsed():.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
