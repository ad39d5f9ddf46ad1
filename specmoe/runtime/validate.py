"""`specmoe validate`, part 1: measure a plan's decode steps on GPUs with routing replay.

Launched with torchrun, one process per GPU (world = the plans' EP degree). For each plan and
batch size B (tokens per GPU), the step's N = ep * B tokens are trace rows standing for decode
tokens (replay.decode_rows, the same rows for every plan at one B), their requests placed by
the plan's token schedule. Output: a "measured" JSON that report.py compares with the
simulator's predictions.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from specmoe.errors import InputError
from specmoe.runtime import schedule
from specmoe.runtime.bench import build_rank_model, run_case
from specmoe.runtime.config import from_spec
from specmoe.runtime.ep import EPLayout
from specmoe.runtime.plans import RunPlan
from specmoe.runtime.replay import check_trace_fits, decode_rows
from specmoe.traces.routing import RoutingTrace


def link_mode() -> str:
    return "slow" if os.environ.get("NCCL_P2P_DISABLE") == "1" else "nvlink"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def case_tokens(trace: RoutingTrace, n: int, seed: int, num_moe_layers: int):
    """n trace rows (decode tokens: each has its request's previous token in the trace) and
    their routing ids and weights `[n, L, k]`."""
    rows, _ = decode_rows(trace, n, np.random.default_rng(seed))
    ids = trace.topk_ids[rows, :num_moe_layers].astype(np.int64)
    w = trace.topk_weights[rows, :num_moe_layers]
    return rows, ids, w


def measure(plans: list[RunPlan], trace: RoutingTrace, trace_path, batches, context: int,
            steps: int, seed: int, num_layers: int | None, device, rank: int, world: int,
            graphs: bool = True, experts: str = "torch", log=print) -> dict:
    from specmoe.specs import load_model

    spec = load_model(plans[0].model)
    cfg = from_spec(spec, num_layers)
    n_moe = len(cfg.moe_layers)
    check_trace_fits(trace, cfg.num_experts, n_moe, trace_path)
    for p in plans:
        if p.ep != world:
            raise InputError(p.source, "parallel.ep", f"is {p.ep}, but torchrun started {world} processes")
        if p.model != plans[0].model:
            raise InputError(p.source, "model", f"all plans must share one model ({plans[0].model})")
        if p.phy2log.shape[0] < n_moe:
            raise InputError(p.source, "placement.physical_to_logical_map",
                             f"has {p.phy2log.shape[0]} layers, the model {n_moe}")
    slots = {p.phy2log.shape[1] // p.ep for p in plans}
    models = {s: build_rank_model(cfg, s, device, seed=seed + rank, experts=experts)
              for s in sorted(slots)}
    cases = []
    for b in batches:
        rows, ids, w = case_tokens(trace, world * b, seed + b, n_moe)
        for p in plans:
            layout = EPLayout(p.phy2log[:n_moe], p.ep, cfg.num_experts)
            t2g = schedule.token2gpu(p.policy, rows, trace, p.phy2log, p.ep, p.source)
            m = run_case(models[layout.slots_per_rank], layout, rank, device, ids, w, t2g,
                         context, steps=steps, graphs=graphs)
            name = f"{p.name}-ep{p.ep}-{link_mode()}-b{b}"
            cases.append({"case": name, "plan": p.name, "plan_file": p.source, "ep": p.ep,
                          "mode": link_mode(), "batch": b, "policy": p.policy,
                          "rows": rows.tolist(), "token2gpu": t2g.tolist(), **m})
            if rank == 0:
                log(f"{name:40s} step {m['step_us']:9.1f} us  moe-layer {m['moe_layer_us']:8.1f} us"
                    f"  local {np.mean(m['local_activation_rate_rank']):.3f}")
    return {"kind": "specmoe.validate.measured", "version": 1, "model": plans[0].model,
            "num_layers": cfg.num_layers, "context": context, "steps": steps, "seed": seed,
            "world": world, "mode": link_mode(), "experts": experts, "timing": cases[0]["timing"] if cases else None,
            "trace": {"path": str(trace_path), "sha256": sha256(trace_path)},
            "plans": {p.name: {"file": p.source, "sha256": sha256(p.source), "ep": p.ep,
                               "policy": p.policy, "physical_to_logical_map": p.phy2log.tolist()}
                      for p in plans},
            "cases": cases}
