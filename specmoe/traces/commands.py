"""`specmoe trace import|stats|synth`."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from specmoe.errors import InputError
from specmoe.traces import importers, routing, stats, synth

DEFAULT_TRACE = Path(__file__).parent / "data" / "esft_intent_sample.npz"


def import_cmd(args) -> int:
    src = Path(args.src)
    if not src.exists():
        raise InputError(src, "", "no such file or folder")
    kw = {} if args.model is None else {"model": args.model}
    if args.num_experts is not None:
        kw["num_experts"] = args.num_experts
    if args.format == "esft":
        out = importers.import_esft(src, **kw)
    elif args.format == "jsonl":
        out = importers.import_jsonl(src, **kw)
    else:
        out = importers.import_sglang(src, **kw)
    if isinstance(out, importers.ExpertCounts):
        routing.write_npz_atomic(args.output, dict(logical_count=out.logical_count,
                                                   meta=np.array(json.dumps(out.meta, sort_keys=True))))
        print(f"wrote {args.output}: per-layer counts only, {out.logical_count.shape[0]} layers "
              f"x {out.logical_count.shape[1]} experts")
        return 0
    routing.save(out, args.output)
    print(f"wrote {args.output}: {out.num_tokens} tokens, {out.num_layers} MoE layers, "
          f"{out.num_experts} experts, top-{out.top_k}")
    return 0


def _load_any(path: Path):
    """A routing trace, or (for SGLang `stat` imports) per-layer counts."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "logical_count" in files and "topk_ids" not in files:
                meta = json.loads(str(z["meta"])) if "meta" in files else {}
                return np.asarray(z["logical_count"], np.int64), meta
    except json.JSONDecodeError:
        raise InputError(path, "meta", "expected a JSON string") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # routing.load gives the precise message
    return routing.load(path)


def stats_cmd(args) -> int:
    path = Path(args.trace) if args.trace else DEFAULT_TRACE
    if not path.exists():
        raise InputError(path, "", "no such file")
    loaded = _load_any(path)
    if isinstance(loaded, tuple):
        summary = stats.summarize_counts(*loaded)
    else:
        summary = stats.summarize(loaded)
    summary["file"] = str(path) if args.trace else f"embedded:{path.name}"
    if args.plot:
        if isinstance(loaded, tuple):
            raise InputError(path, "", "--plot needs a per-token trace, not per-layer counts")
        from specmoe.traces.plots import plot_trace
        summary["plots"] = plot_trace(loaded, Path(args.plot))
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=True))
    else:
        _print_summary(summary)
    return 0


def _print_summary(s: dict) -> None:
    console = Console()
    head = (f"{s['file']}: {s.get('model')} ({s.get('source')}), "
            f"{s.get('num_tokens', '?')} tokens, {s['num_moe_layers']} MoE layers, "
            f"{s['num_experts']} experts, top-{s.get('top_k', '?')}")
    console.print(head)
    table = Table("layer", "imbalance (max/mean)", "transition entropy (bits)",
                  "consecutive overlap", "hottest expert")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for row in s["layers"]:
        table.add_row(str(row["layer"]), fmt(row["imbalance"]), fmt(row.get("transition_entropy")),
                      fmt(row.get("consecutive_overlap")), str(row["hottest_expert"]))
    console.print(table)
    console.print(f"mean imbalance {s['mean_imbalance']:.3f}")
    if s.get("mean_transition_entropy") is not None:
        console.print(f"mean transition entropy {s['mean_transition_entropy']:.3f} bits "
                      f"(uniform routing: {s['uniform_transition_entropy']:.3f})")
    if s.get("mean_consecutive_overlap") is not None:
        console.print(f"mean consecutive-token overlap {s['mean_consecutive_overlap']:.3f} "
                      f"(uniform routing: {s['uniform_consecutive_overlap']:.3f})")
    for p in s.get("plots", []):
        console.print(f"wrote {p}")


def synth_cmd(args) -> int:
    path = Path(args.trace) if args.trace else DEFAULT_TRACE
    trace = routing.load(path)
    model = synth.fit(trace, seed=args.seed)
    out = synth.generate(model, args.sequences, args.seq_len, seed=args.seed)
    routing.save(out, args.output)
    print(f"wrote {args.output}: {out.num_tokens} synthetic tokens fitted to {path.name} "
          f"({len(model.class_weights)} routing classes, stickiness {model.stickiness:.3f})")
    return 0
