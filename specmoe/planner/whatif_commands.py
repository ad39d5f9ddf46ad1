"""`specmoe whatif`: evaluate candidate deployments, rank them, write a report. IO lives here."""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from specmoe import specs
from specmoe.planner import whatif, whatif_eval
from specmoe.specs._fields import from_dict, read_yaml


def load_config(args) -> whatif.WhatIfConfig:
    """Embedded defaults, then the YAML file (`--config`), then flags."""
    data = read_yaml(Path(args.config)) if args.config else {}
    source = args.config or "flags"
    flags = dict(models=args.models, clusters=args.clusters, ep=args.ep, attention=args.attention,
                 placements=args.placements, tree_budgets=args.tree_budgets, workload=args.workload,
                 rate_min_rps=args.rate_min, rate_max_rps=args.rate_max, slo_ttft_ms=args.slo_ttft_ms,
                 slo_tpot_ms=args.slo_tpot_ms, seed=args.seed)
    data.update({k: v for k, v in flags.items() if v is not None})
    cfg = from_dict(whatif.WhatIfConfig, data, source)
    for name in cfg.models:
        specs.load_model(name)
    for name in cfg.clusters:
        specs.load_cluster(name)
    specs.load_workload(cfg.workload)
    return cfg


def _placement(job):
    return whatif_eval.placement_for(*job)


def _evaluate(job):
    return whatif_eval.evaluate(*job)


def _map(fn, jobs, workers, bar, task):
    """fn over jobs in order, in `workers` processes, advancing the progress bar."""
    out = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(fn, jobs):  # map keeps the jobs' order: deterministic output
                out.append(r)
                bar.advance(task)
    else:
        for j in jobs:
            out.append(fn(j))
            bar.advance(task)
    return out


def run_search(cfg: whatif.WhatIfConfig, jobs: int, progress: bool = True) -> list[dict]:
    cluster2gpus = {n: specs.load_cluster(n).num_gpus for n in cfg.clusters}
    cands = whatif.candidates(cfg, cluster2gpus)
    keys = sorted({(c.model, c.ep, c.placement) for c in cands})
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("placements", total=len(keys))
        key2phy = dict(zip(keys, _map(_placement, [k + (cfg.seed,) for k in keys], jobs, bar, task)))
        task = bar.add_task("candidates", total=len(cands))
        work = [(c, cfg, key2phy[(c.model, c.ep, c.placement)]) for c in cands]
        rows = _map(_evaluate, work, jobs, bar, task)
    flags = whatif.pareto([(r["cost_per_hour_usd"], r["max_rate_rps"]) for r in rows])
    for r, f in zip(rows, flags):
        r["pareto"] = f
    rows.sort(key=lambda r: (-r.get("goodput_per_gpu", 0.0), r["cost_per_hour_usd"], r["label"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def _table(rows, slo) -> Table:
    t = Table(title=f"what-if: highest request rate within p{slo[2]:g} TTFT ≤ {slo[0]:g} ms "
                    f"and TPOT ≤ {slo[1]:g} ms")
    for col in ("#", "model", "cluster", "GPUs", "EP×rep", "placement", "spec", "max rate (req/s)",
                "req/s per GPU", "req per $", "Pareto"):
        t.add_column(col, justify="right" if col[0] in "#GEmr" else "left")
    for r in rows:
        t.add_row(str(r["rank"]), r["model"], r["cluster"], str(r["num_gpus"]),
                  f"{r['ep']}×{r['replicas']}", r["placement"],
                  f"tree {r['tree_budget']}" if r["tree_budget"] else "off",
                  f"{r['max_rate_rps']:.2f}" if r["feasible"] else "—",
                  f"{r.get('goodput_per_gpu', 0):.3f}" if r["feasible"] else "—",
                  f"{r.get('requests_per_dollar') or 0:,.0f}" if r["feasible"] else "—",
                  "★" if r["pareto"] else "")
    return t


def whatif_cmd(args) -> int:
    cfg = load_config(args)
    rows = run_search(cfg, args.jobs, progress=not args.json)
    feasible = [r for r in rows if r["feasible"]]
    best = feasible[0] if feasible else None
    out = dict(config=specs.to_dict(cfg), slo=dict(zip(("ttft_ms", "tpot_ms", "percentile"),
                                                       whatif_eval.slos(cfg))),
               candidates=rows, best=best)
    if args.report:
        from specmoe.planner.whatif_report import write_report
        out["report"] = write_report(Path(args.report), cfg, rows, best)
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
        console = Console(width=150)
    console.print(_table(rows, whatif_eval.slos(cfg)))
    for r in rows:
        if not r["feasible"]:
            why = r["notes"][-1] if not r["probes"] else f"misses the SLOs at {cfg.rate_min_rps:g} req/s"
            console.print(f"infeasible: {r['label']}: {why}")
    if best is None:
        console.print(f"no candidate meets the SLOs at {cfg.rate_min_rps:g} req/s or more")
    else:
        console.print(f"best goodput per GPU: {best['label']} — {best['max_rate_rps']:.2f} req/s "
                      f"on {best['num_gpus']} GPUs")
    if args.report:
        console.print(f"report: {out['report']['index']}")
    return 0
