"""Importers from other tools' routing dumps into RoutingTrace (or ExpertCounts)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specmoe.errors import InputError
from specmoe.traces.routing import RoutingTrace, validate


@dataclass
class ExpertCounts:
    """Per-layer token counts per logical expert, without per-token detail.

    logical_count: int64 [num_moe_layers, num_experts]
    """

    logical_count: np.ndarray
    meta: dict


def import_esft(folder, model="deepseek-v2-lite", num_experts=64, top_k=6, first_moe_layer=1) -> RoutingTrace:
    """DeepSeek ESFT `expert_weights_<L>.txt` dumps, one file per MoE layer L = 1..num_layers.

    Each line is one sequence: tab-separated expert ids (top_k per token), a double tab, then
    the gate weights in the same order. Token order is the same in every layer's file.
    """
    folder = Path(folder)
    files = {int(m.group(1)): p for p in folder.glob("expert_weights_*.txt")
             if (m := re.fullmatch(r"expert_weights_(\d+)\.txt", p.name))}
    if not files:
        raise InputError(folder, "", "no expert_weights_<L>.txt files found")
    layers = sorted(files)
    if layers != list(range(layers[0], layers[0] + len(layers))):
        raise InputError(folder, "expert_weights_<L>.txt", f"layer numbers are not contiguous: {layers}")
    per_layer = [_read_esft_layer(files[L], top_k) for L in layers]
    lens0 = per_layer[0][2]
    for L, (_, _, lens) in zip(layers, per_layer):
        if not np.array_equal(lens, lens0):
            raise InputError(files[L], "", "sequence lengths differ from the first layer's file")
    ids = np.stack([p[0] for p in per_layer], axis=1)  # [T, L, K]
    w = np.stack([p[1] for p in per_layer], axis=1)  # [T, L, K]
    seq_id = np.repeat(np.arange(len(lens0)), lens0)
    position = np.concatenate([np.arange(n) for n in lens0]) if len(lens0) else np.zeros(0, int)
    meta = dict(model=model, num_experts=num_experts, top_k=top_k, phase="prefill",
                source=f"esft:{folder.name}", first_moe_layer=first_moe_layer)
    return validate(RoutingTrace(ids, w, seq_id, position, meta), folder)


def _read_esft_layer(path: Path, top_k: int):
    ids_rows, w_rows, lens = [], [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t\t")
            if len(parts) != 2:
                raise InputError(path, f"line {lineno}", "expected ids, a double tab, then weights")
            try:
                ids = np.array(parts[0].split("\t"), dtype=np.int64)
                w = np.array(parts[1].split("\t"), dtype=np.float64)
            except ValueError:
                raise InputError(path, f"line {lineno}", "non-numeric expert id or weight") from None
            if len(ids) != len(w):
                raise InputError(path, f"line {lineno}", f"{len(ids)} ids but {len(w)} weights")
            if len(ids) % top_k:
                raise InputError(path, f"line {lineno}", f"{len(ids)} ids is not a multiple of top_k={top_k}")
            ids_rows.append(ids)
            w_rows.append(w)
            lens.append(len(ids))
    if not ids_rows:
        raise InputError(path, "", "no sequences")
    lens = np.array(lens)
    ids = np.concatenate(ids_rows).reshape(-1, top_k)
    w = np.concatenate(w_rows).reshape(-1, top_k)
    return ids, w, lens // top_k


def import_jsonl(path, model="unknown", num_experts=None, phase="prefill") -> RoutingTrace:
    """One JSON object per token per layer: {"seq","pos","layer","experts":[...],"weights":[...]}.

    `layer` is the model's layer index; the smallest seen is `first_moe_layer`, and layers
    must be contiguous from it. Tokens with fewer experts than the widest are padded with -1.
    """
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(path, f"line {lineno}", "not valid JSON") from None
            for k in ("seq", "pos", "layer", "experts"):
                if k not in r:
                    raise InputError(path, f"line {lineno}: {k}", "required key is missing")
            ws = r.get("weights", [1.0 / max(1, len(r["experts"]))] * len(r["experts"]))
            if len(ws) != len(r["experts"]):
                raise InputError(path, f"line {lineno}: weights", "length differs from experts")
            rows.append((int(r["seq"]), int(r["pos"]), int(r["layer"]), list(r["experts"]), list(ws)))
    if not rows:
        raise InputError(path, "", "no records")
    layers = sorted({r[2] for r in rows})
    if layers != list(range(layers[0], layers[0] + len(layers))):
        raise InputError(path, "layer", f"layers are not contiguous: {layers[:10]}")
    tokens = sorted({(r[0], r[1]) for r in rows})
    tok_index = {t: i for i, t in enumerate(tokens)}
    top_k = max(len(r[3]) for r in rows)
    ids = np.full((len(tokens), len(layers), top_k), -1, np.int64)
    w = np.zeros((len(tokens), len(layers), top_k), np.float32)
    seen = np.zeros((len(tokens), len(layers)), bool)
    for s, p, layer, e, ww in rows:
        t, li = tok_index[(s, p)], layer - layers[0]
        if seen[t, li]:
            raise InputError(path, f"seq {s} pos {p} layer {layer}", "duplicate record")
        seen[t, li] = True
        ids[t, li, :len(e)] = e
        w[t, li, :len(ww)] = ww
    if not seen.all():
        t, li = map(int, np.argwhere(~seen)[0])
        raise InputError(path, f"seq {tokens[t][0]} pos {tokens[t][1]}", f"no record for layer {layers[li]}")
    if num_experts is None:
        num_experts = int(ids.max()) + 1
    meta = dict(model=model, num_experts=int(num_experts), top_k=top_k, phase=phase,
                source=f"jsonl:{Path(path).name}", first_moe_layer=layers[0])
    seq = np.array([t[0] for t in tokens], np.int64)
    pos = np.array([t[1] for t in tokens], np.int64)
    return validate(RoutingTrace(ids, w, seq, pos, meta), path)


def import_sglang(path, model="unknown", num_experts=None, first_moe_layer=None):
    """SGLang expert-distribution recorder dumps (`torch.save` files, read with weights_only).

    - `per_token` dumps hold `records`, each with `topk_ids_of_layer [num_layers, T, K]`;
      the recorder keeps no request ids, so a forward pass is taken as one sequence.
      Dense layers are recorded as all-zero rows; leading ones are dropped
      (or give `first_moe_layer`).
    - `stat` dumps hold `logical_count [num_layers, num_experts]` (or with a leading pass
      dimension, summed): an ExpertCounts comes back.
    """
    try:
        import torch
    except ImportError:
        raise InputError(path, "", "reading SGLang dumps needs torch (pip install 'specmoe[runtime]')") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise InputError(path, "", f"not a readable torch file ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(path, "", "expected a dict with 'records' or 'logical_count'")
    if "logical_count" in data:
        counts = np.asarray(data["logical_count"], dtype=np.int64)
        if counts.ndim == 3:
            counts = counts.sum(0)
        if counts.ndim != 2:
            raise InputError(path, "logical_count", f"expected [num_layers, num_experts], got {counts.shape}")
        first = first_moe_layer if first_moe_layer is not None else _leading_empty(counts.sum(1))
        counts = counts[first:]
        meta = dict(model=model, num_experts=counts.shape[1], phase="mixed",
                    source=f"sglang-stat:{Path(path).name}", first_moe_layer=first)
        return ExpertCounts(counts, meta)
    if "records" not in data:
        raise InputError(path, "", "expected a dict with 'records' or 'logical_count'")
    chunks, seq, pos = [], [], []
    for i, rec in enumerate(data["records"]):
        if not isinstance(rec, dict) or "topk_ids_of_layer" not in rec:
            raise InputError(path, f"records[{i}].topk_ids_of_layer", "missing")
        t = np.asarray(rec["topk_ids_of_layer"], dtype=np.int64)
        if t.ndim != 3:
            raise InputError(path, f"records[{i}].topk_ids_of_layer", f"expected [layers, T, K], got {t.shape}")
        if t.shape[1] == 0:
            continue
        chunks.append(t.transpose(1, 0, 2))  # [T, layers, K]
        seq.append(np.full(t.shape[1], int(rec.get("forward_pass_id", i))))
        pos.append(np.arange(t.shape[1]))
    if not chunks:
        raise InputError(path, "records", "no tokens recorded")
    ids = np.concatenate(chunks)
    first = first_moe_layer if first_moe_layer is not None else _leading_empty((ids != 0).sum((0, 2)))
    ids = ids[:, first:]
    if num_experts is None:
        num_experts = int(ids.max()) + 1
    k = ids.shape[2]
    meta = dict(model=model, num_experts=int(num_experts), top_k=k, phase="mixed",
                source=f"sglang-per-token:{Path(path).name}", first_moe_layer=first)
    w = np.full(ids.shape, 1.0 / k, np.float32)  # the recorder keeps no gate weights
    return validate(RoutingTrace(ids, w, np.concatenate(seq), np.concatenate(pos), meta), path)


def _leading_empty(per_layer_activity: np.ndarray) -> int:
    nz = np.flatnonzero(per_layer_activity)
    return int(nz[0]) if len(nz) else 0
