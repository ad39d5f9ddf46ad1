"""Tiny random HF checkpoints (transformers' own classes) saved with save_pretrained."""
import pytest
import torch

transformers = pytest.importorskip("transformers")


def _save(model, path):
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def mixtral_ckpt(tmp_path_factory):
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                        num_experts_per_tok=2, max_position_embeddings=64)
    m = MixtralForCausalLM(cfg).eval()
    return _save(m, tmp_path_factory.mktemp("mixtral")), m


@pytest.fixture(scope="session")
def qwen2moe_ckpt(tmp_path_factory):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    torch.manual_seed(1)
    cfg = Qwen2MoeConfig(vocab_size=101, hidden_size=32, intermediate_size=40, moe_intermediate_size=16,
                         shared_expert_intermediate_size=24, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, num_experts=6,
                         num_experts_per_tok=3, mlp_only_layers=[0], norm_topk_prob=False,
                         max_position_embeddings=64)
    m = Qwen2MoeForCausalLM(cfg).eval()
    # HF initialises RMSNorm weights to ones and biases to zero; perturb them so the test sees them
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return _save(m, tmp_path_factory.mktemp("qwen2moe")), m


def _deepseek(cls_cfg, cls_model, seed, **kw):
    """Tiny DeepSeek: MLA, one dense first layer, 2 shared experts, 8 routed experts in 4 groups
    of which a token may use 2 (group-limited routing), RMSNorm weights perturbed."""
    torch.manual_seed(seed)
    cfg = cls_cfg(vocab_size=89, hidden_size=32, intermediate_size=40, moe_intermediate_size=16,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=12,
                  qk_nope_head_dim=6, qk_rope_head_dim=8, v_head_dim=5, n_routed_experts=8,
                  num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, n_group=4,
                  topk_group=2, max_position_embeddings=64, **kw)
    m = cls_model(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            if n.endswith("mlp.gate.weight"):  # larger router logits: routing decisions matter
                p.mul_(20.0)
    return m


@pytest.fixture(scope="session")
def deepseek_v2_ckpt(tmp_path_factory):
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    m = _deepseek(DeepseekV2Config, DeepseekV2ForCausalLM, 2, q_lora_rank=None,
                  topk_method="group_limited_greedy", routed_scaling_factor=1.5)
    return _save(m, tmp_path_factory.mktemp("deepseek_v2")), m


@pytest.fixture(scope="session")
def deepseek_v3_ckpt(tmp_path_factory):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    m = _deepseek(DeepseekV3Config, DeepseekV3ForCausalLM, 3, q_lora_rank=10,
                  routed_scaling_factor=2.5, norm_topk_prob=True)
    with torch.no_grad():  # a bias large enough to change which experts are chosen
        for n, b in m.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.3)
    return _save(m, tmp_path_factory.mktemp("deepseek_v3")), m


@pytest.fixture(scope="session")
def tiny_deepseek():
    """The builder above, for tests that vary the config (e.g. rope scaling)."""
    return _deepseek
