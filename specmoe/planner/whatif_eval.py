"""Evaluate one what-if candidate: build its step-cost model once, then bisect the request
rate with the serving simulator. Runs in a worker process (`--jobs`), so it takes and returns
plain data."""
from __future__ import annotations

import numpy as np

from specmoe.errors import InputError
from specmoe.planner.whatif import Candidate, WhatIfConfig, max_rate
from specmoe.specs import load_cluster, load_gpu, load_model, load_workload
from specmoe.traces.requests import RequestTrace, load_requests

NUM_REQUESTS = 600  # requests per probe: enough to reach steady-state batching, fast to simulate


def probe_trace(cfg: WhatIfConfig) -> RequestTrace:
    """The workload's first NUM_REQUESTS requests (arrival pattern kept; rescaled per rate)."""
    wl = load_workload(cfg.workload)
    tr = load_requests(wl.requests)
    n = min(NUM_REQUESTS, len(tr))
    return RequestTrace(tr.arrival_s[:n], tr.input_tokens[:n], tr.output_tokens[:n], tr.source)


def slos(cfg: WhatIfConfig) -> tuple[float, float, float]:
    wl = load_workload(cfg.workload)
    return (cfg.slo_ttft_ms or wl.slo_ttft_ms, cfg.slo_tpot_ms or wl.slo_tpot_ms,
            cfg.slo_percentile or wl.slo_percentile)


def fits_in_memory(c: Candidate) -> tuple[bool, str]:
    model, gpu = load_model(c.model), load_gpu(load_cluster(c.cluster).gpu)
    weights = model.total_params() * model.dtype_bytes
    per_gpu = weights / c.ep
    if per_gpu > 0.9 * gpu.memory_bytes:
        return False, (f"weights need {per_gpu / 2**30:.0f} GiB per GPU at EP={c.ep}; "
                       f"{gpu.name} has {gpu.memory_GiB:.0f} GiB")
    return True, ""


def evaluate(c: Candidate, cfg: WhatIfConfig, phy2log) -> dict:
    """The candidate's row: its configuration, cost, and the highest request rate within the
    SLOs (0.0 and `feasible: false` when it does not fit or fails at the lowest rate).
    `phy2log`: its placement, `[num_moe_layers, num_physical]`."""
    from specmoe.simulator.serving import ServingConfig, serve

    gpu = load_gpu(load_cluster(c.cluster).gpu)
    row = dict(model=c.model, cluster=c.cluster, num_gpus=c.num_gpus, ep=c.ep,
               replicas=c.replicas, attention=c.attention, placement=c.placement,
               tree_budget=c.tree_budget, label=c.label,
               cost_per_hour_usd=round(c.num_gpus * gpu.price_per_hour_usd, 4))
    infeasible = dict(max_rate_rps=0.0, feasible=False, goodput_per_gpu=0.0, requests_per_dollar=0.0,
                      probes=[])
    ok, why = fits_in_memory(c)
    if not ok:
        return dict(row, **infeasible, notes=[why])
    costs, decoder, notes = build(c, cfg, phy2log)
    ttft, tpot, pct = slos(cfg)
    config = ServingConfig(slo_ttft_ms=ttft, slo_tpot_ms=tpot, slo_percentile=pct)
    trace = probe_trace(cfg)

    def meets(rate: float) -> bool:
        r = serve(trace.scaled_to_rate(rate / c.replicas), costs, config, decoder, seed=cfg.seed)
        s = r.requests
        if r.summary["served"] < len(s):
            return False
        tp = s["tpot_s"].dropna()
        return (np.percentile(s["ttft_s"], pct) * 1e3 <= ttft
                and (tp.empty or np.percentile(tp, pct) * 1e3 <= tpot))

    try:
        rate, probes = max_rate(meets, cfg.rate_min_rps, cfg.rate_max_rps, cfg.rate_rel_tol)
    except InputError as e:  # e.g. no KV room: the candidate is reported infeasible
        return dict(row, **infeasible, notes=notes + [str(e)])
    return dict(row, max_rate_rps=round(rate, 6), feasible=rate > 0,
                goodput_per_gpu=round(rate / c.num_gpus, 6),
                requests_per_dollar=round(rate * 3600 / row["cost_per_hour_usd"], 3)
                if row["cost_per_hour_usd"] else None,
                probes=[[round(r, 6), ok] for r, ok in probes], notes=notes)


# Token Recycling's published mean accepted length, 2.67 at 81 nodes, read as a geometric
# positional acceptance p_k = α(1−α)^(k−1) with α = 0.254 (the tree planner's fit, docs/trees.md).
DEFAULT_ALPHA = 0.254
TREE_BATCH = 16  # the batch the tree shape is planned for; SpecDecoder prices every batch


def routing_for_model(model):
    """The embedded real trace when it is this model's; otherwise synthetic routing with the
    measured consecutive-token overlap (planner.tree_cost.synthetic_routing)."""
    from specmoe.planner.tree_cost import synthetic_routing
    from specmoe.simulator.routing import fits
    from specmoe.traces import load
    from specmoe.traces.commands import DEFAULT_TRACE

    trace = load(DEFAULT_TRACE)
    if fits(trace, model):
        return trace, f"routing: embedded {DEFAULT_TRACE.name}"
    return synthetic_routing(model, num_seqs=32, seq_len=64), \
        f"routing: synthetic for {model.name} (no measured trace)"


def placement_for(model_name: str, ep: int, method: str, seed: int):
    """phy2log `[num_moe_layers, num_physical]` for a model at an EP degree, fitted on the first
    quarter of the routing trace's sequences (one METIS start: what-if compares deployments,
    `specmoe plan` searches harder).
    With fewer experts than GPUs, or a count the EP size does not divide, redundant slots fill
    the remainder (replicas of the hottest experts, EPLB-style)."""
    from specmoe.planner.search import fit_placement

    model = load_model(model_name)
    routing, _ = routing_for_model(model)
    E = model.num_experts
    redundant = (-E) % ep if E >= ep else ep - E
    if redundant and method == "contiguous":
        method = "eplb"  # contiguous has no rule for choosing which experts to replicate
    prof, _ = routing.split_by_sequence(0.25)
    return fit_placement(prof, method, ep, redundant, seed=seed, restarts=1)


def build(c: Candidate, cfg: WhatIfConfig, phy2log):
    """StepCosts (placement included), the speculative decoder (or None), and notes."""
    from specmoe.planner.acceptance import geometric, positional
    from specmoe.planner.tree_cost import DraftCost, VerifyCost
    from specmoe.planner.tree_search import plan_tree
    from specmoe.simulator.serving import StepCosts
    from specmoe.simulator.specdec import SpecDecoder

    model, cluster = load_model(c.model), load_cluster(c.cluster)
    routing, note = routing_for_model(model)
    costs = StepCosts(model, cluster, c.ep, routing, seed=cfg.seed, phy2log=phy2log,
                      attention=c.attention)
    notes = [note]
    if not c.tree_budget:
        return costs, None, notes
    acc = positional(cfg.acceptance, source="config") if cfg.acceptance else geometric(DEFAULT_ALPHA)
    free = DraftCost("free")  # Token Recycling drafts from its adjacency table: no draft model
    verify = VerifyCost(model, cluster, routing, batch=TREE_BATCH, ep=c.ep, samples=1, seed=cfg.seed)
    best, _ = plan_tree("sequoia", acc, verify, free, budget=c.tree_budget, max_depth=8)
    notes.append(f"draft tree: Sequoia DP, {best.tree.budget} draft tokens, depth "
                 f"{len(best.tree.level_widths())}, E[accepted] {best.expected_accepted:.2f} at batch {TREE_BATCH}")
    return costs, SpecDecoder(model, cluster, routing, best.tree, acc, ep=c.ep, draft=free,
                              seed=cfg.seed), notes
