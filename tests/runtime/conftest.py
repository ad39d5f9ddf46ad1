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
