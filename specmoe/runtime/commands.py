"""CLI functions of `specmoe calibrate` and `specmoe validate` (IO at the edges)."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from specmoe.errors import InputError
from specmoe.fileio import write_json_atomic



def _command_line() -> str:
    launcher = os.environ.get("SPECMOE_LAUNCHER", "")
    env = "NCCL_P2P_DISABLE=1 " if os.environ.get("NCCL_P2P_DISABLE") == "1" else ""
    return (env + launcher + " specmoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()


def calibrate_cmd(args) -> int:
    import torch

    from specmoe.runtime import calibrate as cal
    from specmoe.runtime.launch import init_from_env
    from specmoe.runtime.validate import link_mode

    if not torch.cuda.is_available():
        raise InputError("specmoe calibrate", "device", "needs a CUDA GPU (run it on the GPU machine)")
    rank, world, device = init_from_env()
    link = args.link or ("pcie" if link_mode() == "slow" else "nvlink")
    out = {}
    if args.update and Path(args.output).exists():
        out = json.loads(Path(args.output).read_text())
    if not args.collectives_only and rank == 0:
        for name, fn in (("gemm", cal.gemm_grid), ("grouped_gemm", cal.grouped_grid),
                         ("attention", cal.attention_grid)):
            out[name] = fn(device)
            print(f"calibrate: {name}: {len(out[name])} shapes", flush=True)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        curve = cal.all_to_all_curve(device)
        out.setdefault("collectives", {}).setdefault("all_to_all", {})[link] = curve
        if rank == 0:
            print(f"calibrate: all_to_all {link}: " +
                  ", ".join(f"{int(b) >> 10} KiB {us:.1f} us" for b, us in curve), flush=True)
    if rank == 0:
        prov = cal.provenance(_command_line())
        prev = out.get("command")
        out.update(prov)
        if prev and args.update:
            out["command"] = prev + " ; " + prov["command"]
        write_json_atomic(args.output, out)
    _finish()
    return 0


def _batches(s: str) -> list[int]:
    try:
        b = [int(x) for x in s.split(",")]
    except ValueError:
        raise InputError("--batches", "", f"expected comma-separated integers, got {s!r}") from None
    if not b or min(b) <= 0:
        raise InputError("--batches", "", "batch sizes must be positive")
    return b


def validate_cmd(args) -> int:
    if args.report:
        from specmoe.runtime.report import report_cmd
        return report_cmd(args)
    if not args.plans or not args.trace or not args.output:
        raise InputError("specmoe validate", "arguments",
                         "measuring needs PLAN.json files, --trace and -o (or use --report)")
    from specmoe.runtime.launch import init_from_env
    from specmoe.runtime.plans import load_run_plan
    from specmoe.runtime.validate import measure
    from specmoe.traces.routing import load

    plans = [load_run_plan(p) for p in args.plans]
    trace = load(args.trace)
    if args.trace_split:
        trace = trace.split_by_sequence(args.trace_split)[1]
    rank, world, device = init_from_env()
    res = measure(plans, trace, args.trace, _batches(args.batches), args.context, args.steps,
                  args.seed, args.num_layers, device, rank, world, graphs=not args.eager)
    if rank == 0:
        res["command"] = _command_line()
        res["trace"]["held_out_after_split"] = args.trace_split
        write_json_atomic(args.output, res)
        print(f"validate: wrote {args.output} ({len(res['cases'])} cases)")
    _finish()
    if rank == 0 and args.calibration and args.name:  # simulate the same cases right away
        from specmoe.runtime.report import report_cmd
        args.report = [args.output]
        return report_cmd(args)
    return 0


def _finish() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
