"""Where a Token Recycling step's time goes, against an AR step: CUDA kernel time by kernel name
(torch.profiler, eager launches, SmolLM2-135M shapes with random weights, no GGUF needed).

    PYTHONPATH=. python benchmarks/profile_specdec_step.py [--tf32] [--kernels triton [--precision bf16]] > profile.txt
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_specdec import random_smollm2
from specmoe.runtime.specdec.engine import Decoder
from specmoe.runtime.specdec.tree import chain, default_template


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--kernels", choices=["triton", "torch"], default="torch")
    ap.add_argument("--precision", choices=["tf32", "bf16"], default="tf32", help="triton projections")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    m = random_smollm2("cuda")
    dec = Decoder(m, 800, use_graphs=False, kernels=a.kernels, precision=a.precision)
    dec.cache.n = 500
    rows = {}
    for tree in (chain(0), default_template()):
        dec.step_time_s(tree, reps=3)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dec.step_time_s(tree, reps=1)              # 5 steps (step_time_s's 5 runs of reps)
        for e in prof.key_averages():
            if e.device_type.name == "CUDA":
                r = rows.setdefault(e.key[:90], [0, 0.0, 0, 0.0])
                i = 0 if tree.size == 1 else 2
                r[i] += e.count / 5
                r[i + 1] += e.device_time_total / 5
    print(f"{'kernel':90s} {'n_ar':>6s} {'us_ar':>8s} {'n_T81':>6s} {'us_T81':>8s}")
    tot = [0.0, 0.0]
    for k, r in sorted(rows.items(), key=lambda kv: -(kv[1][3] - kv[1][1])):
        tot[0] += r[1]
        tot[1] += r[3]
        print(f"{k:90s} {r[0]:6.0f} {r[1]:8.1f} {r[2]:6.0f} {r[3]:8.1f}")
    print(f"total kernel time per step: AR {tot[0]:.1f} us, T=81 {tot[1]:.1f} us")


if __name__ == "__main__":
    main()
