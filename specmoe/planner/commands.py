"""`specmoe plan ...` and `specmoe plan show PLAN`: IO around the pure planner."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from specmoe.errors import InputError
from specmoe.planner import plan as planfile
from specmoe.planner import search, shuffle
from specmoe.planner.pricing import price

SAMPLE = Path(__file__).resolve().parent.parent / "traces" / "data" / "esft_intent_sample.npz"
PRICE_TOKENS = 8192  # the simulator prices one step of (at most) this many held-out tokens
METRIC_KEYS = ("remote_copies_per_token_layer", "local_activation_rate", "load_imbalance",
               "predicted_moe_layer_us")


def _load_inputs(args):
    from specmoe.specs import load_cluster, load_model
    from specmoe.traces.routing import load as load_trace
    model, cluster = load_model(args.model), load_cluster(args.cluster)
    path = Path(args.routing) if args.routing else SAMPLE
    if not path.exists():
        raise InputError("--routing", "", f"{path} does not exist" if args.routing else
                         "the embedded ESFT sample is not installed; pass --routing TRACE.npz")
    trace = load_trace(path)
    if trace.num_experts != model.num_experts:
        raise InputError(path, "meta.num_experts", f"{trace.num_experts} experts, but "
                         f"{model.name} has {model.num_experts}")
    if trace.num_layers != model.num_moe_layers:
        raise InputError(path, "topk_ids", f"{trace.num_layers} MoE layers, but {model.name} "
                         f"has {model.num_moe_layers}")
    ep = args.ep or cluster.num_gpus
    if ep > cluster.num_gpus:
        raise InputError("--ep", "", f"{ep} exceeds the {cluster.num_gpus} GPUs of {cluster.name}")
    if len(np.unique(trace.seq_id)) < 2:
        raise InputError(path, "seq_id", "need at least two sequences to profile and to score")
    return model, cluster, trace, path, ep


def build(args) -> tuple[planfile.Plan, dict]:
    """The plan and the report (held-out figures for the plan and both baselines)."""
    model, cluster, trace, path, ep = _load_inputs(args)
    try:
        search.placement.check_sizes(model.num_experts, args.redundant, ep)
    except ValueError as e:
        raise InputError("--redundant", "", str(e)) from None
    prof, held = trace.split_by_sequence(args.profile_frac)
    t0 = time.perf_counter()
    method = "grouping" if args.method == "speculative" else args.method
    phy2log = search.fit_placement(prof, method, ep, args.redundant, args.balance, args.seed)
    policy = "none"
    predictor = None
    if args.method == "speculative":
        policy = "tp-token" if args.attention == "tp" else "dp-request"
        predictor = shuffle.Predictor.fit(prof.topk_ids, prof.num_experts, prof.token_id,
                                          use_request=False)
    search_s = time.perf_counter() - t0
    cands = {"plan": (phy2log, policy)}
    cands["baseline_contiguous"] = (search.fit_placement(prof, "contiguous", ep, args.redundant), "none")
    cands["baseline_eplb"] = (search.fit_placement(prof, "eplb", ep, args.redundant), "none")
    report = {}
    n = min(held.num_tokens, PRICE_TOKENS)
    for name, (p, pol) in cands.items():
        t2g = search.schedule(held, p, ep, pol, predictor)
        fig = search.evaluate(held, p, ep, t2g, model.hidden_size, model.dtype_bytes)
        fig.update(price(model, cluster, ep, held.topk_ids[:n], p, t2g[:n], args.attention,
                         trace.meta["phase"], args.seed))
        report[name] = fig
    out = dict(report.pop("plan"))
    out.update(report)
    if predictor is not None:
        out["prediction"] = {k: round(v, 6) for k, v in
                             shuffle.accuracy(held, predictor, phy2log, ep).items()}
    out.update(method=args.method, attention=args.attention, ep=ep, model=model.name,
               cluster=cluster.name, profile_tokens=int(prof.num_tokens),
               heldout_tokens=int(held.num_tokens), priced_tokens=int(n),
               search_seconds=round(search_s, 3))
    schedule = dict(policy=policy, predictor=None if predictor is None else predictor.names(),
                    tables=None if predictor is None else _table_ref(predictor, path))
    from specmoe import __version__
    prov = dict(inputs=dict(routing=dict(path=str(path), sha256=planfile.sha256_file(path)),
                            model=model.name, cluster=cluster.name),
                specmoe_version=__version__, seed=args.seed,
                args=dict(profile_frac=args.profile_frac, balance=args.balance,
                          redundant=args.redundant, method=args.method))
    predicted = {k: v for k, v in out.items() if k != "search_seconds"}
    plan = planfile.Plan(model=model.name, cluster=cluster.name, ep=ep, attention=args.attention,
                         phy2log=phy2log, num_redundant_experts=args.redundant,
                         num_experts=model.num_experts, method=args.method,
                         token_schedule=schedule, predicted=predicted, provenance=prov)
    return plan, out


def _table_ref(predictor: shuffle.Predictor, path) -> dict:
    """The n-gram tables are refitted from the profiling split of the routing trace named in
    provenance (deterministic); their content hash lets a reader check it got the same."""
    arrays = dict(trans1=predictor.ngram.trans1, trans2=predictor.ngram.trans2,
                  layer0=predictor.ngram.layer0)
    return dict(fit_from="provenance.inputs.routing", split="profile_frac",
                sha256=planfile.sha256_arrays(arrays))


def plan_cmd(args) -> int:
    if args.action == "show":
        return show_cmd(args)
    for flag in ("model", "cluster", "output"):
        if not getattr(args, flag):
            raise InputError(f"--{flag if flag != 'output' else 'output (-o)'}", "",
                             "required when making a plan")
    plan, out = build(args)
    planfile.save(plan, args.output)
    if args.export:
        exp = _export(plan, args.export)
        dest = Path(args.output).with_suffix(f".{args.export}.json")
        planfile.write_text_atomic(dest, planfile.dumps(exp))
        out["export"] = str(dest)
    if args.json:
        print(json.dumps(out, sort_keys=True, indent=1))
    else:
        _print_table(out, args.output)
    return 0


def _export(plan: planfile.Plan, fmt: str) -> dict:
    d = planfile.to_sglang(plan) if fmt == "sglang" else planfile.to_vllm(plan)
    problem = planfile.check_export(d, fmt, plan.ep, plan.num_experts)
    if problem:  # cannot happen for a validated plan; a bug if it does
        raise AssertionError(problem)
    return d


def _print_table(out: dict, dest) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"held-out figures: {out['model']} on {out['cluster']}, ep={out['ep']}, "
                    f"{out['method']} ({out['attention']} attention)")
    cols = ("remote_copies_per_token_layer", "local_activation_rate", "load_imbalance",
            "cross_gpu_bytes_per_step", "predicted_moe_layer_us", "step_time_us")
    t.add_column("placement")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for name, row in (("plan", out), ("contiguous", out["baseline_contiguous"]),
                      ("eplb", out["baseline_eplb"])):
        t.add_row(name, *(f"{row[c]:.4g}" for c in cols))
    con = Console(file=sys.stdout)
    con.print(t)
    if "prediction" in out:
        p = out["prediction"]
        con.print(f"predictor: expert precision {p['expert_precision']:.3f}, recall "
                  f"{p['expert_recall']:.3f}, top-1 GPU accuracy {p['gpu_top1_accuracy']:.3f}")
    con.print(f"search {out['search_seconds']:.1f} s; profile {out['profile_tokens']} tokens, "
              f"held-out {out['heldout_tokens']}; plan written to {dest}")


def show_cmd(args) -> int:
    if not args.plan_file:
        raise InputError("plan show", "PLAN", "give the plan file")
    plan = planfile.load(args.plan_file)
    if args.export:
        if not args.output:
            raise InputError("--output (-o)", "", "required with --export")
        planfile.write_text_atomic(args.output, planfile.dumps(_export(plan, args.export)))
    summary = _summary(plan)
    if args.json:
        print(json.dumps(summary, sort_keys=True, indent=1))
        return 0
    from rich.console import Console
    con = Console(file=sys.stdout)
    con.print(f"plan {args.plan_file}: {plan.model} on {plan.cluster}, ep={plan.ep}, "
              f"{plan.attention} attention, method {plan.method}")
    con.print(f"placement: {summary['num_layers']} layers x {summary['num_physical_experts']} "
              f"physical experts ({plan.num_redundant_experts} redundant), "
              f"{summary['experts_per_rank']} per rank; token schedule "
              f"{plan.token_schedule.get('policy')}")
    con.print(f"layer 0, rank 0 holds experts {summary['layer0_rank0']}")
    for k in METRIC_KEYS:
        if k in plan.predicted:
            con.print(f"  {k}: {plan.predicted[k]}  (contiguous "
                      f"{plan.predicted.get('baseline_contiguous', {}).get(k)}, eplb "
                      f"{plan.predicted.get('baseline_eplb', {}).get(k)})")
    return 0


def _summary(plan: planfile.Plan) -> dict:
    L, P = plan.phy2log.shape
    per = P // plan.ep
    return dict(model=plan.model, cluster=plan.cluster, ep=plan.ep, attention=plan.attention,
                method=plan.method, num_layers=L, num_physical_experts=P,
                num_redundant_experts=plan.num_redundant_experts, experts_per_rank=per,
                layer0_rank0=plan.phy2log[0, :per].tolist(),
                token_schedule=plan.token_schedule.get("policy"),
                predicted={k: plan.predicted.get(k) for k in METRIC_KEYS})
