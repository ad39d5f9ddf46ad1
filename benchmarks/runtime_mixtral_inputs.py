"""Inputs of the Mixtral-8x7b validation case (benchmarks/bench_runtime_h200.sh): there is no
real Mixtral routing trace, so the ESFT deepseek-v2-lite intent trace is mapped onto Mixtral's
8 experts and top-2, keeping its sequences, positions and per-token correlation:

  Mixtral layer l replays deepseek MoE layer l % 26; deepseek expert e (64) -> Mixtral expert
  e // 8 (8 consecutive experts form one); a token's two experts are the first two distinct
  mapped experts in deepseek's rank order; weights are deepseek's summed per mapped expert,
  renormalised over the two (Mixtral renormalises its top-2).

Also writes the plans: plan-mixtral-ep2.json (contiguous, EP=2) and plan-mixtral-ep1.json.

    python benchmarks/runtime_mixtral_inputs.py ESFT_INTENT.npz OUTDIR [NUM_LAYERS]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from specmoe.traces.routing import RoutingTrace, load, save

E, K = 8, 2


def map_trace(src: RoutingTrace, num_layers: int) -> RoutingTrace:
    """[T, L_src, 6] over 64 experts -> [T, num_layers, 2] over 8."""
    ids = src.topk_ids[:, np.arange(num_layers) % src.num_layers]  # [T, L, k_src]
    w = src.topk_weights[:, np.arange(num_layers) % src.num_layers]
    group = np.where(ids >= 0, ids * E // src.num_experts, -1)
    out_ids = np.full(ids.shape[:2] + (K,), -1, np.int32)
    out_w = np.zeros(ids.shape[:2] + (K,), np.float32)
    for t in range(ids.shape[0]):
        for layer in range(num_layers):
            picked = []
            for g in group[t, layer]:
                if g >= 0 and g not in picked:
                    picked.append(int(g))
                if len(picked) == K:
                    break
            for j, g in enumerate(picked):
                out_ids[t, layer, j] = g
                out_w[t, layer, j] = w[t, layer][group[t, layer] == g].sum()
    s = out_w.sum(-1, keepdims=True)
    out_w = np.where(s > 0, out_w / np.where(s > 0, s, 1), 0).astype(np.float32)
    meta = {"model": "mixtral-8x7b", "num_experts": E, "top_k": K, "phase": src.meta.get("phase", "decode"),
            "source": f"mapped from {src.meta.get('source', '?')} (benchmarks/runtime_mixtral_inputs.py)"}
    return RoutingTrace(out_ids, out_w, src.seq_id, src.position, meta, src.token_id)


def plans(out: Path, num_layers: int) -> None:
    for ep in (2, 1):
        d = {"version": 1, "model": "mixtral-8x7b", "name": f"mixtral-ep{ep}",
             "cluster": "h200x2-nvlink", "parallel": {"ep": ep, "attention": "dp"},
             "placement": {"physical_to_logical_map": [list(range(E))] * num_layers,
                           "num_redundant_experts": 0},
             "token_schedule": {"policy": "none"}}
        (out / f"plan-mixtral-ep{ep}.json").write_text(json.dumps(d))


def main(src: str, out: str, num_layers: int = 32) -> None:
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    save(map_trace(load(src), num_layers), o / "mixtral_mapped.npz")
    plans(o, num_layers)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
