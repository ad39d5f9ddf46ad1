"""`specmoe tree`: plan a draft tree for a model, cluster and acceptance model; IO lives here."""
from __future__ import annotations

import json
from pathlib import Path

from specmoe.errors import InputError
from specmoe.planner.acceptance import parse_acceptance
from specmoe.planner.tree_cost import DraftCost, VerifyCost, distinct_experts, synthetic_routing
from specmoe.planner.tree_search import plan_tree
from specmoe.fileio import sha256_file
from specmoe.planner.trees import save_json
from specmoe.specs import load_cluster, load_model


def load_routing(arg: str | None, model, seed: int):
    """A routing trace: a .npz file, an ESFT dump folder, or (none given) a synthetic one."""
    if arg is None:
        from specmoe.simulator.routing import fits
        from specmoe.traces.commands import DEFAULT_TRACE
        from specmoe.traces.routing import load
        embedded = load(DEFAULT_TRACE)
        if fits(embedded, model):
            return embedded, {"routing": {"path": "embedded ESFT intent sample", "sha256": sha256_file(DEFAULT_TRACE)}}
        return synthetic_routing(model, seed=seed), {"routing": "synthetic (specmoe.planner.tree_cost.synthetic_routing)"}
    path = Path(arg)
    if path.is_dir():
        from specmoe.traces.importers import import_esft
        return import_esft(path, model=model.name, num_experts=model.num_experts, top_k=model.top_k), \
            {"routing": {"path": str(path), "format": "esft"}}
    from specmoe.traces.routing import load
    return load(path), {"routing": {"path": str(path), "sha256": sha256_file(path)}}


def build_plan(args) -> dict:
    """Everything `specmoe tree` prints or writes, as one JSON-ready dict."""
    from specmoe import __version__
    model, cluster = load_model(args.model), load_cluster(args.cluster)
    acc = parse_acceptance(args.acceptance)
    routing, inputs = load_routing(args.routing, model, args.seed)
    ep = args.ep or cluster.num_gpus
    if ep > cluster.num_gpus or model.num_experts % ep:
        raise InputError("--ep", "", f"{ep} must divide {model.num_experts} experts and fit {cluster.num_gpus} GPUs")
    if args.draft == "lookup":
        draft = DraftCost("free")
    else:
        draft = DraftCost("model", args.draft_params) if args.draft_params else DraftCost.eagle_head(model)
    kw = dict(batch=args.batch, ep=ep, context_len=args.context_len, seed=args.seed)
    cost = VerifyCost(model, cluster, routing, **kw)
    best, evaluated = plan_tree(args.method, acc, cost, draft, args.budget, args.max_depth)
    dense_cost = VerifyCost(model, cluster, routing, moe_aware=False, **kw)
    dense_best, _ = plan_tree(args.method, acc, dense_cost, draft, args.budget, args.max_depth)
    dense_priced = next(c for c in evaluated if c.tree.parents == dense_best.tree.parents)
    if Path(args.acceptance).is_file():
        inputs["acceptance"] = {"path": args.acceptance, "sha256": sha256_file(args.acceptance)}
    else:
        inputs["acceptance"] = {"inline": args.acceptance}
    sizes = sorted({1} | {c.tree.budget + 1 for c in evaluated})
    return {
        "version": 1, "method": args.method, "parents": list(best.tree.parents),
        "budget": best.tree.budget, "depth": best.tree.max_depth,
        "model": model.name, "cluster": cluster.name, "batch": args.batch, "ep": ep,
        "acceptance": acc.to_json(), "draft": {"kind": draft.kind, "params": draft.params},
        "predicted": {**best.to_json(), "ar_step_us": round(best.ar_step_us, 3)},
        "dense_optimum": {"tree": dense_best.to_json(), "priced_moe_aware": dense_priced.to_json(),
                          "parents": list(dense_best.tree.parents)},
        "distinct_experts_per_layer": [[k, round(v, 3)] for k, v in
                                       distinct_experts(routing, model, sizes, seed=args.seed).items()],
        "candidates": [c.to_json() for c in sorted(evaluated, key=lambda c: (c.tree.budget, c.tree.max_depth))],
        "provenance": {"inputs": inputs, "specmoe": __version__, "seed": args.seed,
                       "budget_arg": args.budget, "max_depth": args.max_depth},
    }


def tree_cmd(args) -> int:
    plan = build_plan(args)
    p = plan["predicted"]
    keys = ("expected_accepted_per_step", "step_time_us", "tokens_per_s", "speedup_vs_autoregressive")
    if args.output:
        save_json(plan, args.output)
    if args.json:
        print(json.dumps({k: p[k] for k in keys} | {"budget": plan["budget"], "depth": plan["depth"]},
                         sort_keys=True))
        return 0
    d = plan["dense_optimum"]
    print(f"{plan['method']} tree for {plan['model']} on {plan['cluster']} (EP={plan['ep']}, batch {plan['batch']})")
    print(f"  draft tokens (budget)        {plan['budget']}  (depth {plan['depth']}, level widths {p['level_widths']})")
    print(f"  expected accepted tokens/step {p['expected_accepted_per_step']:.3f}  (bonus token included)")
    print(f"  predicted time/step          {p['step_time_us']:.1f} us  (verify {p['verify_us']:.1f} + draft {p['draft_us']:.1f})")
    print(f"  tokens/s                     {p['tokens_per_s']:.1f}  ({p['speedup_vs_autoregressive']:.3f}x autoregressive)")
    print(f"  a dense-model planner would pick budget {d['tree']['budget']} (depth {d['tree']['depth']}), "
          f"which gives {d['priced_moe_aware']['tokens_per_s']:.1f} tokens/s here")
    if args.output:
        print(f"  wrote {args.output}")
    return 0
