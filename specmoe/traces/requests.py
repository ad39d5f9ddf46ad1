"""RequestTrace: request arrivals with prompt and output lengths."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from specmoe.errors import InputError

DATA = Path(__file__).parent / "data"
EMBEDDED = {"azure-conv": DATA / "azure_conv.npz", "azure-code": DATA / "azure_code.npz"}


@dataclass
class RequestTrace:
    """arrival_s: float64 [N], seconds from the first arrival, non-decreasing;
    input_tokens, output_tokens: int64 [N], positive."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.arrival_s)

    def window(self, duration_s: float) -> "RequestTrace":
        keep = self.arrival_s < duration_s
        return RequestTrace(self.arrival_s[keep], self.input_tokens[keep],
                            self.output_tokens[keep], self.source)

    def scaled_to_rate(self, rate_rps: float) -> "RequestTrace":
        """The same requests with inter-arrival times scaled so the mean rate is `rate_rps`."""
        span = self.arrival_s[-1] - self.arrival_s[0] if len(self) > 1 else 1.0
        native = (len(self) - 1) / span if span > 0 else rate_rps
        return RequestTrace(self.arrival_s * (native / rate_rps), self.input_tokens,
                            self.output_tokens, f"{self.source}@{rate_rps:g}rps")


def _checked(arrival, inp, out, source, names=("arrival", "input_tokens", "output_tokens")) -> RequestTrace:
    arrival = np.asarray(arrival, np.float64)
    if len(arrival) == 0:
        raise InputError(source, "", "no requests")
    if not np.isfinite(arrival).all() or (arrival < 0).any():
        raise InputError(source, names[0], "negative or non-finite time")
    for name, a in zip(names[1:], (inp, out)):
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all() or (a < 0).any():
            raise InputError(source, name, "expected non-negative integers")
    order = np.argsort(arrival, kind="stable")
    inp = np.maximum(np.asarray(inp, np.int64)[order], 1)
    out = np.maximum(np.asarray(out, np.int64)[order], 1)
    arrival = arrival[order]
    return RequestTrace(arrival - arrival[0], inp, out, str(source))


def load_azure_csv(path) -> RequestTrace:
    """Azure LLM inference trace: `TIMESTAMP,ContextTokens,GeneratedTokens`."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(path, "", f"not a readable CSV ({type(e).__name__})") from None
    for col in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"):
        if col not in df.columns:
            raise InputError(path, col, f"missing column; found {', '.join(map(str, df.columns))}")
    t = pd.to_datetime(df["TIMESTAMP"], errors="coerce", format="mixed")
    if t.isna().any():
        raise InputError(path, "TIMESTAMP", f"unparseable time at row {int(t.isna().values.argmax()) + 2}")
    secs = (t - t.min()).dt.total_seconds().to_numpy()
    for col in ("ContextTokens", "GeneratedTokens"):
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise InputError(path, col, "expected integers")
    return _checked(secs, df["ContextTokens"].to_numpy(), df["GeneratedTokens"].to_numpy(), path,
                    ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))


def load_mooncake_jsonl(path) -> RequestTrace:
    """Mooncake-style JSONL: `timestamp` (ms), `input_length`, `output_length` per line."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                rows.append((float(r["timestamp"]) / 1e3, int(r["input_length"]), int(r["output_length"])))
            except json.JSONDecodeError:
                raise InputError(path, f"line {lineno}", "not valid JSON") from None
            except KeyError as e:
                raise InputError(path, f"line {lineno}: {e.args[0]}", "required key is missing") from None
            except (TypeError, ValueError):
                raise InputError(path, f"line {lineno}", "timestamp, input_length, output_length must be numbers") from None
            if rows[-1][0] < 0:
                raise InputError(path, f"line {lineno}: timestamp", "negative time")
    if not rows:
        raise InputError(path, "", "no requests")
    a = np.array(rows)
    return _checked(a[:, 0], a[:, 1], a[:, 2], path, ("timestamp", "input_length", "output_length"))


def synthetic(rate_rps: float, duration_s: float, mean_input: int, mean_output: int,
              process: str = "poisson", cv: float = 2.0, length_sigma: float = 1.0,
              seed: int = 0) -> RequestTrace:
    """Poisson or Gamma (coefficient of variation `cv`) arrivals; log-normal lengths with
    the given means and log-space spread `length_sigma`."""
    if rate_rps <= 0 or duration_s <= 0:
        raise InputError("--rate", "", "rate and duration must be positive")
    rng = np.random.default_rng(seed)
    n = int(rate_rps * duration_s * 1.5) + 16
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate_rps, n)
    elif process == "gamma":
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), n)
    else:
        raise InputError("--process", "", f"expected poisson or gamma, got {process!r}")
    t = np.cumsum(gaps) - gaps[0]
    t = t[t < duration_s]
    mu_in = np.log(mean_input) - length_sigma**2 / 2
    mu_out = np.log(mean_output) - length_sigma**2 / 2
    inp = np.maximum(1, rng.lognormal(mu_in, length_sigma, len(t))).astype(np.int64)
    out = np.maximum(1, rng.lognormal(mu_out, length_sigma, len(t))).astype(np.int64)
    return RequestTrace(t, inp, out, f"{process}:{rate_rps:g}rps")


def load_requests(name_or_path: str) -> RequestTrace:
    """An embedded trace by name, or a file: `.csv` (Azure) or `.jsonl` (Mooncake)."""
    if name_or_path in EMBEDDED:
        with np.load(EMBEDDED[name_or_path], allow_pickle=False) as z:
            return RequestTrace(z["arrival_s"], z["input_tokens"], z["output_tokens"], name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise InputError(name_or_path, "", f"no such request trace; embedded: {', '.join(EMBEDDED)}")
    if path.suffix == ".csv":
        return load_azure_csv(path)
    if path.suffix in (".jsonl", ".json"):
        return load_mooncake_jsonl(path)
    raise InputError(path, "", "expected .csv (Azure) or .jsonl (Mooncake)")
