"""The `specmoe` command. Thin: parse flags, call one function, print or write.

Each subcommand's work lives in its package's `commands.py` and is imported lazily, so
`specmoe trace stats` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from specmoe.errors import InputError


def _checked(cast, ok, what: str):
    """An argparse type: `cast` the flag's text and require `ok(value)`."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_fraction = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")


def _cmd(sub, name, target, help):
    """Add subcommand `name` that calls `target` ("module:function") with the parsed args."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(_target=target)
    return p


def _spec_flags(p, target):
    """Speculative decoding for `simulate` / `serve-sim` (planner (draft trees) area): with
    --spec the command runs through specmoe.simulator.specdec, which defers to the simulator's
    own command when --spec is absent."""
    p.add_argument("--spec", metavar="TREE.json", help="speculative decoding with this draft tree (`specmoe tree`)")
    p.add_argument("--spec-acceptance", metavar="ACC", help="acceptance model (default: the one in TREE.json)")
    p.add_argument("--spec-steps", type=_positive_int, default=16, help="decode steps simulated with --spec")
    p.set_defaults(_target=target)


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
    p = _cmd(sub, "simulate", "specmoe.simulator.commands:simulate_cmd",
             "simulate one decode or prefill step: per-layer breakdown, bytes per link class")
    p.add_argument("--model", required=True, help="model preset or YAML")
    p.add_argument("--cluster", required=True, help="cluster preset or YAML")
    p.add_argument("--ep", type=_positive_int, help="EP degree (default: all GPUs, or the plan's)")
    p.add_argument("--routing", help="routing trace .npz (default: the embedded ESFT sample; "
                   "synthetic routing when it does not fit the model)")
    p.add_argument("--plan", help="plan JSON: placement.physical_to_logical_map and parallel.ep")
    p.add_argument("--batch", type=_positive_int, default=64, help="tokens per GPU (default 64)")
    p.add_argument("--phase", choices=["decode", "prefill"], default="decode")
    p.add_argument("--context", type=_positive_int, default=1024,
                   help="decode: cached tokens per sequence; prefill: prompt length (default 1024)")
    p.add_argument("--attention", choices=["dp", "tp"], help="attention parallelism (default dp)")
    p.add_argument("--network", choices=["analytic", "flow"], default="analytic")
    p.add_argument("--calibration", help="calibration JSON measured on the GPUs")
    p.add_argument("--overlap", action="store_true", help="two micro-batches, comm overlapped")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="FILE", help="write a per-GPU timeline (PNG)")
    _spec_flags(p, "specmoe.simulator.specdec:simulate_cmd")
    p = _cmd(sub, "serve-sim", "specmoe.simulator.commands:serve_sim_cmd",
             "simulate serving a request trace with continuous batching: TTFT, TPOT, SLOs")
    p.add_argument("--model", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--requests", required=True,
                   help="azure-conv, azure-code, or a .csv (Azure) / .jsonl (Mooncake) file")
    p.add_argument("--duration", type=_positive_float, help="serve the first S seconds of arrivals")
    p.add_argument("--ep", type=_positive_int)
    p.add_argument("--routing", help="routing trace .npz for the decode steps")
    p.add_argument("--max-batch", type=_positive_int, default=256)
    p.add_argument("--slo-ttft-ms", type=_positive_float, default=2000.0)
    p.add_argument("--slo-tpot-ms", type=_positive_float, default=100.0)
    p.add_argument("--network", choices=["analytic", "flow"], default="analytic")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--output", metavar="CSV", help="write per-request metrics here")
    p.add_argument("--json", action="store_true")
    _spec_flags(p, "specmoe.simulator.commands:serve_sim_cmd")
    # ---- end simulator ----

    # ---- planner (placement): plan, plan show ----
    p = _cmd(sub, "plan", "specmoe.planner.commands:plan_cmd",
             "fit an expert placement + token schedule on a routing trace and score it on held-out "
             "sequences; `plan show PLAN` prints a plan's summary")
    p.add_argument("action", nargs="?", choices=["show"], help="show: summarise PLAN")
    p.add_argument("plan_file", nargs="?", metavar="PLAN", help="plan file (with `show`)")
    p.add_argument("--model", help="model preset or YAML")
    p.add_argument("--cluster", help="cluster preset or YAML")
    p.add_argument("--routing", help="routing trace .npz (default: the embedded ESFT sample)")
    p.add_argument("--ep", type=_positive_int, help="EP size (default: all GPUs of the cluster)")
    p.add_argument("--method", default="speculative",
                   choices=["contiguous", "round-robin", "eplb", "greedy", "grouping", "speculative"])
    p.add_argument("--attention", default="tp", choices=["tp", "dp"],
                   help="attention parallelism; decides the token-shuffling policy")
    p.add_argument("--redundant", type=_nonneg_int, default=0, help="redundant expert slots")
    p.add_argument("--profile-frac", type=_fraction, default=0.25)
    p.add_argument("--balance", type=_positive_float, default=1.10,
                   help="max/mean GPU load bound for grouping (default 1.10)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--export", choices=["sglang", "vllm"])
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output")
    # ---- end planner (placement) ----

    # ---- planner (draft trees): tree ----
    p = _cmd(sub, "tree", "specmoe.planner.tree_commands:tree_cmd",
             "plan the draft tree with the most tokens/s for a model, cluster and acceptance model")
    p.add_argument("--model", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--acceptance", required=True, metavar="ACC",
                   help="inline p_k list (0.6,0.2,0.1) or a JSON file: acceptance trace, {p: [...]} or {alpha: [...]}")
    p.add_argument("--budget", type=_nonneg_int, help="max draft tokens (default: searched up to 128)")
    p.add_argument("--max-depth", type=_positive_int, default=10)
    p.add_argument("--method", default="sequoia",
                   choices=["sequoia", "recycling", "rsd-c", "rsd-s", "chain", "eagle2"])
    p.add_argument("--batch", type=_positive_int, default=1, help="concurrent sequences")
    p.add_argument("--routing", help="routing trace .npz or ESFT folder (default: the embedded "
                   "ESFT sample when it fits the model, else synthetic)")
    p.add_argument("--ep", type=_positive_int)
    p.add_argument("--context-len", type=_positive_int, default=1024)
    p.add_argument("--draft", choices=["model", "lookup"], default="model",
                   help="model: a draft model's forward per level; lookup: Token Recycling's free "
                   "adjacency-matrix drafter (always used by --method recycling)")
    p.add_argument("--draft-params", type=_positive_float, help="draft model parameters (default: EAGLE-style head)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", metavar="TREE.json")
    # ---- end planner (draft trees) ----

    # ---- runtime: calibrate, validate ----
    p = _cmd(sub, "calibrate", "specmoe.runtime.commands:calibrate_cmd",
             "measure GEMM, grouped-GEMM, attention and all-to-all times on GPUs (torchrun)")
    p.add_argument("-o", "--output", required=True, help="calibration JSON to write")
    p.add_argument("--link", choices=["nvlink", "pcie"],
                   help="link class of the all-to-all curve (default: pcie if NCCL_P2P_DISABLE=1)")
    p.add_argument("--collectives-only", action="store_true", help="skip the kernel grids")
    p.add_argument("--experts", choices=["triton", "torch"],
                   help="expert GEMMs timed in the grouped grid: the Triton kernel (specmoe.kernels.moe, "
                        "default on CUDA) or torch")
    p.add_argument("--update", action="store_true", help="keep the other sections of OUTPUT")
    p = _cmd(sub, "validate", "specmoe.runtime.commands:validate_cmd",
             "run plans on GPUs with routing replay (torchrun), or --report: compare with the simulator")
    p.add_argument("plans", nargs="*", metavar="PLAN.json")
    p.add_argument("--trace", help="routing .npz replayed by the runtime (with --report: overrides the path recorded)")
    p.add_argument("--trace-split", type=_fraction,
                   help="use only the sequences after this fraction (the planner saw the rest)")
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128,256,384,512",
                   help="tokens per GPU (the report calibrates on every other one from the smallest, "
                        "and the largest, and holds out the rest)")
    p.add_argument("--context", type=_positive_int, default=1024)
    p.add_argument("--steps", type=_positive_int, default=10)
    p.add_argument("--num-layers", type=_positive_int, help="truncate the model (default: all)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--eager", action="store_true",
                   help="time the eager live path instead of the CUDA-graph replay step")
    p.add_argument("--experts", choices=["triton", "torch"],
                   help="expert computation: the Triton grouped GEMM (specmoe.kernels.moe, default on CUDA) "
                        "or torch (default on CPU)")
    p.add_argument("-o", "--output", help="measured JSON to write")
    p.add_argument("--report", nargs="+", metavar="MEASURED.json",
                   help="compare measured JSONs with the simulator instead of measuring")
    p.add_argument("--calibration", help="calibration JSON for the simulator")
    p.add_argument("--name", help="report name: docs/validation/NAME.{json,md,png}")
    p.add_argument("--out-dir", default="docs/validation")
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
    p.add_argument("--warm-prompts", type=_nonneg_int, default=0,
                   help="decode the N questions after the evaluated ones first, untimed (Token Recycling's "
                   "adjacency then starts with that history)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--kernels", choices=["triton", "torch"], default=None,
                   help="verify / AR forward: batch-invariant Triton kernels (default on cuda; TF32, greedy "
                   "output still identical to ar) or plain torch (default on cpu; fp32)")
    p.add_argument("--precision", choices=["tf32", "bf16"], default="tf32",
                   help="triton kernels' projections: fp32 weights with TF32 dots (default), or bf16 weights "
                   "and dot inputs with fp32 sums (half the weight bytes); ar and speculative alike")
    p.add_argument("--draft-layers", type=_positive_int, default=10,
                   help="rsd: layers of the early-exit self-draft")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--trace-dir", default="specdec_traces", help="acceptance traces go here")
    p.add_argument("--results", help="write [{method, tree, temperature, tokens_per_s, "
                   "mean_accepted, speedup_vs_ar}] here")
    # ---- end runtime (speculative decoding) ----

    # ---- what-if: whatif ----
    p = _cmd(sub, "whatif", "specmoe.planner.whatif_commands:whatif_cmd",
             "capacity planning: the highest request rate each candidate deployment serves "
             "within the SLOs, ranked, with a Pareto front of cost against capacity")
    p.add_argument("--config", metavar="YAML", help="a what-if file (fields of WhatIfConfig)")
    p.add_argument("--models", nargs="+", metavar="MODEL")
    p.add_argument("--clusters", nargs="+", metavar="CLUSTER")
    p.add_argument("--ep", nargs="+", type=_positive_int, metavar="N",
                   help="EP degrees (default: one EP group over the whole cluster)")
    p.add_argument("--attention", nargs="+", choices=["dp", "tp"])
    p.add_argument("--placements", nargs="+",
                   choices=["contiguous", "eplb", "grouping", "speculative"])
    p.add_argument("--tree-budgets", nargs="+", type=_nonneg_int, metavar="N",
                   help="draft tokens per step; 0 = speculative decoding off")
    p.add_argument("--workload", help="workload preset or YAML (requests and SLOs)")
    p.add_argument("--rate-min", type=_positive_float, metavar="RPS")
    p.add_argument("--rate-max", type=_positive_float, metavar="RPS")
    p.add_argument("--slo-ttft-ms", type=_positive_float)
    p.add_argument("--slo-tpot-ms", type=_positive_float)
    p.add_argument("--seed", type=_nonneg_int)
    p.add_argument("--jobs", type=_positive_int, default=2, help="worker processes (default 2)")
    p.add_argument("--report", metavar="DIR", help="write report.md, plots and the best plan here")
    p.add_argument("--json", action="store_true")
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
