"""RoutingTrace: which experts each token chose at each MoE layer (DESIGN.md § Routing trace).

The on-disk form is an `.npz` with `topk_ids`, `topk_weights`, `seq_id`, `position`, optional
`token_id` and a JSON `meta` string. Loading never unpickles (`allow_pickle=False`).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

from specmoe.errors import InputError
from specmoe.fileio import write_atomic

PHASES = ("prefill", "decode", "mixed")
REQUIRED_META = ("model", "num_experts", "top_k", "phase", "source")


@dataclass
class RoutingTrace:
    """Per-token routing.

    topk_ids:     int32   [num_tokens, num_moe_layers, top_k], -1 = no expert
    topk_weights: float32 [num_tokens, num_moe_layers, top_k]
    seq_id:       int64   [num_tokens]
    position:     int64   [num_tokens]
    token_id:     int64   [num_tokens] or None
    meta: model, num_experts, top_k, phase, source; optional first_moe_layer,
          num_shared_experts.
    """

    topk_ids: np.ndarray
    topk_weights: np.ndarray
    seq_id: np.ndarray
    position: np.ndarray
    meta: dict
    token_id: np.ndarray | None = None
    num_tokens: int = field(init=False)
    num_layers: int = field(init=False)

    def __post_init__(self):
        self.num_tokens, self.num_layers = self.topk_ids.shape[:2]

    @property
    def num_experts(self) -> int:
        return int(self.meta["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    def select(self, token_mask: np.ndarray) -> "RoutingTrace":
        """The tokens where `token_mask [num_tokens]` is true, in order."""
        return RoutingTrace(self.topk_ids[token_mask], self.topk_weights[token_mask],
                            self.seq_id[token_mask], self.position[token_mask], dict(self.meta),
                            None if self.token_id is None else self.token_id[token_mask])

    def split_by_sequence(self, frac: float) -> tuple["RoutingTrace", "RoutingTrace"]:
        """First `frac` of the sequences (in order of first appearance), then the rest."""
        seqs = np.unique(self.seq_id)
        _, first = np.unique(self.seq_id, return_index=True)
        ordered = seqs[np.argsort(first)]
        cut = min(max(1, int(round(frac * len(ordered)))), max(1, len(ordered) - 1))
        head = np.isin(self.seq_id, ordered[:cut])
        return self.select(head), self.select(~head)


def validate(trace: RoutingTrace, source) -> RoutingTrace:
    """Check shapes, dtypes, ranges and meta; return the trace with canonical dtypes."""
    ids = np.asarray(trace.topk_ids)
    if ids.ndim != 3:
        raise InputError(source, "topk_ids", f"expected [num_tokens, num_moe_layers, top_k], got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(source, "topk_ids", f"expected integers, got {ids.dtype}")
    w = np.asarray(trace.topk_weights)
    if w.shape != ids.shape:
        raise InputError(source, "topk_weights", f"expected shape {ids.shape}, got {w.shape}")
    if not np.issubdtype(w.dtype, np.floating) or not np.isfinite(w).all():
        raise InputError(source, "topk_weights", "expected finite floats")
    n = ids.shape[0]
    for name in ("seq_id", "position") + (("token_id",) if trace.token_id is not None else ()):
        a = np.asarray(getattr(trace, name))
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise InputError(source, name, f"expected int64 [{n}], got {a.dtype} {a.shape}")
    if n and np.asarray(trace.position).min() < 0:
        raise InputError(source, "position", "negative position")
    meta = trace.meta
    if not isinstance(meta, dict):
        raise InputError(source, "meta", "expected a JSON object")
    for k in REQUIRED_META:
        if k not in meta:
            raise InputError(source, f"meta.{k}", "required key is missing")
    num_experts, top_k = meta["num_experts"], meta["top_k"]
    if not isinstance(num_experts, int) or num_experts <= 0:
        raise InputError(source, "meta.num_experts", f"expected a positive integer, got {num_experts!r}")
    if top_k != ids.shape[2]:
        raise InputError(source, "meta.top_k", f"is {top_k!r} but topk_ids has {ids.shape[2]} columns")
    if meta["phase"] not in PHASES:
        raise InputError(source, "meta.phase", f"expected one of {', '.join(PHASES)}, got {meta['phase']!r}")
    if ids.size and (ids.min() < -1 or ids.max() >= num_experts):
        bad = int(ids.max()) if ids.max() >= num_experts else int(ids.min())
        raise InputError(source, "topk_ids", f"expert id {bad} outside [-1, {num_experts})")
    return RoutingTrace(ids.astype(np.int32), w.astype(np.float32),
                        np.asarray(trace.seq_id, np.int64), np.asarray(trace.position, np.int64),
                        dict(meta),
                        None if trace.token_id is None else np.asarray(trace.token_id, np.int64))


def load(path) -> RoutingTrace:
    """Read and validate a routing-trace `.npz`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        why = str(e)
        if "pickle" in why:  # np.load falls back to unpickling anything that is not zip/npy
            with open(path, "rb") as f:
                is_zip = f.read(4) == b"PK\x03\x04"
            why = "it holds pickled objects, which are never loaded" if is_zip else "not a zip archive"
        raise InputError(path, "", f"not a readable .npz routing trace ({why})") from None
    for k in ("topk_ids", "topk_weights", "seq_id", "position", "meta"):
        if k not in arrays:
            raise InputError(path, k, "required array is missing")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError:
        raise InputError(path, "meta", "expected a JSON string") from None
    trace = RoutingTrace(arrays["topk_ids"], arrays["topk_weights"], arrays["seq_id"],
                         arrays["position"], meta, arrays.get("token_id"))
    if np.asarray(trace.topk_ids).ndim != 3:
        raise InputError(path, "topk_ids", f"expected 3 dimensions, got shape {trace.topk_ids.shape}")
    return validate(trace, path)


def save(trace: RoutingTrace, path) -> None:
    """Write atomically: a temporary file in the same folder, renamed into place."""
    arrays = dict(topk_ids=trace.topk_ids.astype(np.int32),
                  topk_weights=trace.topk_weights.astype(np.float32),
                  seq_id=trace.seq_id.astype(np.int64), position=trace.position.astype(np.int64),
                  meta=np.array(json.dumps(trace.meta, sort_keys=True)))
    if trace.token_id is not None:
        arrays["token_id"] = trace.token_id.astype(np.int64)
    write_npz_atomic(path, arrays)


def write_npz_atomic(path, arrays: dict) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    write_atomic(path, write)
