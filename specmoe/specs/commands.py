"""`specmoe specs list|show`."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from specmoe import specs
from specmoe.errors import InputError


def list_cmd(args) -> int:
    names = {kind: specs.list_presets(kind) for kind in specs.KINDS}
    if args.json:
        print(json.dumps(names, indent=1, sort_keys=True))
        return 0
    table = Table("kind", "presets", title="specmoe presets")
    for kind, ns in names.items():
        table.add_row(kind, ", ".join(ns))
    Console().print(table)
    return 0


def _derived(kind: str, spec) -> dict:
    if kind == "model":
        return dict(num_moe_layers=spec.num_moe_layers, total_params_B=round(spec.total_params() / 1e9, 2),
                    active_params_B=round(spec.active_params() / 1e9, 2),
                    kv_bytes_per_token=spec.kv_bytes_per_token(),
                    expert_weight_MiB=round(spec.expert_weight_bytes() / 2**20, 2))
    if kind == "cluster":
        return dict(num_gpus=spec.num_gpus)
    return {}


def show_cmd(args) -> int:
    kinds = [args.kind] if args.kind else [k for k in specs.KINDS if args.name in specs.list_presets(k)]
    if not kinds:
        known = "; ".join(f"{k}: {', '.join(specs.list_presets(k))}" for k in specs.KINDS)
        raise InputError("NAME", "", f"no preset named {args.name!r}; known: {known}")
    kind = kinds[0]
    spec = specs.load(kind, args.name)
    out = dict(kind=kind, **specs.to_dict(spec), derived=_derived(kind, spec))
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    table = Table("field", "value", title=f"{kind} {spec.name}")
    for k, v in out.items():
        table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    Console().print(table)
    return 0
