"""Inputs for a CPU rehearsal of benchmarks/bench_runtime_h200.sh (gloo, tiny model): a tiny
MLA model spec (deepseek-v2-lite's structure at small widths), a synthetic routing trace with
decode-ordered sequences, and plans like docs/validation/plans (contiguous, eplb-like
permuted, speculative with the dp-request schedule, EP=1).

    python benchmarks/runtime_smoke_inputs.py OUTDIR
    RESULTS=OUTDIR/out TRACE=OUTDIR/trace.npz PLANS=OUTDIR PY=python NUM_LAYERS=3 \
        BATCHES=1,2,4,8,16 STEPS=2 EXPERTS=torch bash benchmarks/bench_runtime_h200.sh
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from specmoe.traces.routing import RoutingTrace, save

E, K, LAYERS = 8, 2, 4  # experts, top-k, MoE layers (the model has one dense layer first)
MODEL = f"""name: tiny-mla
source: smoke test (benchmarks/runtime_smoke_inputs.py)
num_layers: {LAYERS + 1}
num_dense_layers: 1
dense_intermediate_size: 96
hidden_size: 64
num_experts: {E}
num_shared_experts: 1
top_k: {K}
expert_intermediate_size: 32
vocab_size: 128
scoring: softmax
norm_topk_prob: false
attention: {{kind: mla, num_heads: 2, q_lora_rank: 0, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 8, v_head_dim: 8}}
"""


def trace(seed: int = 0, seqs: int = 40, length: int = 16) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    n = seqs * length
    ids = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(LAYERS)]) for _ in range(n)])
    w = rng.random((n, LAYERS, K)).astype(np.float32)
    return RoutingTrace(ids.astype(np.int32), w / w.sum(-1, keepdims=True),
                        np.repeat(np.arange(seqs), length).astype(np.int64),
                        np.tile(np.arange(length), seqs).astype(np.int64),
                        {"model": "tiny-mla", "num_experts": E, "top_k": K, "phase": "decode",
                         "source": "synthetic"})


def plan(model: str, ep: int, phy2log, policy: str) -> dict:
    return {"version": 1, "model": model, "parallel": {"ep": ep, "attention": "dp"},
            "placement": {"physical_to_logical_map": phy2log, "num_redundant_experts": 0},
            "token_schedule": {"policy": policy}}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny-mla.yaml").write_text(MODEL)
    save(trace(), out / "trace.npz")
    model = str((out / "tiny-mla.yaml").resolve())
    contiguous = [list(range(E))] * LAYERS
    permuted = [list(np.random.default_rng(i).permutation(E).tolist()) for i in range(LAYERS)]
    for name, ep, p2l, policy in (("contiguous", 2, contiguous, "none"), ("eplb", 2, permuted, "none"),
                                  ("speculative", 2, permuted, "dp-request"), ("ep1", 1, contiguous, "none")):
        (out / f"plan-{name}.json").write_text(json.dumps(plan(model, ep, p2l, policy)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
