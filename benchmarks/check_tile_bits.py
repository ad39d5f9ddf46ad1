"""Do the fused linear's bits depend on BLOCK_M / BLOCK_N, with BLOCK_K and SPLIT fixed?

Batch invariance only needs a row's reduction order to be fixed. If the row tile (16 rows:
mma.sync; 64 or 128: wgmma on Hopper) did not change a row's bits, the row tile could be
chosen per call (16 rows for the AR step, 64 for an 81-row verify) without breaking greedy
equality. This measures it on the device for SmolLM2-135M's shapes: each row of an 81-row
call with every (BLOCK_M, BLOCK_N) against the 16-row tile's.

    PYTHONPATH=. python benchmarks/check_tile_bits.py
"""
from __future__ import annotations

import torch

from specmoe.kernels import dense

SHAPES = [("qkv", 960, 576), ("o_proj", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536)]


def main():
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    print(f"{'shape':8s} {'split':>5s} {'BLOCK_M':>7s} {'BLOCK_N':>7s} {'rows equal to 16-row tile':>26s}")
    for name, N, K in SHAPES:
        x = torch.randn(81, K, device=dev, generator=g)
        w = torch.randn(N, K, device=dev, generator=g) * K ** -0.5
        nw = 1 + 0.1 * torch.randn(K, device=dev, generator=g)
        split = dense.config(N, K, dev)["SPLIT"]
        base = None
        for bm in (16, 32, 64, 128):
            for bn in (32, 64, 128):
                cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "SPLIT": split,
                       "num_warps": 4 if bm < 128 else 8, "num_stages": 2}
                y = dense.linear(x, w, norm_w=nw, eps=1e-5, cfg=cfg)
                base = y if base is None else base
                same = int((y == base).all(1).sum())
                print(f"{name:8s} {split:5d} {bm:7d} {bn:7d} {same:>23d}/81", flush=True)


if __name__ == "__main__":
    main()
