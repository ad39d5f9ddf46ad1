"""Acceptance models for draft trees, and fitting them from measured acceptance traces.

An acceptance model gives, for a node at depth d (the root is depth 0) that the target
accepted, the probability that its child of rank r (0 = top-ranked draft candidate) is the one
accepted next. Children of one node are mutually exclusive (at most one is accepted), so each
row sums to at most 1. Two families, as in issue 5:

  (a) positional (Sequoia, Chen et al. 2024, arXiv:2402.12374, § 3.1 "positional acceptance
      assumption"): the probability depends on the rank only, p_k for k = 1..K;
  (b) chain: one acceptance rate per depth, alpha_d; only the top-ranked child is drafted.

Both are stored as one matrix `p [max_depth, max_rank]`; depths past the last row reuse it.
(c) Measured acceptance traces (COMMON.md contract) are read by `load_trace`, and (a) and (b)
are fitted from them by counting (`fit_positional`, `fit_chain`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specmoe.errors import InputError

KINDS = ("positional", "chain", "depth-positional")


@dataclass(frozen=True)
class Acceptance:
    """p: float [max_depth, max_rank]; p[d-1, r] = P(rank-r child of an accepted depth-(d-1) node is accepted)."""

    p: np.ndarray
    kind: str = "positional"
    source: str = "inline"
    max_depth: int = field(init=False)
    max_rank: int = field(init=False)

    def __post_init__(self):
        p = np.atleast_2d(np.asarray(self.p, dtype=np.float64))
        if p.size == 0 or not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
            raise InputError(self.source, "p", "acceptance probabilities must be finite and in [0, 1]")
        if (p.sum(axis=1) > 1 + 1e-9).any():
            raise InputError(self.source, "p", "the children of one node are mutually exclusive: "
                             f"each row must sum to <= 1, got {p.sum(axis=1).max():.4f}")
        if self.kind not in KINDS:
            raise InputError(self.source, "kind", f"expected one of {', '.join(KINDS)}")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "max_depth", p.shape[0])
        object.__setattr__(self, "max_rank", p.shape[1])

    def rows(self, depth: int) -> np.ndarray:
        """`[depth, max_rank]`: rows for child depths 1..depth (the last row repeats)."""
        idx = np.minimum(np.arange(depth), self.max_depth - 1)
        return self.p[idx]

    def prob(self, depth: int, rank: int) -> float:
        """P(the rank-`rank` child, at depth `depth` >= 1, of an accepted node is accepted)."""
        if rank >= self.max_rank:
            return 0.0
        return float(self.p[min(depth, self.max_depth) - 1, rank])

    def to_json(self) -> dict:
        if self.kind == "positional":
            return {"kind": "positional", "p": [round(float(x), 6) for x in self.p[0]]}
        if self.kind == "chain":
            return {"kind": "chain", "alpha": [round(float(x), 6) for x in self.p[:, 0]]}
        return {"kind": "depth-positional", "p": [[round(float(x), 6) for x in r] for r in self.p]}


def positional(p_k, source="inline") -> Acceptance:
    """Sequoia's positional vector p_k, k = 1..K (model (a))."""
    return Acceptance(np.asarray(p_k, dtype=np.float64)[None, :], "positional", source)


def chain(alphas, source="inline") -> Acceptance:
    """One acceptance rate per depth, alpha_1..alpha_D (model (b)); only rank 0 is ever accepted."""
    return Acceptance(np.asarray(alphas, dtype=np.float64)[:, None], "chain", source)


def geometric(alpha: float, max_rank: int = 8, source="geometric") -> Acceptance:
    """p_k = alpha (1 - alpha)^(k-1): the k-th candidate is right only if the k-1 above were wrong
    and each is right with probability alpha. A one-parameter shape for fitting a published mean."""
    k = np.arange(max_rank)
    return positional(alpha * (1 - alpha) ** k, source)


# ---------------------------------------------------------------- acceptance traces (c)


@dataclass
class AcceptanceTrace:
    """steps: list of (parents [n+1] int, accepted [m] node ids along the accepted path)."""

    model: str
    method: str
    temperature: float
    steps: list[tuple[np.ndarray, list[int]]]


def load_trace(path) -> AcceptanceTrace:
    data = _read_json(path)
    return trace_from_dict(data, path)


def trace_from_dict(data: dict, source) -> AcceptanceTrace:
    """Validate the acceptance-trace JSON (COMMON.md) and return it."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise InputError(source, "version", "expected an acceptance trace with version 1")
    for k in ("model", "method", "temperature", "steps"):
        if k not in data:
            raise InputError(source, k, "required key is missing")
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise InputError(source, "steps", "expected a non-empty list")
    steps = []
    for i, s in enumerate(data["steps"]):
        where = f"steps[{i}]"
        if not isinstance(s, dict) or "parents" not in s or "accepted" not in s:
            raise InputError(source, where, "expected an object with parents and accepted")
        from specmoe.planner.trees import check_parents
        parents = check_parents(s["parents"], source, f"{where}.parents")
        acc = s["accepted"]
        if not isinstance(acc, list) or not all(isinstance(a, int) for a in acc):
            raise InputError(source, f"{where}.accepted", "expected a list of node ids")
        cur = 0
        for a in acc:
            if not 0 < a < len(parents) or parents[a] != cur:
                raise InputError(source, f"{where}.accepted",
                                 f"node {a} is not a child of the previously accepted node {cur}")
            cur = a
        steps.append((parents, list(acc)))
    try:
        temperature = float(data["temperature"])
    except (TypeError, ValueError):
        raise InputError(source, "temperature", "expected a number") from None
    return AcceptanceTrace(str(data["model"]), str(data["method"]), temperature, steps)


def _counts(trace: AcceptanceTrace, max_depth: int, max_rank: int):
    """offered, accepted: int [max_depth, max_rank], indexed by child depth - 1 and rank.

    offered[d, r] counts accepted depth-d nodes that had a rank-r child in the tree;
    accepted[d, r] counts those whose rank-r child was accepted next.
    """
    offered = np.zeros((max_depth, max_rank), np.int64)
    accepted = np.zeros((max_depth, max_rank), np.int64)
    for parents, path in trace.steps:
        children = _children(parents)
        cur, depth = 0, 0
        for node in list(path) + [None]:
            kids = children[cur]
            d = min(depth, max_depth - 1)
            offered[d, :min(len(kids), max_rank)] += 1
            if node is None:
                break
            r = kids.index(node)
            if r < max_rank:
                accepted[d, r] += 1
            cur, depth = node, depth + 1
    return offered, accepted


def _children(parents) -> list[list[int]]:
    kids = [[] for _ in parents]
    for i in range(1, len(parents)):
        kids[parents[i]].append(i)
    return kids


def _ratio(acc, off, source, what):
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(off > 0, acc / np.maximum(off, 1), 0.0)
    if not (off > 0).any():
        raise InputError(source, "steps", f"no drafted {what} to fit from")
    return p


def fit_positional(trace: AcceptanceTrace, max_rank: int | None = None, source="trace") -> Acceptance:
    """p_k = (# times an accepted node's rank-k child was accepted) / (# accepted nodes with >= k children)."""
    K = max_rank or max(max((len(c) for c in _children(p)), default=1) for p, _ in trace.steps)
    off, acc = _counts(trace, 1, max(K, 1))
    p = _ratio(acc, off, source, "children")[0]
    # ranks whose estimates would overflow the mutual-exclusion bound are clipped in order
    return positional(_clip_row(p), source)


def fit_chain(trace: AcceptanceTrace, max_depth: int | None = None, source="trace") -> Acceptance:
    """alpha_d = (# accepted depth-(d-1) nodes whose top-ranked child was accepted) / (# that had one)."""
    D = max_depth or max(int(_depths(p).max()) for p, _ in trace.steps)
    off, acc = _counts(trace, max(D, 1), 1)
    p = _ratio(acc[:, 0], off[:, 0], source, "tokens")
    seen = np.nonzero(off[:, 0])[0]
    p = p[: seen.max() + 1]
    for d in range(1, len(p)):  # depths never offered inherit the shallower rate
        if off[d, 0] == 0:
            p[d] = p[d - 1]
    return chain(p, source)


def fit_depth_positional(trace: AcceptanceTrace, max_depth: int, max_rank: int, source="trace") -> Acceptance:
    """Both at once: one p_k vector per depth (cells never offered fall back to the pooled p_k)."""
    off, acc = _counts(trace, max_depth, max_rank)
    pooled = _ratio(acc.sum(0), off.sum(0), source, "children")
    p = np.where(off > 0, acc / np.maximum(off, 1), pooled[None, :])
    return Acceptance(np.stack([_clip_row(r) for r in p]), "depth-positional", source)


def _clip_row(p: np.ndarray) -> np.ndarray:
    out, room = np.zeros_like(p), 1.0
    for i, x in enumerate(p):
        out[i] = min(x, room)
        room -= out[i]
    return out


def _depths(parents) -> np.ndarray:
    d = np.zeros(len(parents), np.int64)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


# ---------------------------------------------------------------- CLI argument


def parse_acceptance(arg: str) -> Acceptance:
    """`--acceptance ACC`: an inline list of p_k ("0.6,0.2,0.05" or "[0.6, 0.2]"), or a JSON file
    holding an acceptance trace (fitted to model (a)), {"p": [...]} or {"alpha": [...]}."""
    text = arg.strip()
    if text and (text[0] == "[" or text[0].isdigit() or text[0] == ".") and not Path(text).exists():
        try:
            vals = json.loads(text if text.startswith("[") else f"[{text}]")
            vals = [float(v) for v in vals]
        except (json.JSONDecodeError, TypeError, ValueError):
            raise InputError("--acceptance", "", f"expected a list of numbers or a JSON file, got {arg!r}") from None
        if not vals:
            raise InputError("--acceptance", "", "empty list")
        return positional(vals, "--acceptance")
    data = _read_json(text)
    if isinstance(data, dict) and "steps" in data:
        return fit_positional(trace_from_dict(data, text), source=text)
    if isinstance(data, dict) and ("p" in data or "alpha" in data):
        key = "p" if "p" in data else "alpha"
        vals = data[key]
        if not isinstance(vals, list) or not vals:
            raise InputError(text, key, "expected a non-empty list")
        try:
            arr = np.asarray(vals, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(text, key, "expected numbers") from None
        if key == "alpha":
            return chain(arr, text)
        return positional(arr, text) if arr.ndim == 1 else Acceptance(arr, "depth-positional", text)
    raise InputError(text, "", 'expected an acceptance trace (with "steps"), {"p": [...]} or {"alpha": [...]}')


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, "", f"cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(path, "", f"not valid JSON ({e.msg} at line {e.lineno})") from None
