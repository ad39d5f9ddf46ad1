"""The Plan: one JSON file that the simulator and the runtime both read (DESIGN.md § Plan).

Sections: version, model, cluster, parallel {ep, attention}, placement
{physical_to_logical_map, num_redundant_experts, method}, token_schedule {policy, predictor,
tables}, draft_tree, predicted, provenance {inputs (with sha256), specmoe_version, seed}.
Files are written atomically; bad files raise InputError naming the file and the field.
Exports: SGLang `--init-expert-location` JSON and a vLLM expert map (see `to_vllm`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from specmoe.errors import InputError
from specmoe.fileio import read_json, sha256_file, write_text_atomic  # noqa: F401 (re-exported)
from specmoe.planner.placement import check_phy2log

VERSION = 1
ATTENTION = ("dp", "tp")
POLICIES = ("none", "tp-token", "dp-request")


@dataclass
class Plan:
    """phy2log: int `[num_moe_layers, num_physical_experts]`."""

    model: str
    cluster: str
    ep: int
    attention: str
    phy2log: np.ndarray
    num_redundant_experts: int
    num_experts: int
    method: str
    token_schedule: dict = field(default_factory=lambda: dict(policy="none", predictor=None,
                                                               tables=None))
    draft_tree: dict | None = None
    predicted: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    version: int = VERSION

    def to_json(self) -> dict:
        return dict(
            version=self.version, model=self.model, cluster=self.cluster,
            parallel=dict(ep=self.ep, attention=self.attention),
            placement=dict(physical_to_logical_map=self.phy2log.tolist(),
                           num_redundant_experts=self.num_redundant_experts,
                           num_logical_experts=self.num_experts, method=self.method),
            token_schedule=self.token_schedule, draft_tree=self.draft_tree,
            predicted=self.predicted, provenance=self.provenance)


def dumps(obj) -> str:
    """Canonical JSON: sorted keys, fixed separators, a trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=1, separators=(",", ": ")) + "\n"


def save(plan: Plan, path) -> None:
    write_text_atomic(path, dumps(plan.to_json()))


def sha256_arrays(arrays: dict) -> str:
    """Content hash of named arrays (name, dtype, shape and bytes, names sorted)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _get(d: dict, key: str, source, where: str, types):
    if not isinstance(d, dict) or key not in d:
        raise InputError(source, f"{where}{key}", "required field is missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, types):
        raise InputError(source, f"{where}{key}", f"expected {_tname(types)}, got {type(v).__name__}")
    return v


def _tname(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "an integer", str: "a string", dict: "an object", list: "a list",
                        float: "a number", type(None): "null"}.get(t, t.__name__) for t in types)


def from_json(d, source="plan") -> Plan:
    """Validate a parsed plan; every problem names the field."""
    if not isinstance(d, dict):
        raise InputError(source, "", "expected a JSON object")
    version = _get(d, "version", source, "", int)
    if version != VERSION:
        raise InputError(source, "version", f"unsupported version {version}; expected {VERSION}")
    model = _get(d, "model", source, "", str)
    cluster = _get(d, "cluster", source, "", str)
    par = _get(d, "parallel", source, "", dict)
    ep = _get(par, "ep", source, "parallel.", int)
    if ep <= 0:
        raise InputError(source, "parallel.ep", f"must be positive, got {ep}")
    attention = _get(par, "attention", source, "parallel.", str)
    if attention not in ATTENTION:
        raise InputError(source, "parallel.attention", f"expected dp or tp, got {attention!r}")
    pl = _get(d, "placement", source, "", dict)
    raw = _get(pl, "physical_to_logical_map", source, "placement.", list)
    try:
        phy2log = np.array(raw)
    except ValueError:
        raise InputError(source, "placement.physical_to_logical_map", "rows have different lengths") from None
    if phy2log.ndim != 2 or not (np.issubdtype(phy2log.dtype, np.integer) or phy2log.size == 0):
        raise InputError(source, "placement.physical_to_logical_map",
                         f"expected an integer array [num_layers, num_physical], got shape {phy2log.shape}")
    phy2log = phy2log.astype(np.int64)
    num_red = _get(pl, "num_redundant_experts", source, "placement.", int)
    E = pl.get("num_logical_experts", int(phy2log.max()) + 1 if phy2log.size else 0)
    if not isinstance(E, int) or E <= 0:
        raise InputError(source, "placement.num_logical_experts", f"expected a positive integer, got {E!r}")
    problem = check_phy2log(phy2log, E, ep)
    if problem:
        raise InputError(source, "placement.physical_to_logical_map", problem)
    if phy2log.shape[1] != E + num_red:
        raise InputError(source, "placement.num_redundant_experts",
                         f"{phy2log.shape[1]} physical slots != {E} logical + {num_red} redundant")
    # A hand-written plan may give only the placement: no token schedule means round robin.
    sched = (_get(d, "token_schedule", source, "", dict) if "token_schedule" in d
             else dict(policy="none", predictor=None, tables=None))
    policy = _get(sched, "policy", source, "token_schedule.", str)
    if policy not in POLICIES:
        raise InputError(source, "token_schedule.policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
    tree = d.get("draft_tree")
    if tree is not None:
        parents = _get(tree, "parents", source, "draft_tree.", list)
        if not parents or parents[0] != -1 or any(not isinstance(p, int) or not (0 <= p < i)
                                                  for i, p in enumerate(parents) if i):
            raise InputError(source, "draft_tree.parents", "expected [-1, ...] with parents[i] < i")
    return Plan(model=model, cluster=cluster, ep=ep, attention=attention, phy2log=phy2log,
                num_redundant_experts=num_red, num_experts=E,
                method=str(pl.get("method", "unknown")), token_schedule=sched, draft_tree=tree,
                predicted=d.get("predicted") or {}, provenance=d.get("provenance") or {},
                version=version)


def load(path) -> Plan:
    return from_json(read_json(path), path)


def to_sglang(plan: Plan) -> dict:
    """SGLang `--init-expert-location` file: `{"physical_to_logical_map": [L][P]}`."""
    return {"physical_to_logical_map": plan.phy2log.tolist()}


def to_vllm(plan: Plan) -> dict:
    """vLLM-style expert maps, one per layer and EP rank.

    vLLM's FusedMoE keeps, on each EP rank, an `expert_map` tensor `[global_num_experts]`
    mapping a global expert id to its local index on that rank, -1 when the rank does not
    hold it (vllm/model_executor/layers/fused_moe/layer.py, `determine_expert_map`). We
    emit `expert_map[layer][rank][logical] = local slot index or -1`; with redundant experts
    a logical expert can be local on several ranks (each rank's own replica), and the
    physical-slot view vLLM's EPLB uses is included as `physical_to_logical_map`.
    """
    L, P = plan.phy2log.shape
    per_rank = P // plan.ep
    maps = np.full((L, plan.ep, plan.num_experts), -1, np.int64)
    for layer in range(L):
        for rank in range(plan.ep):
            slots = plan.phy2log[layer, rank * per_rank:(rank + 1) * per_rank]
            maps[layer, rank, slots] = np.arange(per_rank)
    return {"format": "vllm-expert-map", "version": 1, "ep_size": plan.ep,
            "num_layers": L, "num_logical_experts": plan.num_experts,
            "num_physical_experts": P, "num_local_physical_experts": per_rank,
            "expert_map": maps.tolist(), "physical_to_logical_map": plan.phy2log.tolist()}


def check_export(d: dict, fmt: str, ep: int, num_experts: int) -> str | None:
    """The exports' format rules; a problem description or None."""
    phy2log = np.asarray(d.get("physical_to_logical_map"))
    problem = check_phy2log(phy2log, num_experts, ep)
    if problem or fmt == "sglang":
        return problem
    maps = np.asarray(d["expert_map"])
    L, P = phy2log.shape
    if maps.shape != (L, ep, num_experts):
        return f"expert_map has shape {maps.shape}, expected {(L, ep, num_experts)}"
    per_rank = P // ep
    for layer in range(L):
        for rank in range(ep):
            local = maps[layer, rank]
            held = np.flatnonzero(local >= 0)
            if sorted(local[held].tolist()) != list(range(per_rank)):
                return f"layer {layer} rank {rank}: local indices are not 0..{per_rank - 1}"
            if not np.array_equal(phy2log[layer, rank * per_rank + local[held]], held):
                return f"layer {layer} rank {rank}: expert_map disagrees with physical_to_logical_map"
    return None
