"""Per-GPU timeline of one simulated step (matplotlib, no display needed)."""
from __future__ import annotations

COLORS = {"attention": "#4c72b0", "attention_comm": "#8172b3", "gate": "#937860",
          "dispatch": "#dd8452", "experts": "#55a868", "combine": "#c44e52"}


def plot_timeline(res, path, title: str = "") -> None:
    """Draw each GPU's busy intervals per phase; collectives span every GPU."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = res.timeline()
    ep = int(tl.gpu.max()) + 1 if len(tl) else 1
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.25 * min(ep, 64)))
    for (gpu, phase), g in tl.groupby(["gpu", "phase"], sort=True):
        spans = list(zip(g.start_us / 1e3, (g.end_us - g.start_us) / 1e3))
        ax.broken_barh(spans, (gpu - 0.4, 0.8), facecolors=COLORS.get(phase, "grey"),
                       label=phase if gpu == 0 else None)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("GPU")
    ax.set_ylim(-0.6, ep - 0.4)
    ax.invert_yaxis()
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="lower center", bbox_to_anchor=(0.5, 1.04),
              ncols=len(uniq), fontsize=8, frameon=False)
    ax.set_title(title or "simulated step", pad=24)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
