"""CLI functions of `specmoe calibrate` and `specmoe validate` (IO at the edges)."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from specmoe.errors import InputError
from specmoe.fileio import write_json_atomic



def experts_backend(choice: str | None, device) -> tuple[str, str | None]:
    """--experts, defaulting to the Triton kernel on CUDA and torch elsewhere; if triton does
    not run or disagrees with torch on this device (model.triton_experts_check), torch, and
    the reason (printed, and kept in the outputs)."""
    import torch

    from specmoe.runtime.model import triton_experts_check
    device = torch.device(device)
    backend = choice or ("triton" if device.type == "cuda" else "torch")
    if backend == "triton" and (why := triton_experts_check(device)):
        print(f"specmoe: {why}; the experts run on torch", file=sys.stderr, flush=True)
        return "torch", why
    return backend, None


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
    experts, fallback = experts_backend(args.experts, device)
    if not args.collectives_only and rank == 0:
        for name, fn in (("gemm", cal.gemm_grid),
                         ("grouped_gemm", lambda d: cal.grouped_grid(d, experts)),
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
        if fallback and not args.collectives_only:  # the schema has no experts field
            prov["command"] += f" [experts fell back to torch: {fallback}]"
        out.update(prov)
        if prev and args.update:
            out["command"] = prev + " ; " + prov["command"]
        write_json_atomic(args.output, out)
    _finish()
    return _exit_if_torchrun_gpu(0)


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
    experts, fallback = experts_backend(args.experts, device)
    res = measure(plans, trace, args.trace, _batches(args.batches), args.context, args.steps,
                  args.seed, args.num_layers, device, rank, world, graphs=not args.eager,
                  experts=experts)
    if rank == 0:
        res["command"] = _command_line()
        res["trace"]["held_out_after_split"] = args.trace_split
        if fallback:
            res["experts_fallback"] = fallback
        write_json_atomic(args.output, res)
        print(f"validate: wrote {args.output} ({len(res['cases'])} cases)")
    _finish()
    code = 0
    if rank == 0 and args.calibration and args.name:  # simulate the same cases right away
        from specmoe.runtime.report import report_cmd
        args.report = [args.output]
        code = report_cmd(args)
    return _exit_if_torchrun_gpu(code)


TEARDOWN_S = 20.0


def _finish() -> None:
    """Free the CUDA graphs (they hold NCCL work), then barrier and destroy the process group.
    H200 run 2's validate hung here after writing its results; a watchdog ends the process
    (exit 0: the outputs were written atomically before) if teardown takes over TEARDOWN_S."""
    import gc
    import threading

    import torch
    import torch.distributed as dist

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if not dist.is_initialized():
        return

    def give_up():
        print(f"specmoe: process-group teardown did not finish in {TEARDOWN_S:.0f} s after the "
              "results were written; exiting", file=sys.stderr, flush=True)
        os._exit(0)
    watchdog = threading.Timer(TEARDOWN_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    dist.barrier()
    dist.destroy_process_group()
    watchdog.cancel()


def _exit_if_torchrun_gpu(code: int) -> int:
    """Under torchrun on GPUs, leave without the interpreter's shutdown (NCCL's and CUDA's
    atexit work is where a hang after the results would come from); else return code."""
    import torch
    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
