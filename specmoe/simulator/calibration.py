"""Calibration: measured kernel times and collective curves (DESIGN.md § Calibration).

Schema (docs/simulator.md has the full description; tests/simulator/data/calibration.json is
an example):

    {"device": "NVIDIA H200", "date": "2026-11-29", "versions": {...}, "command": "...",
     "gemm":         [{"m", "n", "k", "us"}, ...],                  # C[m,n] = A[m,k] B[k,n], bf16
     "grouped_gemm": [{"tokens", "experts", "hidden", "ffn", "us"}, ...],  # SwiGLU experts
     "attention":    [{"batch", "context", "heads", "kv_heads", "head_dim", "us"}, ...],  # decode
     "collectives":  {"all_to_all": {"nvlink": [[bytes, us], ...], "pcie": [...], ...}, ...}}

Collective curves: `bytes` is what each rank sends to the other ranks (its send buffer minus
the chunk it keeps); `us` is the whole collective. Only `device`, `date`, `versions` and
`command` are required; each table may be absent or empty.

Lookups interpolate linearly inside the measured grid (exact match on the shape fields that
name a kernel, e.g. a GEMM's n and k) and return NaN outside it; the caller then falls back to
the roofline and records a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.interpolate import LinearNDInterpolator

from specmoe.errors import InputError
from specmoe.fileio import read_json

TABLES = {"gemm": ("m", "n", "k", "us"),
          "grouped_gemm": ("tokens", "experts", "hidden", "ffn", "us"),
          "attention": ("batch", "context", "heads", "kv_heads", "head_dim", "us")}
COLLECTIVES = ("all_to_all", "all_gather", "reduce_scatter", "all_reduce", "p2p")
LINK_CLASSES = ("nvlink", "pcie", "network")


@dataclass
class Calibration:
    """Measured tables. Each table is a float64 array `[rows, columns of TABLES[name]]`;
    `collectives[kind][link_class]` is `[points, 2]` (bytes, us) sorted by bytes."""

    device: str
    date: str
    versions: dict
    command: str
    tables: dict[str, np.ndarray] = field(default_factory=dict)
    collectives: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    source: str = ""

    def _rows(self, name: str, match: dict) -> np.ndarray:
        tab = self.tables.get(name)
        if tab is None or not len(tab):
            return np.zeros((0, len(TABLES[name])))
        cols = TABLES[name]
        keep = np.ones(len(tab), bool)
        for k, v in match.items():
            keep &= tab[:, cols.index(k)] == v
        return tab[keep]

    def lookup(self, name: str, match: dict, free: tuple[str, ...], query: np.ndarray) -> np.ndarray:
        """Interpolated microseconds for `query [N, len(free)]` among rows whose fields equal
        `match`; NaN outside the grid's convex hull (or when no row matches)."""
        rows = self._rows(name, match)
        query = np.atleast_2d(np.asarray(query, np.float64))
        out = np.full(len(query), np.nan)
        if not len(rows):
            return out
        cols = TABLES[name]
        x = rows[:, [cols.index(f) for f in free]]
        y = rows[:, -1]
        varying = [i for i in range(len(free)) if np.unique(x[:, i]).size > 1]
        fixed = [i for i in range(len(free)) if i not in varying]
        ok = np.ones(len(query), bool)
        for i in fixed:  # a degenerate axis: only its one measured value is inside the grid
            ok &= query[:, i] == x[0, i]
        if len(varying) == 0:
            out[ok] = y.mean()
        elif len(varying) == 1:
            i = varying[0]
            order = np.argsort(x[:, i])
            xs, ys = x[order, i], y[order]
            inside = ok & (query[:, i] >= xs[0]) & (query[:, i] <= xs[-1])
            out[inside] = np.interp(query[inside, i], xs, ys)
        else:
            interp = LinearNDInterpolator(x[:, varying], y)
            out[ok] = interp(query[ok][:, varying])
        return out

    def collective_us(self, kind: str, link_class: str, nbytes: np.ndarray) -> np.ndarray:
        """Interpolated (log-log) collective time; NaN outside the measured range."""
        curve = self.collectives.get(kind, {}).get(link_class)
        nbytes = np.asarray(nbytes, np.float64)
        out = np.full(nbytes.shape, np.nan)
        if curve is None or len(curve) < 2:
            return out
        inside = (nbytes >= curve[0, 0]) & (nbytes <= curve[-1, 0])
        out[inside] = np.exp(np.interp(np.log(nbytes[inside]), np.log(curve[:, 0]),
                                       np.log(curve[:, 1])))
        return out

    def collective_override(self, kind, topo, split, t_s: np.ndarray) -> np.ndarray:
        """Replace alpha-beta times by the measured curve of the traffic's top link class where
        the busiest rank's bytes (sent or received, so a matrix and its transpose agree) lie
        inside it; `split` is a network.Split of the batch, `t_s [B]`."""
        if kind not in self.collectives:
            return t_s
        busiest = split.sent(topo).max(axis=1)  # [B]
        cls = topo.pair_class.reshape(-1)[topo.intra_pairs]
        used = np.where(split.intra > 0, cls, -1).max(axis=1, initial=-1)
        used = np.where((split.cross_out > 0).any(axis=1), LINK_CLASSES.index("network"), used)
        out = t_s.copy()
        for c, name in enumerate(LINK_CLASSES):
            sel = used == c
            if sel.any():
                us = self.collective_us(kind, name, busiest[sel])
                out[sel] = np.where(np.isnan(us), t_s[sel], us * 1e-6)
        return out


def _number_rows(data, name: str, source) -> np.ndarray:
    cols = TABLES[name]
    rows = data.get(name, [])
    if not isinstance(rows, list):
        raise InputError(source, name, "expected a list of objects")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(source, f"{name}[{i}]", "expected an object")
        for c in cols:
            v = r.get(c)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise InputError(source, f"{name}[{i}].{c}", f"expected a non-negative number, got {v!r}")
        out.append([float(r[c]) for c in cols])
    return np.array(out, np.float64).reshape(-1, len(cols))


def _curves(data, source) -> dict:
    out = {}
    colls = data.get("collectives", {})
    if not isinstance(colls, dict):
        raise InputError(source, "collectives", "expected an object")
    for kind, per_class in colls.items():
        if kind not in COLLECTIVES:
            raise InputError(source, f"collectives.{kind}", f"unknown collective; known: {', '.join(COLLECTIVES)}")
        if not isinstance(per_class, dict):
            raise InputError(source, f"collectives.{kind}", "expected an object keyed by link class")
        out[kind] = {}
        for cls, pts in per_class.items():
            where = f"collectives.{kind}.{cls}"
            if cls not in LINK_CLASSES:
                raise InputError(source, where, f"unknown link class; known: {', '.join(LINK_CLASSES)}")
            try:
                a = np.array(pts, np.float64)
            except (TypeError, ValueError):
                raise InputError(source, where, "expected [[bytes, us], ...]") from None
            if a.ndim != 2 or a.shape[1] != 2 or not np.isfinite(a).all() or (a <= 0).any():
                raise InputError(source, where, "expected [[bytes, us], ...] with positive numbers")
            out[kind][cls] = a[np.argsort(a[:, 0])]
    return out


def from_dict(data: dict, source="calibration") -> Calibration:
    if not isinstance(data, dict):
        raise InputError(source, "", "expected a JSON object")
    for k in ("device", "date", "command"):
        if not isinstance(data.get(k), str):
            raise InputError(source, k, "required string is missing")
    if not isinstance(data.get("versions"), dict):
        raise InputError(source, "versions", "required object is missing")
    known = set(TABLES) | {"device", "date", "versions", "command", "collectives"}
    for k in data:
        if k not in known:
            raise InputError(source, k, f"unknown field; known: {', '.join(sorted(known))}")
    tables = {name: _number_rows(data, name, source) for name in TABLES}
    return Calibration(data["device"], data["date"], data["versions"], data["command"], tables,
                       _curves(data, source), str(source))


def load_calibration(path) -> Calibration:
    """Read and validate a calibration JSON file."""
    return from_dict(read_json(path), Path(path))
