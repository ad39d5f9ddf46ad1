"""Read the parts of a Plan JSON the runtime executes (COMMON.md § Plan JSON).

Needed: `model` (preset name or inline spec), `parallel.ep`, `placement.physical_to_logical_map`;
optional `token_schedule.policy`, `cluster`, `name`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specmoe.errors import InputError


@dataclass
class RunPlan:
    name: str
    model: str
    cluster: str | None
    ep: int
    phy2log: np.ndarray  # [num_moe_layers, num_physical]
    policy: str  # token_schedule.policy: none | dp-request | tp-token
    source: str


def load_run_plan(path) -> RunPlan:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, "", f"not a readable JSON plan ({e})") from None
    if not isinstance(d, dict):
        raise InputError(path, "", "expected a JSON object")
    model = d.get("model")
    if isinstance(model, dict):
        model = model.get("name")
    if not isinstance(model, str):
        raise InputError(path, "model", "expected a model preset name")
    par = d.get("parallel") or {}
    ep = par.get("ep")
    if not isinstance(ep, int) or ep <= 0:
        raise InputError(path, "parallel.ep", f"expected a positive integer, got {ep!r}")
    try:
        phy2log = np.asarray(d["placement"]["physical_to_logical_map"], dtype=np.int64)
    except (KeyError, TypeError):
        raise InputError(path, "placement.physical_to_logical_map", "required field is missing") from None
    except ValueError:
        raise InputError(path, "placement.physical_to_logical_map",
                         "expected a rectangular list of integer lists") from None
    if phy2log.ndim != 2 or phy2log.shape[1] % ep:
        raise InputError(path, "placement.physical_to_logical_map",
                         f"expected [num_moe_layers, num_physical] with num_physical divisible by "
                         f"ep={ep}, got shape {list(phy2log.shape)}")
    ts = d.get("token_schedule") or {}
    policy = ts.get("policy") if isinstance(ts, dict) else None
    policy = policy or "none"
    cluster = d.get("cluster")
    if isinstance(cluster, dict):
        cluster = cluster.get("name")
    name = d.get("name") or path.stem.removeprefix("plan-")
    return RunPlan(name, model, cluster, ep, phy2log, policy, str(path))
