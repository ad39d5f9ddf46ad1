"""Adaptive computation (Duo-LLM): per token and per layer, the small module, the big one, or a skip.

Duo-LLM (Alizadeh et al. 2024, arXiv:2410.10846) gives every FFN layer a big module and a small
one; a router sends each token through one of them or past the layer. We express such a model
as an MoE with two routed experts of different widths (`ModelSpec.expert_intermediate_sizes`,
expert 0 = small, 1 = big), top-1, with layer skipping allowed; a token that skips a layer has
all -1 there. The simulator's compute model then prices the heterogeneous experts.

choices: int8 [num_tokens, num_layers], SKIP = -1, SMALL = 0, BIG = 1, from a trace (an .npy or
JSON list of lists) or from a policy:
  - "big-in-k": each token takes the big module in k layers (chosen uniformly, seeded) and the
    small one elsewhere (Duo-LLM's "big module in k layers" budget);
  - "big-in-k-skip": as above, and also skips `skip` of the remaining layers;
  - "all-big", "all-small".
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from specmoe.errors import InputError
from specmoe.planner.tree_cost import simulate_step
from specmoe.specs import ClusterSpec, ModelSpec

SKIP, SMALL, BIG = -1, 0, 1
POLICIES = ("big-in-k", "big-in-k-skip", "all-big", "all-small")


def duo_model(base: ModelSpec, small_fraction: float = 0.25) -> ModelSpec:
    """`base` with each FFN layer replaced by a small module (small_fraction of the big width) and
    the big module (as wide as top_k of base's experts, i.e. its active FFN)."""
    if not 0 < small_fraction < 1:
        raise InputError("--small-fraction", "", "must be in (0, 1)")
    big = base.top_k * base.expert_intermediate_size
    small = max(1, int(round(small_fraction * big)))
    return dataclasses.replace(base, name=f"{base.name}-duo", num_experts=2, top_k=1,
                               expert_intermediate_size=big, expert_intermediate_sizes=(small, big),
                               allow_layer_skip=True, num_dense_layers=0, dense_intermediate_size=0,
                               num_shared_experts=0, shared_expert_intermediate_size=0)


def policy_choices(num_tokens: int, num_layers: int, policy: str, k: int = 0, skip: int = 0,
                   seed: int = 0) -> np.ndarray:
    """int8 [num_tokens, num_layers] for one of POLICIES."""
    if policy not in POLICIES:
        raise InputError("--policy", "", f"expected one of {', '.join(POLICIES)}")
    if policy == "all-big":
        return np.full((num_tokens, num_layers), BIG, np.int8)
    if policy == "all-small":
        return np.full((num_tokens, num_layers), SMALL, np.int8)
    if not 0 <= k <= num_layers or not 0 <= skip <= num_layers - k:
        raise InputError("--k", "", f"need 0 <= k <= {num_layers} and k + skip <= {num_layers}")
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((num_tokens, num_layers)), axis=1)  # a random layer order per token
    out = np.full((num_tokens, num_layers), SMALL, np.int8)
    rows = np.arange(num_tokens)[:, None]
    out[rows, order[:, :k]] = BIG
    if policy == "big-in-k-skip":
        out[rows, order[:, k:k + skip]] = SKIP
    return out


def load_choices(path, num_layers: int) -> np.ndarray:
    """A choice trace: .npy (int [T, L]) or JSON {"choices": [[...], ...]}; values -1, 0 or 1."""
    try:
        if str(path).endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            with open(path) as f:
                arr = np.asarray(json.load(f)["choices"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(path, "choices", f"not a readable choice trace ({e})") from None
    return check_choices(arr, num_layers, path)


def check_choices(arr, num_layers: int, source="choices") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != num_layers or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(source, "choices", f"expected integers [num_tokens, {num_layers}], got {arr.dtype} {arr.shape}")
    if arr.size and not np.isin(arr, (SKIP, SMALL, BIG)).all():
        raise InputError(source, "choices", "values must be -1 (skip), 0 (small) or 1 (big)")
    return arr.astype(np.int8)


def choices_to_topk(choices: np.ndarray) -> np.ndarray:
    """topk_ids [num_tokens, num_layers, 1]: the choice is the expert id (-1 = skip the layer)."""
    return choices.astype(np.int32)[:, :, None]


def price(model: ModelSpec, cluster: ClusterSpec, choices: np.ndarray, *, ep: int = 1,
          context_len: int = 1024, network: str = "analytic"):
    """The simulator's StepResult for one decode step of these tokens (one token per sequence)."""
    choices = check_choices(choices, model.num_moe_layers)
    return simulate_step(model, cluster, ep=ep, topk_ids=choices_to_topk(choices), phase="decode",
                         context_len=context_len, network=network)


def ffn_flops_fraction(model: ModelSpec, choices: np.ndarray) -> float:
    """FFN FLOPs of these choices relative to every token taking the big module everywhere."""
    widths = np.array(model.expert_sizes, np.float64)
    used = np.where(choices >= 0, widths[np.maximum(choices, 0)], 0.0)
    return float(used.sum() / (widths[BIG] * choices.size))


def compare_policies(model: ModelSpec, cluster: ClusterSpec, num_tokens: int, ks, *, skip: int = 0,
                     ep: int = 1, context_len: int = 1024, seed: int = 0) -> pd.DataFrame:
    """Step time of "big module in k layers" for each k, against all-big and all-small."""
    L = model.num_moe_layers
    rows = []
    cases = [("all-big", L, 0), ("all-small", 0, 0)] + [("big-in-k", k, 0) for k in ks]
    if skip:
        cases += [("big-in-k-skip", k, skip) for k in ks if k + skip <= L]
    for policy, k, s in cases:
        ch = policy_choices(num_tokens, L, policy, k, s, seed)
        res = price(model, cluster, ch, ep=ep, context_len=context_len)
        rows.append((policy, k, s, res.step_time_us, ffn_flops_fraction(model, ch)))
    df = pd.DataFrame(rows, columns=["policy", "k", "skip", "step_time_us", "ffn_flops_fraction"])
    big = df.loc[df.policy == "all-big", "step_time_us"].iloc[0]
    df["relative_to_all_big"] = df.step_time_us / big
    return df
