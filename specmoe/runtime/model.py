"""An MoE decoder in plain torch: Mixtral, Qwen2-MoE and DeepSeek styles (config.py says how).

Shapes: T = tokens in the flattened batch, H = hidden, E = experts (or local slots), k = top_k,
F = expert FFN width. The MoE block is split in phases (gate, experts) so that ep.py can put
dispatch and combine between them and timing.py can time each one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specmoe.runtime.config import MoEConfig, YarnRope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(dim: int, theta: float, device, yarn: YarnRope | None = None):
    """Inverse frequencies [dim/2]. YaRN: per dimension pair, a ramp from the original (fast
    rotations, above beta_fast turns over original_max) to the interpolated frequency /factor
    (slow ones, below beta_slow turns); the ramp ends are the pair indices of those turn counts,
    d(n) = dim ln(L / (2 pi n)) / (2 ln theta) (YaRN §3.2, transformers' _compute_yarn_parameters)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    if yarn is None:
        return inv
    def pair(turns):
        return dim * math.log(yarn.original_max / (turns * 2 * math.pi)) / (2 * math.log(theta))
    low, high = pair(yarn.beta_fast), pair(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    return inv / yarn.factor * ramp + inv * (1 - ramp)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype, yarn: YarnRope | None = None):
    """cos, sin `[*positions.shape, dim]` (the half-split layout of Llama/Mixtral), times YaRN's
    cos_scale if any."""
    inv = rope_inv_freq(dim, theta, positions.device, yarn)
    freqs = positions.float()[..., None] * inv  # [..., dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    m = yarn.cos_scale if yarn is not None else 1.0
    return (emb.cos() * m).to(dtype), (emb.sin() * m).to(dtype)


def _apply_rope(x, cos, sin):
    """x [B, S, heads, d]; rotary on the last cos.shape[-1] columns (all of them for GQA)."""
    r = cos.shape[-1]
    xp, xr = x[..., :-r], x[..., -r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    rot = torch.cat([-x2, x1], dim=-1)
    xr = xr * cos[:, :, None] + rot * sin[:, :, None]
    return torch.cat([xp, xr], dim=-1) if xp.shape[-1] else xr


class KVCache:
    """Per-layer K/V buffers `[B, kv_heads, max_len, d]`; all sequences share one length.
    MLA caches only the latent (`k`, width kv_lora_rank + rope); its values are k[..., :rank]."""

    def __init__(self, cfg: MoEConfig, batch: int, max_len: int, device, dtype):
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len)
        self.k = torch.zeros(*shape, cfg.head_dim, device=device, dtype=dtype)
        self.v = torch.zeros(*shape, 0 if cfg.kv_lora_rank else cfg.v_dim, device=device, dtype=dtype)
        self.length = 0

    def fill_random(self, length: int, seed: int = 0):
        """Pretend `length` tokens were already decoded (for timing decode at a context).
        A fresh seeded generator, not the default one: deterministic, and independent of the
        default CUDA generator's graph-capture state."""
        g = torch.Generator(device=self.k.device).manual_seed(seed)
        self.k[:, :, :, :length].normal_(generator=g)
        self.v[:, :, :, :length].normal_(generator=g)
        self.length = length


class Attention(nn.Module):
    def __init__(self, cfg: MoEConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, nh, nkv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
        self.q_proj = nn.Linear(h, nh * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, nkv * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, nkv * cfg.v_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(nh * cfg.v_dim, h, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        """x [B, S, H] -> [B, S, H]; causal within the S new tokens, full over the cache."""
        cfg = self.cfg
        b, s, _ = x.shape
        q = _apply_rope(self.q_proj(x).view(b, s, cfg.num_heads, cfg.head_dim), cos, sin)
        k = _apply_rope(self.k_proj(x).view(b, s, cfg.num_kv_heads, cfg.head_dim), cos, sin)
        v = self.v_proj(x).view(b, s, cfg.num_kv_heads, cfg.v_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, d]
        past = 0
        if cache is not None:
            past = cache.length
            cache.k[self.layer, :b, :, past:past + s] = k
            cache.v[self.layer, :b, :, past:past + s] = v
            k, v = cache.k[self.layer, :b, :, :past + s], cache.v[self.layer, :b, :, :past + s]
        mask = None
        if s > 1:  # new token i sees the cache and new tokens 0..i
            mask = torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril(past)
        rep, scale = cfg.num_heads // cfg.num_kv_heads, 1.0 / math.sqrt(cfg.head_dim)
        if s == 1:  # decode: a KV head's `rep` query heads become its query rows (no KV copy)
            q = q.reshape(b, cfg.num_kv_heads, rep, cfg.head_dim)
            o = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, kv, rep, vd]
            return self.o_proj(o.reshape(b, 1, cfg.num_heads * cfg.v_dim))
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, cfg.num_heads * cfg.v_dim))


class MLAttention(nn.Module):
    """DeepSeek multi-head latent attention, absorbed decode form (DeepSeek-V2 §2.1.3).

    Weights as in the checkpoint (q_proj, or q_a_proj, q_a_layernorm and q_b_proj with a query
    LoRA; kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj); rotary columns in the
    half-split layout (checkpoint.py de-interleaves DeepSeek's pairs on loading). W_UK is
    absorbed into the query and W_UV applied after attention, so attention is MQA over the cached latent [c_kv (rank), k_rope]: scores q_lat . c_kv + q_rope . k_rope,
    softmax scale 1/sqrt(nope + rope) as in the original (times YaRN's mscale**2 if any).
    """

    def __init__(self, cfg: MoEConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, nh, r = cfg.hidden_size, cfg.num_heads, cfg.kv_lora_rank
        self.nope, self.rope = cfg.qk_nope_head_dim, cfg.rope_dim
        if cfg.q_lora_rank:  # query LoRA (V2, V3): q_b_proj(norm(q_a_proj(x)))
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, nh * (self.nope + self.rope), bias=False)
        else:
            self.q_proj = nn.Linear(h, nh * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, r + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(r, cfg.rms_eps)
        self.kv_b_proj = nn.Linear(r, nh * (self.nope + cfg.v_dim), bias=False)
        self.o_proj = nn.Linear(nh * cfg.v_dim, h, bias=False)

    def forward(self, x, cos, sin, cache: KVCache):
        cfg = self.cfg
        b, s, _ = x.shape
        nh, r, vd = cfg.num_heads, cfg.kv_lora_rank, cfg.v_dim
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if cfg.q_lora_rank else self.q_proj(x)
        q = q.view(b, s, nh, self.nope + self.rope)
        q_nope, q_rope = q[..., :self.nope], _apply_rope(q[..., self.nope:], cos, sin)
        kv = self.kv_a_proj_with_mqa(x)  # [B, S, r + rope]
        c = self.kv_a_layernorm(kv[..., :r])
        k_rope = _apply_rope(kv[..., None, r:], cos, sin)[:, :, 0]
        w = self.kv_b_proj.weight.view(nh, self.nope + vd, r)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]  # [nh, nope, r], [nh, vd, r]
        q_lat = torch.einsum("bshn,hnr->bshr", q_nope, w_uk)
        qf = torch.cat([q_lat, q_rope], -1).transpose(1, 2)  # [B, nh, S, r + rope]
        past = cache.length
        cache.k[self.layer, :b, 0, past:past + s] = torch.cat([c, k_rope], -1)
        k = cache.k[self.layer, :b, :, :past + s]  # [B, 1, ctx, r + rope]
        scale = 1.0 / math.sqrt(self.nope + self.rope) * (cfg.yarn.softmax_scale if cfg.yarn else 1.0)
        if s == 1:
            o = F.scaled_dot_product_attention(qf.reshape(b, 1, nh, r + self.rope), k, k[..., :r], scale=scale)
        else:
            mask = torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril(past)
            o = F.scaled_dot_product_attention(qf, k.expand(b, nh, -1, -1),
                                               k[..., :r].expand(b, nh, -1, -1),
                                               attn_mask=mask, scale=scale)
        o = o.reshape(b, nh, s, r).transpose(1, 2)  # [B, S, nh, r]
        o = torch.einsum("bshr,hvr->bshv", o, w_uv)
        return self.o_proj(o.reshape(b, s, nh * vd))


class MLP(nn.Module):
    """SwiGLU FFN: down(silu(gate(x)) * up(x)); dense layers and shared experts."""

    def __init__(self, h: int, f: int):
        super().__init__()
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Top-k gate. Returns topk_ids int64 [T, k] and topk_weights float32 [T, k]."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        if cfg.score_bias:
            self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.num_experts), requires_grad=False)

    def forward(self, x):
        cfg = self.cfg
        logits = F.linear(x, self.weight).float()  # [T, E]
        if cfg.scoring == "softmax":
            scores = logits.softmax(dim=-1)
        else:
            scores = logits.sigmoid()
        choice = scores + self.e_score_correction_bias if cfg.score_bias else scores
        if cfg.n_group > 1:
            choice = _group_limit(choice, cfg)
        ids = choice.topk(cfg.top_k, dim=-1).indices
        w = scores.gather(-1, ids)
        if cfg.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        return ids, w * cfg.routed_scaling_factor


def _group_limit(choice, cfg: MoEConfig):
    """choice [T, E] -> same with experts outside each token's topk_group best groups at -inf.

    A group's score is its best expert's (V2 group_limited_greedy) or the sum of its two best
    (V3 noaux_tc, on the biased scores); DeepSeek-V2 paper §3.3 (device-limited routing) and
    DeepSeek-V3 §2.1.2. -inf rather than V2's 0 changes nothing: softmax scores are > 0.
    """
    t = choice.shape[0]
    g = choice.view(t, cfg.n_group, -1)  # [T, G, E/G]
    gs = g.max(-1).values if cfg.group_score == "max" else g.topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(cfg.topk_group, dim=-1).indices, True)
    return g.masked_fill(~keep[..., None], float("-inf")).view(t, -1)


class Experts(nn.Module):
    """`num_slots` SwiGLU experts, weights `[slots, F, H]` (gate, up) and `[slots, H, F]` (down).

    Under EP a rank holds only its physical slots; single-process, slot == logical expert.
    """

    def __init__(self, num_slots: int, h: int, f: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(num_slots, f, h))
        self.w_up = nn.Parameter(torch.empty(num_slots, f, h))
        self.w_down = nn.Parameter(torch.empty(num_slots, h, f))
        self.backend = "torch"

    @torch.no_grad()
    def set_backend(self, backend: str) -> Experts:
        """"torch" (sort + grouped GEMMs below) or "triton" (specmoe.kernels.moe.fused_moe).
        triton needs gate and up as one tensor w13 [slots, 2F, H]: it is built once and w_gate,
        w_up become views of it (no second copy of the weights). Set it after the weights
        are final (after loading or init_random, and after .to(device/dtype))."""
        if backend not in ("torch", "triton"):
            raise ValueError(f"experts backend must be torch or triton, got {backend!r}")
        if backend == "triton" and getattr(self, "w13", None) is None:
            f = self.w_gate.shape[1]
            w13 = torch.cat([self.w_gate, self.w_up], 1)
            self.w_gate = nn.Parameter(w13[:, :f], requires_grad=False)
            self.w_up = nn.Parameter(w13[:, f:], requires_grad=False)
            self.register_buffer("w13", w13, persistent=False)
        self.backend = backend
        return self

    def forward(self, x, slot_ids, weights):
        """x [N, H], slot_ids int [N, k] (-1 = none), weights [N, k] -> sum_j w_j expert_j(x) [N, H].

        No host synchronisation on the grouped-GEMM path: pairs are sorted by slot with the
        empty ones (-1) last, and the GEMMs stop at the last real pair (offs[-1]).
        """
        if self.backend == "triton":
            if x.shape[0] == 0:
                return x.new_zeros(x.shape)
            from specmoe.kernels.moe import fused_moe
            return fused_moe(x.contiguous(), self.w13, self.w_down, slot_ids, weights.float())
        n, k = slot_ids.shape
        e = self.w_gate.shape[0]
        key = torch.where(slot_ids >= 0, slot_ids, e).reshape(-1).long()  # [N*k], e = none
        order = torch.argsort(key, stable=True)
        key = key[order]
        rows = order // k
        counts = torch.zeros(e + 1, dtype=torch.long, device=x.device)
        counts = counts.scatter_add_(0, key, torch.ones_like(key))[:e]  # [E]; no host sync
        y = self._grouped_swiglu(x[rows], counts)  # [N*k, H] sorted by slot
        w = torch.where(key < e, weights.reshape(-1)[order].float(), 0.0)
        y = torch.where((key < e)[:, None], y.float(), 0.0) * w[:, None]  # garbage rows -> 0
        out = torch.zeros(n, x.shape[1], dtype=torch.float32, device=x.device)
        out.index_add_(0, rows, y)
        return out.to(x.dtype)

    def _grouped_swiglu(self, xs, counts):
        """xs [P, H] sorted by slot, counts [E] -> [P, H]; rows past sum(counts) are garbage."""
        if xs.shape[0] == 0:
            return xs
        if xs.is_cuda and xs.dtype == torch.bfloat16 and grouped_mm_ok():
            offs = counts.cumsum(0).to(torch.int32)
            g = torch._grouped_mm(xs, self.w_gate.transpose(-2, -1), offs=offs)
            u = torch._grouped_mm(xs, self.w_up.transpose(-2, -1), offs=offs)
            return torch._grouped_mm(F.silu(g) * u, self.w_down.transpose(-2, -1), offs=offs)
        out = torch.zeros_like(xs)
        start = 0
        for j, c in enumerate(counts.tolist()):
            if c:
                seg = xs[start:start + c]
                h = F.silu(seg @ self.w_gate[j].T) * (seg @ self.w_up[j].T)
                out[start:start + c] = h @ self.w_down[j].T
                start += c
        return out


def set_experts_backend(model: nn.Module, backend: str) -> nn.Module:
    """Experts.set_backend on every Experts module of `model`."""
    for m in model.modules():
        if isinstance(m, Experts):
            m.set_backend(backend)
    return model


def triton_experts_check(device) -> str | None:
    """None if the Triton experts run on `device` and agree with the torch path on a small
    random bf16 case (relative max difference < 2e-2), else why not. A probe: any error
    (compilation, launch) means "use torch" and is reported, never raised."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        ex = Experts(4, 64, 32).to(device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            for p in ex.parameters():
                p.normal_(0, 0.1, generator=g)
            x = torch.randn(9, 64, device=device, dtype=torch.bfloat16, generator=g)
            ids = torch.randint(0, 4, (9, 2), device=device, generator=g)
            w = torch.rand(9, 2, device=device, generator=g)
            ref = ex(x, ids, w).float()
            got = ex.set_backend("triton")(x, ids, w).float()
        err = float((got - ref).abs().max() / ref.abs().max())
        return None if err < 2e-2 else f"Triton experts differ from torch (relative max error {err:.3g})"
    except Exception as e:  # noqa: BLE001 (a capability probe: every failure means torch)
        return f"Triton experts failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


_GROUPED_OK: bool | None = None


def grouped_mm_ok() -> bool:
    """Whether torch._grouped_mm exists and agrees with per-expert matmuls on this GPU."""
    global _GROUPED_OK
    if _GROUPED_OK is None:
        try:
            g = torch.Generator(device="cuda").manual_seed(0)
            a = torch.randn(48, 64, device="cuda", dtype=torch.bfloat16, generator=g)
            w = torch.randn(3, 32, 64, device="cuda", dtype=torch.bfloat16, generator=g)
            offs = torch.tensor([16, 16, 48], device="cuda", dtype=torch.int32)
            y = torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)
            ref = torch.cat([a[:16] @ w[0].T, a[16:] @ w[2].T])
            _GROUPED_OK = bool(((y.float() - ref.float()).norm() / ref.float().norm()) < 1e-2)
        except (AttributeError, RuntimeError, TypeError):
            _GROUPED_OK = False
    return _GROUPED_OK


class MoEBlock(nn.Module):
    def __init__(self, cfg: MoEConfig, num_slots: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = Experts(num_slots or cfg.num_experts, cfg.hidden_size, cfg.expert_ffn)
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_ffn) if cfg.shared_ffn else None
        self.shared_expert_gate = (nn.Linear(cfg.hidden_size, 1, bias=False)
                                   if cfg.shared_ffn and cfg.shared_gate else None)

    def shared(self, x):
        """The shared expert's contribution for x [T, H] (zeros if none)."""
        if self.shared_expert is None:
            return None
        y = self.shared_expert(x)
        if self.shared_expert_gate is not None:
            y = torch.sigmoid(self.shared_expert_gate(x)) * y
        return y

    def forward(self, x, topk=None):
        """x [T, H] -> [T, H]; single-process (slot == logical expert)."""
        ids, w = topk if topk is not None else self.gate(x)
        y = self.experts(x, ids, w)
        s = self.shared(x)
        return y if s is None else y + s


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoEConfig, layer: int, num_slots: int | None = None):
        super().__init__()
        self.is_moe = layer in cfg.moe_layers
        self.self_attn = MLAttention(cfg, layer) if cfg.kv_lora_rank else Attention(cfg, layer)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MoEBlock(cfg, num_slots) if self.is_moe else MLP(cfg.hidden_size, cfg.dense_ffn)


class MoEModel(nn.Module):
    """Embedding, decoder layers, final norm and LM head. `num_slots` sizes each MoE layer's
    Experts (EP ranks hold fewer than num_experts)."""

    def __init__(self, cfg: MoEConfig, num_slots: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, num_slots) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def moe_index(self, layer: int) -> int:
        """Index of decoder layer `layer` among the MoE layers (routing traces count these)."""
        return self.cfg.moe_layers.index(layer)

    def forward(self, input_ids, positions=None, cache: KVCache | None = None, moe_fn=None,
                timer=None):
        """input_ids [B, S] -> logits float32 [B, S, vocab].

        `moe_fn(layer, block, x [T, H]) -> [T, H]` replaces the MoE block call (EP, replay,
        timing hook in there); default: the block itself. `timer` (timing.PhaseTimer) gets
        the attention, ffn and head phase boundaries; moe_fn marks the MoE phases.
        """
        b, s = input_ids.shape
        if cache is None and self.cfg.kv_lora_rank:  # MLA always attends through the latent cache
            cache = KVCache(self.cfg, b, s, input_ids.device, self.embed_tokens.weight.dtype)
        if positions is None:
            past = cache.length if cache is not None else 0
            positions = torch.arange(past, past + s, device=input_ids.device).expand(b, s)
        x = self.embed_tokens(input_ids)
        rope = self.cfg.rope_dim or self.cfg.head_dim
        cos, sin = rope_cos_sin(positions, rope, self.cfg.rope_theta, x.dtype, self.cfg.yarn)
        for i, layer in enumerate(self.layers):
            if timer:
                timer.phase(i, "attention")
            x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, cache)
            h = layer.post_attention_layernorm(x).reshape(b * s, self.cfg.hidden_size)
            if layer.is_moe:
                h = moe_fn(i, layer.mlp, h) if moe_fn else layer.mlp(h)
            else:
                if timer:
                    timer.phase(i, "ffn")
                h = layer.mlp(h)
            x = x + h.view(b, s, self.cfg.hidden_size)
        if cache is not None:
            cache.length += s
        if timer:
            timer.phase(-1, "head")
        return self.lm_head(self.norm(x)).float()


def init_random(model: MoEModel, seed: int = 0, std: float = 0.02) -> MoEModel:
    """Normal(0, std) weights, ones for norms, from a seeded generator (deterministic)."""
    gens = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.fill_(1.0)
            elif "e_score_correction_bias" in name:
                p.zero_()
            else:
                if p.device not in gens:
                    gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
                p.normal_(0.0, std, generator=gens[p.device])
    return model
