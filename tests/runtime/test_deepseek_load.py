"""DeepSeek-V2/V3 checkpoints: what the oracle test (test_model_oracle) relies on is really
exercised (group-limited routing, score bias, dense first layer, shared experts, query LoRA),
decoding through the latent cache, and refusals of what is not built."""
import dataclasses
import json
import math

import pytest
import torch

from specmoe.errors import InputError
from specmoe.runtime.checkpoint import load_hf
from specmoe.runtime.config import from_spec
from specmoe.runtime.model import MoEModel


def _ids(vocab, b=2, s=7, seed=0):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def _set_router_cfg(model, **changes):
    for layer in model.layers:
        if layer.is_moe:
            layer.mlp.gate.cfg = dataclasses.replace(layer.mlp.gate.cfg, **changes)


@pytest.mark.parametrize("fixture", ["deepseek_v2_ckpt", "deepseek_v3_ckpt"])
def test_structure_read_from_config(fixture, request):
    path, hf = request.getfixturevalue(fixture)
    m = load_hf(path)
    c = m.cfg
    assert c.dense_layers == (0,) and c.moe_layers == (1, 2)
    assert c.shared_ffn == 2 * 16 and c.n_group == 4 and c.topk_group == 2
    assert c.routed_scaling_factor == hf.config.routed_scaling_factor
    v3 = fixture == "deepseek_v3_ckpt"
    assert (c.scoring, c.score_bias, c.group_score, c.norm_topk_prob) == (
        ("sigmoid", True, "top2sum", True) if v3 else ("softmax", False, "max", False))
    assert c.q_lora_rank == (10 if v3 else 0)


@pytest.mark.parametrize("fixture", ["deepseek_v2_ckpt", "deepseek_v3_ckpt"])
@pytest.mark.parametrize("change", [{"n_group": 1}, {"group_score": "swap"}, {"scoring": "swap"},
                                    {"routed_scaling_factor": 1.0}])
def test_each_routing_feature_changes_the_logits(fixture, change, request):
    """Dropping group limits, swapping the group score or the scoring function, or the scaling,
    moves the logits far beyond the oracle tolerance: the oracle comparison sees each of them."""
    path, hf = request.getfixturevalue(fixture)
    m = load_hf(path)
    if change.get("group_score") == "swap":
        change = {"group_score": "max" if m.cfg.group_score == "top2sum" else "top2sum"}
    if change.get("scoring") == "swap":
        change = {"scoring": "sigmoid" if m.cfg.scoring == "softmax" else "softmax"}
    if change.get("routed_scaling_factor") and hf.config.routed_scaling_factor == 1.0:
        pytest.skip("no scaling to drop")
    ids = _ids(m.cfg.vocab_size, s=9, seed=5)
    with torch.no_grad():
        base = m(ids)
        _set_router_cfg(m, **change)
        moved = m(ids)
    assert (moved - base).abs().max().item() > 1e-3, change


def test_score_bias_changes_the_choice(deepseek_v3_ckpt):
    path, _ = deepseek_v3_ckpt
    m = load_hf(path)
    ids = _ids(m.cfg.vocab_size, s=9, seed=6)
    with torch.no_grad():
        base = m(ids)
        for layer in m.layers:
            if layer.is_moe:
                layer.mlp.gate.e_score_correction_bias.zero_()
        assert (m(ids) - base).abs().max().item() > 1e-3


def _copy_ckpt(path, tmp_path, edit_cfg=None, edit_state=None):
    from safetensors.torch import load_file, save_file
    cfg = json.loads((path / "config.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    if edit_cfg:
        edit_cfg(cfg)
    if edit_state:
        edit_state(state)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("version,rope", [
    ("v2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
            "mscale": 0.707, "mscale_all_dim": 0.707}),
    ("v3", {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 6,
            "mscale": 1.0, "mscale_all_dim": 0.6, "beta_fast": 8, "beta_slow": 2}),
    ("v3", {"rope_type": "yarn", "factor": 5.0, "original_max_position_embeddings": 8})])
def test_yarn_rope_matches_transformers(version, rope, tmp_path, tiny_deepseek):
    """YaRN frequencies, cos/sin attention factor and DeepSeek's mscale**2 softmax factor, over
    positions past original_max_position_embeddings."""
    import transformers
    name = "DeepseekV2" if version == "v2" else "DeepseekV3"
    hf = tiny_deepseek(getattr(transformers, name + "Config"), getattr(transformers, name + "ForCausalLM"), 7,
                       q_lora_rank=None, rope_parameters=dict(rope, rope_theta=1e4))
    with torch.no_grad():  # sharper attention, so that positions matter in the logits
        for n, p in hf.named_parameters():
            if "q_proj" in n or "kv_a_proj" in n:
                p.mul_(8.0)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.cfg.yarn is not None and ours.cfg.yarn.factor == rope["factor"]
    ids = _ids(ours.cfg.vocab_size, s=20, seed=8)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits.float()
        got = ours(ids)
        object.__setattr__(ours.cfg, "yarn", None)  # shared by all modules: the same weights, no YaRN
        plain = ours(ids)
    assert (got - ref).abs().max().item() < 1e-4
    assert (plain - ref).abs().max().item() > 5e-3


def test_other_rope_scalings_are_refused(deepseek_v2_ckpt, tmp_path):
    def linear(c):
        c["rope_parameters"] = {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(InputError, match=r"config\.json: rope_parameters\.rope_type: .*linear"):
        load_hf(_copy_ckpt(deepseek_v2_ckpt[0], tmp_path, edit_cfg=linear))


def test_quantised_checkpoint_is_refused(deepseek_v3_ckpt, tmp_path):
    def fp8(c):
        c["quantization_config"] = {"quant_method": "fp8"}
    with pytest.raises(InputError, match="quantization_config"):
        load_hf(_copy_ckpt(deepseek_v3_ckpt[0], tmp_path, edit_cfg=fp8))


def test_bad_groups_are_refused(deepseek_v3_ckpt, tmp_path):
    def groups(c):
        c["n_group"] = 3  # does not divide 8 experts
    with pytest.raises(InputError, match="n_group"):
        load_hf(_copy_ckpt(deepseek_v3_ckpt[0], tmp_path, edit_cfg=groups))


def test_missing_and_misshapen_deepseek_tensors(deepseek_v3_ckpt, tmp_path):
    path = deepseek_v3_ckpt[0]
    victim = "model.layers.1.mlp.gate.e_score_correction_bias"
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match=r"e_score_correction_bias.*missing"):
        load_hf(_copy_ckpt(path, tmp_path / "a", edit_state=lambda s: s.pop(victim)))
    victim2 = "model.layers.2.self_attn.q_a_layernorm.weight"

    def bad(s):
        s[victim2] = torch.ones(11)
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError) as e:
        load_hf(_copy_ckpt(path, tmp_path / "b", edit_state=bad))
    msg = str(e.value)
    assert "model.safetensors" in msg and victim2 in msg and "[10]" in msg and "[11]" in msg


def test_from_spec_builds_query_lora():
    from specmoe.specs import load_model
    spec = load_model("deepseek-v3")
    with torch.device("meta"):
        m = MoEModel(from_spec(spec, num_layers=2))
    att = m.layers[0].self_attn
    assert att.q_a_proj.weight.shape == (spec.attention.q_lora_rank, spec.hidden_size)
    assert not hasattr(att, "q_proj")


# DeepSeek-V2-Lite's config.json in its published (transformers 4, remote-code) form: legacy
# top-level rope_theta and rope_scaling, scoring_func, topk_method, moe_layer_freq.
V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "first_k_dense_replace": 1,
    "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 10944, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v2", "moe_intermediate_size": 1408,
    "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
    "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
    "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"},
    "routed_scaling_factor": 1.0, "scoring_func": "softmax", "tie_word_embeddings": False,
    "topk_group": 1, "topk_method": "greedy", "v_head_dim": 128, "vocab_size": 102400}


def test_v2_lite_config_agrees_with_the_preset():
    """The checkpoint path (from_hf_config) and the ModelSpec path (from_spec) build the same
    model shape for DeepSeek-V2-Lite; the checkpoint adds YaRN (factor 40, mscale 0.707)."""
    from specmoe.runtime.config import from_hf_config
    from specmoe.specs import load_model
    a = from_hf_config(V2_LITE, "config.json")
    b = from_spec(load_model("deepseek-v2-lite"))
    same = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
            "v_head_dim", "rope_dim", "kv_lora_rank", "qk_nope_head_dim", "q_lora_rank", "num_experts",
            "top_k", "expert_ffn", "dense_ffn", "dense_layers", "shared_ffn", "scoring", "norm_topk_prob")
    assert {k: getattr(a, k) for k in same} == {k: getattr(b, k) for k in same}
    assert a.n_group == 1 and a.routed_scaling_factor == 1.0
    assert a.yarn.factor == 40 and a.yarn.original_max == 4096
    assert abs(a.yarn.cos_scale - 1.0) < 1e-12  # mscale == mscale_all_dim: cos/sin unscaled
    assert abs(a.yarn.softmax_scale - (0.1 * 0.707 * math.log(40) + 1) ** 2) < 1e-12


@pytest.mark.parametrize("group_score,want", [("max", {0, 1}), ("top2sum", {2, 3})])
def test_group_limit_hand_case(group_score, want):
    """Scores [0.0, 0.9 | 0.5, 0.48], 2 groups, 1 allowed, top-2: group 0 has the best expert
    (0.9 > 0.5), group 1 the best pair (0.98 > 0.9)."""
    from specmoe.runtime.config import MoEConfig
    from specmoe.runtime.model import _group_limit
    cfg = MoEConfig(vocab_size=8, hidden_size=4, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=4,
                    num_experts=4, top_k=2, expert_ffn=4, n_group=2, topk_group=1, group_score=group_score)
    choice = _group_limit(torch.tensor([[0.0, 0.9, 0.5, 0.48]]), cfg)
    assert set(choice.topk(2, dim=-1).indices[0].tolist()) == want
    assert torch.isinf(choice).sum().item() == 2
