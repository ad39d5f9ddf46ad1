"""Compute cost model: a roofline per operation, or measured times from a Calibration.

Roofline: t = max(FLOPs / (peak * e_flops), bytes / (hbm * e_mem)) + launch overhead.
The efficiency factors apply to datasheet figures only: a figure the GPU spec marks
`measured` is already an achieved ceiling, so its efficiency is 1. With a calibration, each
lookup interpolates the measured grid and falls back to the roofline outside it; `notes`
records which happened.

All functions take numpy arrays of token counts and return microseconds of the same shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specmoe.simulator.calibration import Calibration
from specmoe.specs import GPUSpec, ModelSpec


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of datasheet peaks (estimates: large bf16 GEMMs reach about 75%
    of H100's dense peak; streaming kernels about 80% of HBM bandwidth) and a per-kernel
    launch overhead."""

    flops: float = 0.75
    memory: float = 0.80
    launch_us: float = 2.0


class ComputeModel:
    """Per-GPU operation times for one model on one GPU type, with TP degree `tp` for attention."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, calibration: Calibration | None = None,
                 efficiency: Efficiency = Efficiency()):
        self.model, self.gpu, self.cal, self.eff = model, gpu, calibration, efficiency
        e_f = 1.0 if gpu.sources.get("bf16_TFLOPs") == "measured" else efficiency.flops
        e_m = 1.0 if gpu.sources.get("hbm_bandwidth_GBps") == "measured" else efficiency.memory
        self.flops_per_s = gpu.bf16_flops * e_f
        self.bytes_per_s = gpu.hbm_bandwidth * e_m
        self._fallbacks: set[str] = set()

    @property
    def notes(self) -> list[str]:
        if self.cal is None:
            base = (f"compute: roofline on {self.gpu.name} figures (no calibration): "
                    f"{self.flops_per_s / 1e12:.0f} TFLOP/s, {self.bytes_per_s / 1e9:.0f} GB/s")
            return [base]
        out = [f"compute: calibration {self.cal.source} ({self.cal.device}, {self.cal.date})"]
        out += [f"compute: {k} outside the calibration grid, roofline used" for k in sorted(self._fallbacks)]
        return out

    def roofline_us(self, flops, nbytes) -> np.ndarray:
        t = np.maximum(np.asarray(flops, np.float64) / self.flops_per_s,
                       np.asarray(nbytes, np.float64) / self.bytes_per_s)
        return t * 1e6 + self.eff.launch_us

    def _calibrated(self, name: str, roof: np.ndarray, measured: np.ndarray, active) -> np.ndarray:
        miss = np.isnan(measured) & active
        if miss.any():
            self._fallbacks.add(name)
        return np.where(np.isnan(measured), roof, measured)

    def gemm_us(self, m, n: int, k: int) -> np.ndarray:
        """`[m, k] @ [k, n]` in the model dtype; zero where m == 0."""
        m = np.asarray(m, np.float64)
        d = self.model.dtype_bytes
        t = self.roofline_us(2.0 * m * n * k, d * (m * k + k * n + m * n))
        if self.cal is not None:
            q = m.reshape(-1, 1)
            t = self._calibrated(f"gemm n={n} k={k}", t,
                                 self.cal.lookup("gemm", {"n": n, "k": k}, ("m",), q).reshape(m.shape), m > 0)
        return np.where(m > 0, t, 0.0)

    def ffn_us(self, tokens: np.ndarray, widths) -> np.ndarray:
        """Grouped SwiGLU GEMM over local experts: `tokens [..., n]` routed to experts of
        FFN width `widths [n]` (or `[..., n]`) -> `[...]`. An expert with no token costs nothing
        (its weights are not read)."""
        tokens = np.asarray(tokens, np.float64)
        widths = np.broadcast_to(np.asarray(widths, np.float64), tokens.shape)
        h, d = self.model.hidden_size, self.model.dtype_bytes
        active = tokens > 0
        flops = (6.0 * h * widths * tokens).sum(-1)
        nbytes = d * (3.0 * h * widths * active + tokens * (2.0 * h + 3.0 * widths)).sum(-1)
        roof = np.where(active.any(-1), self.roofline_us(flops, nbytes), 0.0)
        if self.cal is None:
            return roof
        return self._grouped_calibrated(tokens, widths, active, roof)

    def _grouped_calibrated(self, tokens, widths, active, roof) -> np.ndarray:
        """Sum of measured grouped-GEMM times per distinct width; roofline where any group
        falls outside the grid."""
        h = self.model.hidden_size
        total = np.zeros(roof.shape)
        for w in np.unique(widths):
            sel = widths == w
            n_tok = np.where(sel, tokens, 0).sum(-1)
            n_exp = (sel & active).sum(-1)
            q = np.stack([n_tok.ravel(), n_exp.ravel()], axis=1)
            got = self.cal.lookup("grouped_gemm", {"hidden": h, "ffn": int(w)},
                                  ("tokens", "experts"), q).reshape(n_tok.shape)
            total += np.where(n_tok > 0, got, 0.0)
        miss = np.isnan(total) & active.any(-1)
        if miss.any():
            self._fallbacks.add("grouped_gemm")
        return np.where(np.isnan(total), roof, total)

    def attention_us(self, tokens, context: int, phase: str, tp: int = 1) -> np.ndarray:
        """One attention layer for `tokens [...]` on one GPU (heads split over `tp` GPUs).

        Decode: each token is one sequence reading `context` cached tokens.
        Prefill: tokens of prompts of length `context`, causal (mean span context / 2)."""
        tokens = np.asarray(tokens, np.float64)
        a, h, d = self.model.attention, self.model.hidden_size, self.model.dtype_bytes
        proj = self.gemm_us(tokens, -(-a.weight_elems(h) // (h * tp)), h)
        span = context if phase == "decode" else context / 2.0
        core_flops = tokens * (a.flops_per_token(h, span) - 2.0 * a.weight_elems(h)) / tp
        kv = a.kv_elems_per_token() * d
        kv_read = kv / tp if a.kind == "gqa" else kv  # MLA's latent cache is not split by heads
        core_bytes = tokens * (span * kv_read if phase == "decode" else kv_read * 2)
        core = np.where(tokens > 0, self.roofline_us(core_flops, core_bytes), 0.0)
        if self.cal is not None and phase == "decode":
            heads, kv_heads, head_dim = (a.num_heads // tp, a.num_kv_heads // tp, a.head_dim) \
                if a.kind == "gqa" else (a.num_heads // tp, 1, a.kv_lora_rank + a.qk_rope_head_dim)
            q = np.stack([tokens.ravel(), np.full(tokens.size, float(context))], axis=1)
            got = self.cal.lookup("attention", {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim},
                                  ("batch", "context"), q).reshape(tokens.shape)
            core = self._calibrated("attention", core, got, tokens > 0)
        return proj + np.where(tokens > 0, core, 0.0)

    def gate_us(self, tokens) -> np.ndarray:
        """Router logits `[tokens, hidden] @ [hidden, num_experts]` (top-k selection is fused)."""
        return self.gemm_us(tokens, self.model.num_experts, self.model.hidden_size)

    def lm_head_us(self, tokens) -> np.ndarray:
        return self.gemm_us(tokens, self.model.vocab_size, self.model.hidden_size)
