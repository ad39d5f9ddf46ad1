"""Heatmaps of a routing trace (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from specmoe.traces import stats
from specmoe.traces.routing import RoutingTrace


def plot_trace(trace: RoutingTrace, folder: Path) -> list[str]:
    """Write `load.png` ([layer, expert] share of tokens) and `transitions.png` (the
    layer-averaged P(expert at l+1 | expert at l)); return the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    load = stats.expert_load(trace).astype(np.float64)
    share = load / np.maximum(load.sum(1, keepdims=True), 1)
    first = int(trace.meta.get("first_moe_layer", 0))
    fig, ax = plt.subplots(figsize=(10, 5))
    im = ax.imshow(share, aspect="auto", cmap="viridis",
                   extent=(-0.5, trace.num_experts - 0.5, first + trace.num_layers - 0.5, first - 0.5))
    ax.set(xlabel="expert", ylabel="layer", title=f"expert load share — {trace.meta.get('source')}")
    fig.colorbar(im, ax=ax, label="share of the layer's tokens")
    paths = [str(folder / "load.png")]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    plt.close(fig)
    if trace.num_layers > 1:
        t = stats.transitions(trace).sum(0).astype(np.float64)
        p = t / np.maximum(t.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(7, 6))
        im = ax.imshow(p, cmap="magma")
        ax.set(xlabel="expert at layer l+1", ylabel="expert at layer l",
               title="cross-layer transitions (all layers)")
        fig.colorbar(im, ax=ax, label="P(next | current)")
        paths.append(str(folder / "transitions.png"))
        fig.savefig(paths[1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths
