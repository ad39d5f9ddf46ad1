"""Load a Mixtral, Qwen2-MoE or DeepSeek-V2/V3 HF checkpoint (config.json + *.safetensors).

Only safetensors are read (no pickle). Both expert layouts are accepted: one tensor per
expert (`experts.{j}.w1` / `gate_proj`), as transformers writes them, and the fused
`experts.gate_up_proj [E, 2F, H]` / `experts.down_proj [E, H, F]` of transformers 5 modules.
DeepSeek's interleaved rotary columns are reordered to our half-split layout on loading.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from specmoe.errors import InputError
from specmoe.runtime.config import MoEConfig, from_hf_config, rope_interleaved
from specmoe.runtime.model import MoEModel


def _open_tensors(folder: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file that holds it."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "", "no .safetensors files in the checkpoint folder")
    where = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    where[k] = f
        except Exception as e:  # safetensors raises its own error types on a bad header
            raise InputError(f, "", f"not a readable safetensors file ({e})") from None
    return where


def _expert_names(prefix: str, mt: str, j: int) -> tuple[str, str, str]:
    """HF names of expert j's gate, up and down projections."""
    if mt == "mixtral":
        return tuple(f"{prefix}.block_sparse_moe.experts.{j}.{w}.weight" for w in ("w1", "w3", "w2"))
    return tuple(f"{prefix}.mlp.experts.{j}.{w}_proj.weight" for w in ("gate", "up", "down"))


def _plan_tensors(model: MoEModel, mt: str, where: dict) -> list[tuple[str, str, object]]:
    """(hf_name, our_param_name, index into the expert stack or a fused slice or None)."""
    cfg, out = model.cfg, []
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if name.startswith("lm_head") and cfg.tie_embeddings:
            continue
        if ".experts." not in name:
            hf = "model." + name if not name.startswith("lm_head") else name
            if mt == "mixtral" and ".mlp.gate." in name:
                if hf not in where:
                    hf = hf.replace(".mlp.gate.", ".block_sparse_moe.gate.")
            if mt.startswith("deepseek"):
                hf = hf.replace(".mlp.shared_expert.", ".mlp.shared_experts.")
            out.append((hf, name, None))
            continue
        prefix, which = "model." + ".".join(parts[:2]), parts[-1]  # model.layers.i, w_gate
        fused = f"{prefix}.mlp.experts.gate_up_proj"
        if fused in where:
            src = fused if which != "w_down" else f"{prefix}.mlp.experts.down_proj"
            out.append((src, name, {"w_gate": "gate", "w_up": "up", "w_down": "all"}[which]))
            continue
        col = {"w_gate": 0, "w_up": 1, "w_down": 2}[which]
        for j in range(cfg.num_experts):
            out.append((_expert_names(prefix, mt, j)[col], name, j))
    return out


def _deinterleave_rope(state: dict, cfg: MoEConfig):
    """DeepSeek checkpoints rotate interleaved pairs (x0, x1), (x2, x3), ...; our rope rotates
    the half-split pairs (x_j, x_{j+r/2}). Reordering the rotary output rows of the query and
    latent-key projections to [even..., odd...] makes the half-split rotation compute the
    interleaved one; q.k is unchanged as both sides are permuted alike. In place on `state`."""
    r, nope = cfg.rope_dim, cfg.qk_nope_head_dim
    perm = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])
    for i in range(cfg.num_layers):
        a = f"layers.{i}.self_attn."
        q = state[a + ("q_b_proj" if cfg.q_lora_rank else "q_proj") + ".weight"]
        qh = q.view(cfg.num_heads, nope + r, q.shape[-1])  # [heads, nope + rope, in]
        qh[:, nope:] = qh[:, nope:][:, perm]
        kv = state[a + "kv_a_proj_with_mqa.weight"]  # [rank + rope, H]
        kv[cfg.kv_lora_rank:] = kv[cfg.kv_lora_rank:][perm]


def load_hf(folder, dtype=torch.float32, device="cpu") -> MoEModel:
    """Build MoEModel from an HF checkpoint folder. Bad input -> InputError naming file and tensor."""
    from safetensors import safe_open

    folder = Path(folder)
    cfg_path = folder / "config.json"
    try:
        hf_cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(cfg_path, "", f"cannot read config ({e})") from None
    cfg = from_hf_config(hf_cfg, cfg_path)
    where = _open_tensors(folder)
    with torch.device("meta"):
        model = MoEModel(cfg)
    params = dict(model.named_parameters())
    state = {n: torch.empty(p.shape, dtype=dtype) for n, p in params.items()}
    handles = {}
    try:
        for hf, ours, idx in _plan_tensors(model, hf_cfg["model_type"], where):
            if hf not in where:
                raise InputError(folder, hf, "tensor is missing from the checkpoint")
            f = where[hf]
            if f not in handles:
                handles[f] = safe_open(str(f), "pt")
            t = handles[f].get_tensor(hf)
            dst = state[ours]
            if idx is None or idx == "all":
                want = tuple(dst.shape)
                target = dst
            elif isinstance(idx, int):
                want, target = tuple(dst.shape[1:]), dst[idx]
            else:  # fused gate_up [E, 2F, H]: first half gate, second half up
                f_ = dst.shape[1]
                want = (dst.shape[0], 2 * f_, dst.shape[2])
                if tuple(t.shape) == want:
                    t = t[:, :f_] if idx == "gate" else t[:, f_:]
                target = dst
            if tuple(t.shape) != tuple(target.shape):
                raise InputError(f, hf, f"expected shape {list(want)}, got {list(t.shape)}")
            target.copy_(t.to(dtype))
    finally:
        handles.clear()
    if cfg.kv_lora_rank and rope_interleaved(hf_cfg):
        _deinterleave_rope(state, cfg)
    model = model.to_empty(device="cpu")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.load_state_dict({k: v for k, v in state.items()
                           if not (cfg.tie_embeddings and k.startswith("lm_head"))}, strict=False)
    return model.to(device=device, dtype=dtype).eval()
