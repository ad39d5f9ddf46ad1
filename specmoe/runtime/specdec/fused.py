"""The verify / decode forward of `model.Llama` on the batch-invariant Triton kernels.

Five kernels per layer instead of ~36 torch ops: RMSNorm + QKV + RoPE + KV-cache write
(`dense.qkv_rope_`), per-query tree attention (`path_attention`), O projection + residual,
RMSNorm + gate/up + SwiGLU, down projection + residual; then RMSNorm + LM head. At 135M
parameters a step is launch- and latency-bound, so the kernel count sets the step time; and
because every kernel's row arithmetic is independent of the row count, a verify step's logits
for a node equal, bit for bit, the logits autoregressive decoding computes for that token, with
TF32 tensor-core dots. Prefill runs the same kernels (the prompt as a chain). RSD's draft
levels stay on the plain-torch model: they write cache slots that the verify step overwrites
before it reads them.
"""
from __future__ import annotations

import torch

from specmoe.kernels import dense
from specmoe.kernels.path_attention import path_attention
from specmoe.runtime.specdec.model import KVCache, Llama
from specmoe.runtime.specdec.tree import tree_paths


PRECISIONS = ("tf32", "tf32x3", "ieee", "bf16")


class FusedLlama:
    """Weights rearranged for the kernels and the RoPE table, over a `Llama`.

    precision: of the projections. "tf32" (default), "tf32x3", "ieee": fp32 weights (shared
    with the model), tl.dot's input precision. "bf16": bf16 copies of the projection and LM-head
    weights, activations rounded to bf16 at each dot, fp32 accumulation (how serving engines run
    SmolLM2, trained in bf16): half the weight bytes and twice the tensor-core rate of tf32.
    Attention, norms, residual stream and KV cache stay fp32 (attention dots in tf32).
    """

    def __init__(self, model: Llama, max_len: int, precision: str = "tf32"):
        c = model.cfg
        if c.rope_dim != c.head_dim:
            raise ValueError(f"the fused path rotates whole heads: rope_dim {c.rope_dim} != head_dim {c.head_dim}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.model, self.precision = model, precision
        self.attn_precision = "tf32" if precision == "bf16" else precision
        wdt = torch.bfloat16 if precision == "bf16" else torch.float32
        self.layers = []
        for lw in model.layers:
            self.layers.append({
                "attn_norm": lw["attn_norm"], "ffn_norm": lw["ffn_norm"],
                "wqkv": lw["wqkv"].to(wdt), "wo": lw["wo"].to(wdt),
                "w13": dense.interleave_rows(lw["w1"], lw["w3"]).to(wdt), "w2": lw["w2"].to(wdt)})
        self.lm_head = model.lm_head.to(wdt)
        pos = torch.arange(max_len, device=model.device)
        ang = pos.float()[:, None] * model.inv_freq[None, :]    # as Llama._rope_table computes it
        self.cos, self.sin = ang.cos().contiguous(), ang.sin().contiguous()

    def tables(self, parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(depth [T], path [T, D + 1]) int32 on the model's device for a tree."""
        depth, path = tree_paths(list(parents))
        dev = self.model.device
        return torch.as_tensor(depth, device=dev), torch.as_tensor(path, device=dev)

    def hidden(self, tok: torch.Tensor, n: torch.Tensor, depth: torch.Tensor, path: torch.Tensor,
               cache: KVCache, layers: range | None = None, h: torch.Tensor | None = None) -> torch.Tensor:
        """Layers `layers` (default all) on tree tokens tok [T] (node t in slot n + t, at
        position n + depth[t]). Returns the residual stream [T, dim]."""
        c, p = self.model.cfg, self.precision
        x = self.model.embed[tok] if h is None else h.clone()
        for li in (range(c.n_layers) if layers is None else layers):
            lw = self.layers[li]
            q = dense.qkv_rope_(x, lw["attn_norm"], lw["wqkv"], self.cos, self.sin, n, depth,
                                cache.k[li], cache.v[li], c.n_heads, c.norm_eps, p)
            o = path_attention(q, cache.k[li], cache.v[li], n, depth, path, precision=self.attn_precision)
            dense.linear(o, lw["wo"], residual=x, out=x, precision=p)
            dense.linear(dense.swiglu(x, lw["ffn_norm"], lw["w13"], c.norm_eps, p), lw["w2"],
                         residual=x, out=x, precision=p)
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [T, dim] -> logits [T, vocab] fp32 (final RMSNorm fused into the LM head)."""
        return dense.linear(h, self.lm_head, norm_w=self.model.norm, eps=self.model.cfg.norm_eps,
                            precision=self.precision)
