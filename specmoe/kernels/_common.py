"""Shared helpers for the Triton wrappers: poisoned allocation and tuned-config lookup.

Tuned configurations are data (DESIGN.md § Style): `configs.json` beside this file maps
device name -> kernel -> shape key -> config. The wrappers read it; the benchmark writes it.
"""
from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import torch

CONFIG_PATH = Path(__file__).with_name("configs.json")

# When set (tests do), every buffer a wrapper allocates is filled with NaN (floats) or a
# large negative sentinel (ints), so an element the kernel forgets to write shows up.
POISON = os.environ.get("SPECMOE_KERNELS_POISON", "") not in ("", "0")
INT_POISON = -(2**30)
# Triton's CPU interpreter computes bf16 tl.dot wrongly (seen with triton 3.9): under it the
# kernels upcast dot operands to fp32 after the bf16 rounding the GPU path also does.
INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"


def cdiv(a: int, b: int) -> int:
    """Host-side ceil(a / b). triton.cdiv is a jit function: ~4 us per host call, which adds up
    to a large part of a decode step's launch overhead."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Host-side triton.next_power_of_2 (same reason as `cdiv`)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, or a poisoned buffer when SPECMOE_KERNELS_POISON is set."""
    if not POISON:
        return torch.empty(shape, dtype=dtype, device=device)
    fill = float("nan") if dtype.is_floating_point else max(INT_POISON, torch.iinfo(dtype).min)
    return torch.full(shape, fill, dtype=dtype, device=device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return _cuda_name(torch.cuda.current_device() if device.index is None else device.index)
    return "cpu"


@lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


@lru_cache(maxsize=1)
def _load_configs() -> dict:
    if not CONFIG_PATH.exists():
        return {}
    return json.loads(CONFIG_PATH.read_text())


def lookup(kernel: str, device: torch.device, shape_key: str, m: int | None, default: dict) -> dict:
    """Tuned config for `kernel` on this device and shape, else `default`.

    Entries keyed by a token count `m` (MoE) pick the stored bucket nearest in log2(m).
    """
    table = _load_configs().get("devices", {}).get(device_name(device), {})
    entry = table.get(kernel, {}).get(shape_key)
    if entry is None:
        return dict(default)
    if m is None:
        return dict(entry)
    best = min(entry, key=lambda k: abs(math.log2(int(k)) - math.log2(max(m, 1))))
    return dict(entry[best])
