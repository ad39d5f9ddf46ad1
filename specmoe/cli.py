"""The `specmoe` command. Thin: parse flags, call one function, print or write.

Each subcommand's work lives in its package's `commands.py` and is imported lazily, so
`specmoe trace stats` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from specmoe.errors import InputError


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def _cmd(sub, name, target, help):
    """Add subcommand `name` that calls `target` ("module:function") with the parsed args."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(_target=target)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="specmoe", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"specmoe {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    specs = sub.add_parser("specs", help="list or show model, GPU, cluster and workload presets")
    ssub = specs.add_subparsers(dest="specs_command", required=True, metavar="ACTION")
    p = _cmd(ssub, "list", "specmoe.specs.commands:list_cmd", "list the shipped presets")
    p.add_argument("--json", action="store_true")
    p = _cmd(ssub, "show", "specmoe.specs.commands:show_cmd", "show one preset with derived figures")
    p.add_argument("name")
    p.add_argument("--kind", choices=["model", "gpu", "cluster", "workload"])
    p.add_argument("--json", action="store_true")

    trace = sub.add_parser("trace", help="import routing traces and print their statistics")
    tsub = trace.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    p = _cmd(tsub, "import", "specmoe.traces.commands:import_cmd",
             "convert ESFT, SGLang or JSONL routing dumps to the specmoe .npz format")
    p.add_argument("src")
    p.add_argument("--format", required=True, choices=["esft", "sglang", "jsonl"])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", help="model name recorded in the trace's meta")
    p.add_argument("--num-experts", type=_positive_int)
    p = _cmd(tsub, "stats", "specmoe.traces.commands:stats_cmd",
             "per-layer load imbalance, transition entropy and locality of a routing trace")
    p.add_argument("trace", nargs="?", help="routing .npz (default: the embedded ESFT sample)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="DIR", help="write load and transition heatmaps here")
    p = _cmd(tsub, "synth", "specmoe.traces.commands:synth_cmd",
             "generate a synthetic routing trace fitted to a real one")
    p.add_argument("trace", nargs="?", help="routing .npz to fit (default: the embedded sample)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--sequences", type=_positive_int, default=64)
    p.add_argument("--seq-len", type=_positive_int, default=64)
    p.add_argument("--seed", type=_nonneg_int, default=0)

    # ---- simulator: simulate, serve-sim ----
    # (subcommands of this area go here)
    # ---- end simulator ----

    # ---- planner (placement): plan, plan show ----
    # (subcommands of this area go here)
    # ---- end planner (placement) ----

    # ---- planner (draft trees): tree ----
    # (subcommands of this area go here)
    # ---- end planner (draft trees) ----

    # ---- runtime: calibrate, validate ----
    # (subcommands of this area go here)
    # ---- end runtime ----

    # ---- runtime (speculative decoding): generate ----
    p = _cmd(sub, "generate", "specmoe.runtime.specdec.commands:generate_cmd",
             "decode Spec-Bench prompts on SmolLM2-135M with ar, Token Recycling or RSD; "
             "print tokens/s, mean accepted tokens per step and speedup over ar")
    p.add_argument("--method", required=True, choices=["ar", "recycling", "rsd"])
    p.add_argument("--tree", help="TREE.json draft tree (default: shipped 80-node template; "
                   "rsd: constant branching 4x2x1)")
    p.add_argument("--prompts", required=True, help="Spec-Bench question.jsonl")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--num-prompts", type=_positive_int, default=10)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--draft-layers", type=_positive_int, default=10,
                   help="rsd: layers of the early-exit self-draft")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--trace-dir", default="specdec_traces", help="acceptance traces go here")
    p.add_argument("--results", help="write [{method, tree, temperature, tokens_per_s, "
                   "mean_accepted, speedup_vs_ar}] here")
    # ---- end runtime (speculative decoding) ----

    # ---- what-if: whatif ----
    # (subcommands of this area go here)
    # ---- end what-if ----
    return ap


def _version() -> str:
    from specmoe import __version__
    return __version__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    module, func = args._target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(args) or 0)
    except InputError as e:
        print(f"specmoe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
