"""Absorbed MLA (model.MLAttention) against the textbook, non-absorbed MLA computed here."""
import math

import torch

from specmoe.runtime.config import MoEConfig
from specmoe.runtime.model import KVCache, MLAttention, _apply_rope, init_random, rope_cos_sin

CFG = MoEConfig(vocab_size=8, hidden_size=24, num_layers=1, num_heads=3, num_kv_heads=1,
                head_dim=10 + 4, v_head_dim=6, rope_dim=4, kv_lora_rank=10, qk_nope_head_dim=5,
                num_experts=2, top_k=1, expert_ffn=4)


def _naive(m: MLAttention, x, cos, sin):
    """Up-project the latent to per-head keys and values, then plain causal attention."""
    b, s, _ = x.shape
    nh, r, nope, rope, vd = 3, 10, 5, 4, 6
    q = m.q_proj(x).view(b, s, nh, nope + rope)
    q = torch.cat([q[..., :nope], _apply_rope(q[..., nope:], cos, sin)], -1)
    kv = m.kv_a_proj_with_mqa(x)
    c = m.kv_a_layernorm(kv[..., :r])
    k_rope = _apply_rope(kv[..., None, r:], cos, sin).expand(b, s, nh, rope)
    up = m.kv_b_proj(c).view(b, s, nh, nope + vd)
    k = torch.cat([up[..., :nope], k_rope], -1)
    v = up[..., nope:]
    att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(nope + rope)
    att = att.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    o = torch.einsum("bhqk,bkhv->bqhv", att, v)
    return m.o_proj(o.reshape(b, s, nh * vd))


def test_absorbed_mla_equals_naive_prefill_and_decode():
    torch.manual_seed(0)
    m = init_random(MLAttention(CFG, 0), seed=2, std=0.3)
    with torch.no_grad():
        m.kv_a_layernorm.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 5, 24)
        pos = torch.arange(5).expand(2, 5)
        cos, sin = rope_cos_sin(pos, 4, 1e4, x.dtype)
        ref = _naive(m, x, cos, sin)
        cache = KVCache(CFG, 2, 5, "cpu", torch.float32)
        pre = m(x[:, :3], cos[:, :3], sin[:, :3], cache)
        cache.length = 3
        outs = [pre]
        for i in (3, 4):
            outs.append(m(x[:, i:i + 1], cos[:, i:i + 1], sin[:, i:i + 1], cache))
            cache.length += 1
    got = torch.cat(outs, 1)
    assert (got - ref).abs().max().item() < 1e-5
    assert ref.abs().max() > 1e-2
