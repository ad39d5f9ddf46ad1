"""Our decoder against transformers' MixtralForCausalLM, Qwen2MoeForCausalLM, DeepseekV2ForCausalLM
and DeepseekV3ForCausalLM (fp32, CPU)."""
import json

import pytest
import torch

from specmoe.errors import InputError
from specmoe.runtime.checkpoint import load_hf
from specmoe.runtime.model import KVCache


def _ids(vocab, b=2, s=7, seed=0):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fixture", ["mixtral_ckpt", "qwen2moe_ckpt", "deepseek_v2_ckpt",
                                     "deepseek_v3_ckpt"])
def test_logits_match_transformers(fixture, request):
    path, hf = request.getfixturevalue(fixture)
    ours = load_hf(path)
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits.float()
        got = ours(ids)
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    assert err < 1e-4, err
    assert ref.abs().max() > 1e-3  # a real comparison, not two near-zero tensors


@pytest.mark.parametrize("fixture", ["qwen2moe_ckpt", "deepseek_v3_ckpt"])  # GQA cache; MLA latent cache
def test_incremental_decode_matches_full_forward(fixture, request):
    path, _ = request.getfixturevalue(fixture)
    m = load_hf(path)
    ids = _ids(m.cfg.vocab_size, b=2, s=6, seed=3)
    with torch.no_grad():
        full = m(ids)
        cache = KVCache(m.cfg, batch=2, max_len=8, device="cpu", dtype=torch.float32)
        pre = m(ids[:, :4], cache=cache)
        steps = [m(ids[:, i:i + 1], cache=cache) for i in (4, 5)]
    inc = torch.cat([pre] + steps, dim=1)
    assert (inc - full).abs().max().item() < 1e-5


def test_missing_tensor_names_file_and_tensor(mixtral_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file
    path, _ = mixtral_ckpt
    state = load_file(str(path / "model.safetensors"))
    victim = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    assert victim in state
    del state[victim]
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(InputError, match=r"experts\.2\.w3\.weight.*missing"):
        load_hf(tmp_path)


def test_wrong_shape_names_file_and_tensor(qwen2moe_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file
    path, _ = qwen2moe_ckpt
    state = load_file(str(path / "model.safetensors"))
    victim = "model.layers.2.mlp.shared_expert_gate.weight"
    state[victim] = torch.zeros(2, 32)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(InputError) as e:
        load_hf(tmp_path)
    msg = str(e.value)
    assert "model.safetensors" in msg and victim in msg and "[1, 32]" in msg and "[2, 32]" in msg


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8,
        "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}))
    with pytest.raises(InputError, match="model_type"):
        load_hf(tmp_path)


def test_fused_expert_layout_loads_the_same(mixtral_ckpt, tmp_path):
    """transformers 5 modules hold experts fused (gate_up_proj [E, 2F, H], down_proj [E, H, F]);
    a checkpoint in that layout gives the same logits."""
    from safetensors.torch import load_file, save_file
    path, hf = mixtral_ckpt
    state = load_file(str(path / "model.safetensors"))
    fused = {}
    for k, v in state.items():
        if ".block_sparse_moe.experts." in k:
            continue
        fused[k.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = v
    for i in range(hf.config.num_hidden_layers):
        p = f"model.layers.{i}.block_sparse_moe.experts"
        e = range(hf.config.num_local_experts)
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{p}.{j}.w1.weight"], state[f"{p}.{j}.w3.weight"]]) for j in e])
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([state[f"{p}.{j}.w2.weight"] for j in e])
    save_file(fused, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ids = _ids(hf.config.vocab_size, seed=4)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits.float()
        got = load_hf(tmp_path)(ids)
    assert (got - ref).abs().max().item() < 1e-4
