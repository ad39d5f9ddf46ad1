"""Acceptance traces (COMMON.md contract), written by every decoding run; read by the tree planner.

{"version": 1, "model": str, "method": str, "temperature": float,
 "steps": [{"parents": [...], "accepted": [node ids below the root, in order]}]}
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def acceptance_trace(model: str, method: str, temperature: float, steps: list[dict]) -> dict:
    return {"version": 1, "model": model, "method": method, "temperature": float(temperature),
            "steps": [{"parents": list(s["parents"]), "accepted": list(s["accepted"])} for s in steps]}


def write_json(obj, path, compact: bool = False) -> None:
    """Atomic write: temp file in the same folder, then os.replace (no half-written output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            if compact:
                json.dump(obj, f, sort_keys=True, separators=(",", ":"))
            else:
                json.dump(obj, f, sort_keys=True, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
