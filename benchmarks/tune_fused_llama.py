"""Tile configs of the batch-invariant fused Llama kernels (specmoe/kernels/dense.py,
path_attention.py) at SmolLM2-135M's shapes, timed at M=1 (AR step) and M=81 (verify of the
80-draft template) in CUDA graphs. One config per weight shape serves both M (batch
invariance), so the pick minimises t(1) + t(81). Prints a table, writes JSON, and with
--write-configs stores the picks in specmoe/kernels/configs.json under this device's name.

    PYTHONPATH=. python benchmarks/tune_fused_llama.py --out benchmarks/results [--write-configs]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from specmoe.kernels import dense
from specmoe.kernels._common import CONFIG_PATH, device_name
from specmoe.kernels.path_attention import path_attention
from specmoe.runtime.specdec.tree import default_template, tree_paths

# (name, rows N, K, kind) at SmolLM2-135M: dim 576, 9 + 3 + 3 heads of 64, ffn 1536, vocab 49152
SHAPES = [("qkv", 960, 576, "rope"), ("o_proj", 576, 576, "resid"), ("gate_up", 3072, 576, "swiglu"),
          ("down", 576, 1536, "resid"), ("lm_head", 49152, 576, "norm")]


def time_us(fn) -> float:
    fn()
    return do_bench_cudagraph(fn, rep=30) * 1e3


def dense_case(name, N, K, kind, M, cfg, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, K, device=dev, generator=g)
    w = torch.randn(N, K, device=dev, generator=g) * K ** -0.5
    nw = torch.ones(K, device=dev)
    if kind == "rope":
        kc = torch.zeros(3, 800, 64, device=dev)
        vc = torch.zeros_like(kc)
        cos = torch.ones(800, 32, device=dev)
        n = torch.tensor(500, device=dev)
        depth = torch.zeros(M, dtype=torch.int32, device=dev)
        return lambda: dense.qkv_rope_(x, nw, w, cos, cos, n, depth, kc, vc, 9, 1e-5, cfg=cfg)
    if kind == "swiglu":
        return lambda: dense.swiglu(x, nw, w, 1e-5, cfg=cfg)
    if kind == "resid":
        r = torch.randn(M, N, device=dev, generator=g)
        return lambda: dense.linear(x, w, residual=r, out=r, cfg=cfg)
    return lambda: dense.linear(x, w, norm_w=nw, eps=1e-5, cfg=cfg)


def dense_configs(N, K):
    lm_head = N >= 16384
    for bm, bn, split in itertools.product((16, 64, 128), (32, 64, 128) if lm_head else (32, 64), (1, 2, 3, 6)):
        if lm_head and split > 1:
            continue
        yield {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "SPLIT": split, "num_warps": 4, "num_stages": 2}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--write-configs", action="store_true")
    ap.add_argument("--only", choices=["dense", "attention"], default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    t0 = time.time()
    res = {"device": device_name(dev), "dense": {}, "path_attention": []}
    picks = {}
    for name, N, K, kind in SHAPES if a.only != "attention" else []:
        rows = []
        for cfg in dense_configs(N, K):
            t = {M: time_us(dense_case(name, N, K, kind, M, cfg, dev)) for M in (1, 81)}
            rows.append({**cfg, "us_m1": round(t[1], 2), "us_m81": round(t[81], 2)})
        default = dense.config(N, K)                     # the built-in default, not a stored pick
        t = {M: time_us(dense_case(name, N, K, kind, M, None, dev)) for M in (1, 81)}
        best = min(rows, key=lambda r: r["us_m1"] + r["us_m81"])
        res["dense"][name] = {"N": N, "K": K, "default": {**default, "us_m1": round(t[1], 2), "us_m81": round(t[81], 2)},
                              "best": best, "sweep": rows}
        picks[f"{N},{K}"] = {k: best[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT", "num_warps", "num_stages")}
        print(f"{name:8s} N={N:6d} K={K:5d}  default {t[1]:7.2f} / {t[81]:7.2f} us   best {best['us_m1']:7.2f} / "
              f"{best['us_m81']:7.2f} us  {picks[f'{N},{K}']}  [{time.time() - t0:.0f}s]", flush=True)
    kc = torch.randn(3, 800, 64, device=dev)
    vc = torch.randn(3, 800, 64, device=dev)
    for chunk, bn in itertools.product((64, 128, 256), (32, 64)) if a.only != "dense" else []:
        t = {}
        for T in (1, 81):
            q = torch.randn(T, 9, 64, device=dev)
            parents = default_template().parents if T > 1 else (-1,)       # the 80-draft template
            depth, path = (torch.as_tensor(a, device=dev) for a in tree_paths(list(parents)))
            n = torch.tensor(560, device=dev)
            t[T] = time_us(lambda q=q, n=n, depth=depth, path=path, chunk=chunk, bn=bn:
                           path_attention(q, kc, vc, n, depth, path, chunk=chunk, block_n=bn))
        res["path_attention"].append({"CHUNK": chunk, "BLOCK_N": bn, "context": 560, "us_t1": round(t[1], 2),
                                      "us_t81": round(t[81], 2)})
        print(f"path_attention chunk={chunk} block_n={bn}: {t[1]:.2f} / {t[81]:.2f} us", flush=True)
    best_attn = min(res["path_attention"], key=lambda r: r["us_t1"] + r["us_t81"], default=None)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"tune_fused_llama_h200{'_' + a.only if a.only else ''}.json").write_text(json.dumps(res, indent=1) + "\n")
    if a.write_configs:
        allc = json.loads(CONFIG_PATH.read_text()) if CONFIG_PATH.exists() else {}
        mine = allc.setdefault("devices", {}).setdefault(res["device"], {})
        if picks:
            mine["fused_linear"] = picks
        if best_attn:
            mine["path_attention"] = {"9,3,64": {"CHUNK": best_attn["CHUNK"], "BLOCK_N": best_attn["BLOCK_N"]}}
        Path(a.out, "configs.json").write_text(json.dumps(allc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
