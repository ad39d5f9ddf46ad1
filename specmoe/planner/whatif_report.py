"""The `specmoe whatif --report DIR` folder: report.md, four plots, and the best deployment's
plan (specmoe Plan JSON, SGLang and vLLM exports)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from specmoe.planner import plan as planfile
from specmoe.planner import whatif_eval
from specmoe.planner.whatif import Candidate, WhatIfConfig
from specmoe.specs import load_cluster, load_model


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _candidate(row) -> Candidate:
    return Candidate(row["model"], row["cluster"], row["num_gpus"], row["ep"], row["attention"],
                     row["placement"], row["tree_budget"])


def plot_pareto(rows, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if not r["feasible"]:
            continue
        ax.scatter(r["cost_per_hour_usd"], r["max_rate_rps"], c="tab:red" if r["pareto"] else "tab:gray",
                   marker="o" if not r["tree_budget"] else "^", s=40)
    front = sorted((r["cost_per_hour_usd"], r["max_rate_rps"]) for r in rows if r["pareto"])
    if front:
        ax.step(*zip(*front), where="post", c="tab:red", lw=1, label="Pareto front")
    ax.set(xlabel="cluster cost ($/h)", ylabel="max request rate within SLO (req/s)",
           xscale="log", yscale="log", title="capacity against cost (▲ = speculative decoding)")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_latency_cdf(requests, slo, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, col, limit, name in ((axes[0], "ttft_s", slo[0], "TTFT"), (axes[1], "tpot_s", slo[1], "TPOT")):
        x = np.sort(requests[col].dropna().to_numpy() * 1e3)
        ax.plot(x, np.arange(1, len(x) + 1) / max(len(x), 1))
        ax.axvline(limit, c="tab:red", ls="--", label=f"SLO {limit:g} ms")
        ax.axhline(slo[2] / 100, c="tab:gray", ls=":")
        ax.set(xlabel=f"{name} (ms)", ylabel="fraction of requests", xscale="log")
        ax.legend()
    fig.suptitle("best deployment at its highest rate within SLO")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_layers(step, path: Path) -> None:
    plt = _plt()
    df = step.layers
    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = np.zeros(len(df))
    for col in ("attention_us", "gate_us", "dispatch_us", "experts_us", "combine_us"):
        ax.bar(df["layer"], df[col], bottom=bottom, label=col[:-3])
        bottom += df[col].to_numpy()
    ax.set(xlabel="layer", ylabel="µs", title=f"per-layer breakdown, step {step.step_time_us:.0f} µs")
    ax.legend(ncol=5, fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def a2a_share(step) -> float:
    df = step.layers
    return float((df["dispatch_us"] + df["combine_us"]).sum() / step.step_time_us)


def plot_a2a(shares: dict, path: Path) -> None:
    plt = _plt()
    labels = list(shares)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.5))
    ax.barh(labels, [100 * shares[k] for k in labels])
    ax.set(xlabel="all-to-all (dispatch + combine) share of decode step time (%)",
           title=f"at {STEP_TOKENS_PER_GPU} tokens per GPU")
    ax.invert_yaxis()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


STEP_TOKENS_PER_GPU = 64


def _step(c: Candidate, phy2log, seed: int):
    from specmoe.simulator.routing import routing_for
    from specmoe.simulator.step import simulate_step
    model, cluster = load_model(c.model), load_cluster(c.cluster)
    routing, _ = whatif_eval.routing_for_model(model)
    ids, _ = routing_for(model, routing, STEP_TOKENS_PER_GPU * c.ep, seed)
    return simulate_step(model, cluster, ep=c.ep, topk_ids=ids, phy2log=phy2log,
                         attention=c.attention, seed=seed)


def write_report(folder: Path, cfg: WhatIfConfig, rows: list[dict], best: dict | None) -> dict:
    from specmoe.simulator.serving import ServingConfig, serve

    folder.mkdir(parents=True, exist_ok=True)
    slo = whatif_eval.slos(cfg)
    files = {"pareto": "pareto.png"}
    plot_pareto(rows, folder / "pareto.png")
    configs, shares = {}, {}
    for r in rows:
        key = (r["model"], r["cluster"], r["ep"], r["placement"], r["attention"])
        if r["feasible"] and key not in configs:
            c = _candidate(r)
            configs[key] = whatif_eval.placement_for(c.model, c.ep, c.placement, cfg.seed)
            shares[f"{c.model} @ {c.cluster} EP{c.ep} {c.placement}"] = a2a_share(_step(c, configs[key], cfg.seed))
    if shares:
        plot_a2a(shares, folder / "a2a_share.png")
        files["a2a_share"] = "a2a_share.png"
    if best is not None:
        c = _candidate(best)
        key = (c.model, c.cluster, c.ep, c.placement, c.attention)
        costs, decoder, notes = whatif_eval.build(c, cfg, configs[key])
        res = serve(whatif_eval.probe_trace(cfg).scaled_to_rate(best["max_rate_rps"] / c.replicas), costs,
                    ServingConfig(slo_ttft_ms=slo[0], slo_tpot_ms=slo[1], slo_percentile=slo[2]),
                    decoder, seed=cfg.seed)
        plot_latency_cdf(res.requests, slo, folder / "latency_cdf.png")
        step = _step(c, configs[key], cfg.seed)
        plot_layers(step, folder / "layers.png")
        files.update(latency_cdf="latency_cdf.png", layers="layers.png")
        files.update(_write_plan(folder, c, configs[key], decoder, best, cfg))
    (folder / "report.md").write_text(_markdown(cfg, rows, best, files, shares, slo))
    return dict(index=str(folder / "report.md"), files={k: str(folder / v) for k, v in files.items()})


def _write_plan(folder: Path, c: Candidate, phy2log, decoder, best: dict, cfg) -> dict:
    from specmoe import __version__
    from specmoe.planner.trees import plan_section
    model = load_model(c.model)
    p = planfile.Plan(model=c.model, cluster=c.cluster, ep=c.ep, attention=c.attention,
                      phy2log=np.asarray(phy2log), num_redundant_experts=int(phy2log.shape[1] - model.num_experts),
                      num_experts=model.num_experts, method=c.placement,
                      draft_tree=plan_section(decoder.tree) if decoder is not None else None,
                      predicted=dict(max_rate_rps=best["max_rate_rps"], goodput_per_gpu=best["goodput_per_gpu"],
                                     slo=dict(zip(("ttft_ms", "tpot_ms", "percentile"), whatif_eval.slos(cfg)))),
                      provenance=dict(specmoe=__version__, seed=cfg.seed, command="specmoe whatif",
                                      workload=cfg.workload))
    planfile.save(p, folder / "best_plan.json")
    planfile.write_text_atomic(folder / "best_plan.sglang.json", planfile.dumps(planfile.to_sglang(p)))
    planfile.write_text_atomic(folder / "best_plan.vllm.json", planfile.dumps(planfile.to_vllm(p)))
    return dict(plan="best_plan.json", sglang="best_plan.sglang.json", vllm="best_plan.vllm.json")


def _markdown(cfg, rows, best, files, shares, slo) -> str:
    lines = ["# specmoe what-if report", "",
             f"Workload `{cfg.workload}`; SLO: p{slo[2]:g} TTFT ≤ {slo[0]:g} ms and p{slo[2]:g} TPOT ≤ "
             f"{slo[1]:g} ms; seed {cfg.seed}. Each candidate's capacity is the highest request rate "
             f"(bisection between {cfg.rate_min_rps:g} and {cfg.rate_max_rps:g} req/s) at which the "
             f"simulated serving of {whatif_eval.NUM_REQUESTS} requests meets the SLOs.", "",
             "| # | deployment | GPUs | $/h | max req/s | req/s per GPU | req per $ | Pareto |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['label']} | {r['num_gpus']} | {r['cost_per_hour_usd']:.2f} | "
                     + (f"{r['max_rate_rps']:.2f} | {r['goodput_per_gpu']:.3f} | {r['requests_per_dollar']:,.0f}"
                        if r["feasible"] else "— | — | —")
                     + f" | {'★' if r['pareto'] else ''} |")
    if best:
        lines += ["", f"**Best goodput per GPU:** {best['label']}: {best['max_rate_rps']:.2f} req/s.",
                  "Its plan, ready for `specmoe validate`, SGLang (`--init-expert-location`) and vLLM: "
                  "[best_plan.json](best_plan.json), [SGLang](best_plan.sglang.json), "
                  "[vLLM](best_plan.vllm.json).", ""]
        lines += [f"- {n}" for n in best.get("notes", [])]
    for key, title in (("pareto", "Capacity against cost"), ("latency_cdf", "Latency CDFs of the best deployment"),
                       ("layers", "Per-layer breakdown of the best deployment"),
                       ("a2a_share", "All-to-all share of step time")):
        if key in files:
            lines += ["", f"## {title}", "", f"![{title}]({files[key]})"]
    return "\n".join(lines) + "\n"
