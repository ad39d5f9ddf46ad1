"""Routing for a simulated step: tokens drawn from a real trace, or synthesised for the model.

A trace fits a model when its expert count, top-k and MoE layer count match. Otherwise we
synthesise routing with realistic skew: per layer, expert popularity is log-normal
(sigma 0.55 gives a busiest-expert load of about 2.5-4 times the mean over 64-256 experts,
in the range of the ESFT traces' 2.9-4.7), and each token draws its top-k experts without
replacement in proportion to popularity (sequential draws, redrawing repeats: exactly
sampling without replacement).
"""
from __future__ import annotations

import numpy as np

from specmoe.specs import ModelSpec
from specmoe.traces.routing import RoutingTrace


def fits(trace: RoutingTrace, model: ModelSpec) -> bool:
    return (trace.num_experts == model.num_experts and trace.top_k == model.top_k
            and trace.num_layers == model.num_moe_layers)


def synthetic_topk(model: ModelSpec, num_tokens: int, seed: int = 0, sigma: float = 0.55) -> np.ndarray:
    """Skewed routing for `model`, `[num_tokens, num_moe_layers, top_k]` int32."""
    rng = np.random.default_rng(seed)
    L, E, K = model.num_moe_layers, model.num_experts, model.top_k
    pop = np.exp(rng.normal(0.0, sigma, (L, E)))
    cdf = np.cumsum(pop / pop.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    flat_cdf = (cdf + np.arange(L)[:, None]).ravel()  # layer l's cdf lives in [l, l + 1]
    ids = np.full((num_tokens * L, K), -1, np.int32)  # rows: token-major, then layer
    layer_of = np.tile(np.arange(L), num_tokens)
    for k in range(K):
        todo = np.arange(num_tokens * L)
        while todo.size:
            u = rng.random(todo.size) + layer_of[todo]
            e = np.searchsorted(flat_cdf, u, side="right") - layer_of[todo] * E
            e = np.minimum(e, E - 1).astype(np.int32)
            clash = (ids[todo, :k] == e[:, None]).any(axis=1)
            ids[todo[~clash], k] = e[~clash]
            todo = todo[clash]
    return ids.reshape(num_tokens, L, K)


def sample_tokens(trace: RoutingTrace, num_tokens: int, seed: int = 0) -> np.ndarray:
    """`num_tokens` tokens' routing drawn from `trace` (without replacement when it has enough),
    `[num_tokens, num_layers, top_k]`."""
    rng = np.random.default_rng(seed)
    replace = num_tokens > trace.num_tokens
    pick = np.sort(rng.choice(trace.num_tokens, num_tokens, replace=replace))
    return trace.topk_ids[pick]


def routing_for(model: ModelSpec, trace: RoutingTrace | None, num_tokens: int,
                seed: int = 0) -> tuple[np.ndarray, str]:
    """Routing for `num_tokens` tokens of `model`, and a note saying where it came from."""
    if trace is not None and fits(trace, model):
        return sample_tokens(trace, num_tokens, seed), \
            f"routing: tokens sampled from trace {trace.meta.get('source', '')}"
    why = "no routing trace" if trace is None else (
        f"trace {trace.meta.get('source', '')} has {trace.num_experts} experts, top-{trace.top_k}, "
        f"{trace.num_layers} layers; {model.name} has {model.num_experts}, top-{model.top_k}, "
        f"{model.num_moe_layers}")
    return synthetic_topk(model, num_tokens, seed), \
        f"routing: synthetic skewed routing for {model.name} ({why})"
