"""Tile configs of the batch-invariant fused Llama kernels (specmoe/kernels/dense.py,
path_attention.py) at SmolLM2-135M's shapes, timed in CUDA graphs: the projections at M=1 (AR
step) and M=81 (verify of the 80-draft template), path attention at 1, 25 and 81 queries over
ATTN_CONTEXTS. One config per weight shape serves every M (batch invariance), so the pick
minimises t(1) + t(81). Prints a table, writes JSON, and with --write-configs writes
OUT/configs.json: the repository's configs.json with this device's picks, to copy over
specmoe/kernels/configs.json.

    PYTHONPATH=. python benchmarks/tune_fused_llama.py --out $OUT [--only dense|attention] [--precision bf16]
        [--write-configs]

--precision bf16 tunes the projections with bf16 weights (configs.json keys "N,K,bf16"; the
fp32 / TF32 picks under "N,K" are kept).
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

ATTN_CONTEXTS = (150, 300, 500)  # committed tokens: Spec-Bench prompts (~50-500 tokens) + part of the answer
# (name, rows N, K, kind) at SmolLM2-135M: dim 576, 9 + 3 + 3 heads of 64, ffn 1536, vocab 49152
SHAPES = [("qkv", 960, 576, "rope"), ("o_proj", 576, 576, "resid"), ("gate_up", 3072, 576, "swiglu"),
          ("down", 576, 1536, "resid"), ("lm_head", 49152, 576, "norm")]


def time_us(fn) -> float:
    fn()
    return do_bench_cudagraph(fn, rep=30) * 1e3


def dense_case(name, N, K, kind, M, cfg, dev, wdt=torch.float32):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, K, device=dev, generator=g)
    w = (torch.randn(N, K, device=dev, generator=g) * K ** -0.5).to(wdt)
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
    if lm_head:
        for bm, bn, warps in itertools.product((16, 64, 128), (64, 128, 256), (4, 8)):
            yield {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "SPLIT": 1, "num_warps": warps, "num_stages": 2}
        return
    for bm, bn, split in itertools.product((16, 32, 64, 128), (32, 64, 128), (2, 3, 6)):
        if K // split >= 64:
            yield {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "SPLIT": split, "num_warps": 4 if bm < 128 else 8,
                   "num_stages": 2}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--write-configs", action="store_true")
    ap.add_argument("--only", choices=["dense", "attention"], default=None)
    ap.add_argument("--precision", choices=["tf32", "bf16"], default="tf32", help="projection weights fp32 or bf16")
    a = ap.parse_args()
    wdt = torch.bfloat16 if a.precision == "bf16" else torch.float32
    suffix = ",bf16" if a.precision == "bf16" else ""
    dev = torch.device("cuda")
    t0 = time.time()
    res = {"device": device_name(dev), "precision": a.precision, "dense": {}, "path_attention": []}
    picks = {}
    for name, N, K, kind in SHAPES if a.only != "attention" else []:
        rows = []
        for cfg in dense_configs(N, K):
            t = {M: time_us(dense_case(name, N, K, kind, M, cfg, dev, wdt)) for M in (1, 81)}
            rows.append({**cfg, "us_m1": round(t[1], 2), "us_m81": round(t[81], 2)})
        default = dense.config(N, K)                     # the built-in default, not a stored pick
        t = {M: time_us(dense_case(name, N, K, kind, M, default, dev, wdt)) for M in (1, 81)}
        best = min(rows, key=lambda r: r["us_m1"] + r["us_m81"])
        res["dense"][name] = {"N": N, "K": K, "default": {**default, "us_m1": round(t[1], 2), "us_m81": round(t[81], 2)},
                              "best": best, "sweep": rows}
        key = f"{N},{K}{suffix}"
        picks[key] = {k: best[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT", "num_warps", "num_stages")}
        print(f"{name:8s} N={N:6d} K={K:5d}  default {t[1]:7.2f} / {t[81]:7.2f} us   best {best['us_m1']:7.2f} / "
              f"{best['us_m81']:7.2f} us  {picks[key]}  [{time.time() - t0:.0f}s]", flush=True)
    kc = torch.randn(3, 800, 64, device=dev)
    vc = torch.randn(3, 800, 64, device=dev)
    trees = {1: (-1,), 25: default_template().parents[:25], 81: default_template().parents}  # BFS prefix: a tree
    for bn, chunk, qb in itertools.product((32, 64), (128, 256, 512, 1024), (1, 2)) if a.only != "dense" else []:
        t = {}                                           # summed over the contexts
        for T, parents in trees.items():
            q = torch.randn(T, 9, 64, device=dev)
            depth, path = (torch.as_tensor(x, device=dev) for x in tree_paths(list(parents)))
            t[T] = sum(time_us(lambda q=q, n=torch.tensor(ctx, device=dev), depth=depth, path=path:
                               path_attention(q, kc, vc, n, depth, path, block_n=bn, chunk=chunk, qb=qb))
                       for ctx in ATTN_CONTEXTS)
        res["path_attention"].append({"BLOCK_N": bn, "CHUNK": chunk, "QB": qb, "contexts": list(ATTN_CONTEXTS),
                                      **{f"us_t{T}": round(v, 2) for T, v in t.items()}})
        print(f"path_attention block_n={bn} chunk={chunk} qb={qb}: " + " / ".join(f"T={T} {v:.2f}" for T, v in t.items())
              + f" us (sum over contexts {ATTN_CONTEXTS})", flush=True)
    # BLOCK_N and CHUNK are part of a query's arithmetic: one pair per head shape, for T=1 and
    # T=81 alike; QB changes no bits: the best for the 81-query verify at that pair
    rows = res["path_attention"]
    best_attn = None
    if rows:
        arith = lambda r: (r["BLOCK_N"], r["CHUNK"])
        pair = min({arith(r) for r in rows},
                   key=lambda p: min(r["us_t1"] + r["us_t81"] for r in rows if arith(r) == p))
        best_attn = min((r for r in rows if arith(r) == pair), key=lambda r: r["us_t81"])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    card = next((c for c in ("h200", "h100") if c in res["device"].lower()), "cuda")
    name = f"tune_fused_llama_{card}" + ("_" + a.only if a.only else "") + ("_bf16" if a.precision == "bf16" else "")
    (Path(a.out) / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    if a.write_configs:
        allc = json.loads(CONFIG_PATH.read_text()) if CONFIG_PATH.exists() else {}
        mine = allc.setdefault("devices", {}).setdefault(res["device"], {})
        if picks:
            mine.setdefault("fused_linear", {}).update(picks)
        if best_attn:
            mine["path_attention"] = {"9,3,64": {k: best_attn[k] for k in ("BLOCK_N", "CHUNK", "QB")}}
        Path(a.out, "configs.json").write_text(json.dumps(allc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
