"""MoEConfig: what the torch model needs to build itself, from a ModelSpec or an HF config.json.

Three styles share one decoder (model.py):
  - Mixtral: softmax over all experts, top-k, renormalised; no shared expert.
  - Qwen2-MoE: softmax, top-k, renormalised only if `norm_topk_prob`; one shared expert whose
    output is scaled by sigmoid(shared_expert_gate(x)); `mlp_only_layers` are dense.
  - DeepSeek (V2/V3): softmax or sigmoid scores; V3 adds `e_score_correction_bias` to the scores
    for the choice only (weights stay unbiased) and scales by `routed_scaling_factor`; the first
    `first_k_dense_replace` layers are dense; shared experts are ungated. Group-limited routing
    (`n_group` groups of experts, a token may only use experts of its `topk_group` best groups):
    V2's "group_limited_greedy" ranks a group by its best score, V3's "noaux_tc" by the sum of its
    two best biased scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from specmoe.errors import InputError


@dataclass(frozen=True)
class YarnRope:
    """YaRN rotary scaling (Peng et al. 2023, arXiv:2309.00071) as DeepSeek-V2/V3 use it, with
    transformers' `_compute_yarn_parameters` conventions: frequencies blended between
    interpolated (/factor) and original over a ramp set by beta_fast/beta_slow; cos and sin
    scaled by `cos_scale`; DeepSeek also multiplies the softmax scale by `softmax_scale`."""
    factor: float
    original_max: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float = 0.0  # 0 = derived from factor and the mscales

    @staticmethod
    def _m(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    @property
    def cos_scale(self) -> float:
        if self.attention_factor:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:
            return self._m(self.factor, self.mscale) / self._m(self.factor, self.mscale_all_dim)
        return self._m(self.factor)

    @property
    def softmax_scale(self) -> float:
        return self._m(self.factor, self.mscale_all_dim) ** 2 if self.mscale_all_dim else 1.0


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    expert_ffn: int
    dense_ffn: int = 0
    dense_layers: tuple[int, ...] = ()  # layer indices with a dense FFN instead of MoE
    shared_ffn: int = 0  # total width of the shared expert(s); 0 = none
    shared_gate: bool = False  # Qwen2-MoE: sigmoid gate on the shared expert
    scoring: str = "softmax"  # softmax | sigmoid
    norm_topk_prob: bool = True
    score_bias: bool = False  # DeepSeek-V3 e_score_correction_bias
    routed_scaling_factor: float = 1.0
    n_group: int = 1  # > 1: group-limited routing over n_group equal groups of experts
    topk_group: int = 1  # groups a token may use
    group_score: str = "max"  # max (V2 group_limited_greedy) | top2sum (V3 noaux_tc)
    qkv_bias: bool = False
    v_head_dim: int = 0  # 0 = head_dim; absorbed MLA attends with 576-wide keys, 512-wide values
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_dim: int = 0  # 0 = head_dim (rotary on the whole head)
    yarn: YarnRope | None = None  # DeepSeek checkpoints only
    q_lora_rank: int = 0  # > 0: MLA queries through q_a_proj, q_a_layernorm, q_b_proj
    kv_lora_rank: int = 0  # > 0: DeepSeek MLA, run in its absorbed decode form (model.MLAttention)
    qk_nope_head_dim: int = 0
    tie_embeddings: bool = False
    name: str = "moe"
    moe_layers: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        if self.scoring not in ("softmax", "sigmoid"):
            raise InputError(self.name, "scoring", f"expected softmax or sigmoid, got {self.scoring!r}")
        if not 0 < self.top_k <= self.num_experts:
            raise InputError(self.name, "top_k", "must be in [1, num_experts]")
        if self.num_heads % self.num_kv_heads:
            raise InputError(self.name, "num_kv_heads", "must divide num_heads")
        if self.dense_layers and self.dense_ffn <= 0:
            raise InputError(self.name, "dense_ffn", "must be positive when there are dense layers")
        if self.n_group > 1:
            self._check_groups()
        moe = tuple(i for i in range(self.num_layers) if i not in set(self.dense_layers))
        object.__setattr__(self, "moe_layers", moe)

    def _check_groups(self):
        e, g = self.num_experts, self.n_group
        if e % g:
            raise InputError(self.name, "n_group", f"must divide the number of experts ({e}), got {g}")
        if not 0 < self.topk_group <= g:
            raise InputError(self.name, "topk_group", f"must be in [1, n_group={g}], got {self.topk_group}")
        if self.top_k > self.topk_group * (e // g):
            raise InputError(self.name, "num_experts_per_tok",
                             f"top_k {self.top_k} exceeds the experts in topk_group groups")
        if self.group_score not in ("max", "top2sum") or (self.group_score == "top2sum" and e // g < 2):
            raise InputError(self.name, "group_score", "expected max, or top2sum with >= 2 experts a group")

    @property
    def v_dim(self) -> int:
        return self.v_head_dim or self.head_dim


def from_spec(spec, num_layers: int | None = None) -> MoEConfig:
    """Build from a specs.ModelSpec. MLA keeps the spec's weights and runs absorbed
    (DeepSeek-V2 paper §2.1.3): the cache holds one latent head of kv_lora_rank +
    qk_rope_head_dim per token. `num_layers` truncates the model (dense layers kept first)."""
    a = spec.attention
    if a.kind == "gqa":
        att = dict(num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, head_dim=a.head_dim)
    else:
        att = dict(num_heads=a.num_heads, num_kv_heads=1, head_dim=a.kv_lora_rank + a.qk_rope_head_dim,
                   v_head_dim=a.v_head_dim, rope_dim=a.qk_rope_head_dim, kv_lora_rank=a.kv_lora_rank,
                   qk_nope_head_dim=a.qk_nope_head_dim, q_lora_rank=a.q_lora_rank or 0)
    n = num_layers or spec.num_layers
    dense = tuple(range(min(spec.num_dense_layers, n - 1 if n > 1 else 0)))
    return MoEConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, num_layers=n, **att,
        num_experts=spec.num_experts, top_k=spec.top_k, expert_ffn=spec.expert_intermediate_size,
        dense_ffn=spec.dense_intermediate_size, dense_layers=dense,
        shared_ffn=spec.shared_expert_intermediate_size, scoring=spec.scoring,
        norm_topk_prob=spec.norm_topk_prob, name=spec.name)


def _rope_theta(cfg: dict, default: float) -> float:
    # transformers 5 nests it in rope_parameters; 4.x has a top-level rope_theta
    rp = cfg.get("rope_parameters") or {}
    return float(rp.get("rope_theta", cfg.get("rope_theta", default)))


def rope_interleaved(cfg: dict) -> bool:
    """Whether a DeepSeek checkpoint's rotary columns come in interleaved pairs (x0, x1), (x2, x3):
    always for V2, for V3 unless `rope_interleave` is false (transformers' DeepSeek code)."""
    mt = cfg.get("model_type")
    return mt == "deepseek_v2" or (mt == "deepseek_v3" and cfg.get("rope_interleave", True) is not False)


def _reject(cfg: dict, source, key: str, ok, problem: str):
    if key in cfg and cfg[key] is not None and not ok(cfg[key]):
        raise InputError(source, key, f"{problem}, got {cfg[key]!r}")


def _deepseek_checks(cfg: dict, source, mt: str):
    """What the loader does not build is refused rather than computed differently."""
    if "quantization_config" in cfg:
        raise InputError(source, "quantization_config", "quantised (e.g. FP8) checkpoints are not read")
    _reject(cfg, source, "attention_bias", lambda v: not v, "attention biases are not built")
    _reject(cfg, source, "mlp_bias", lambda v: not v, "MLP biases are not built")
    _reject(cfg, source, "hidden_act", lambda v: v == "silu", "only silu is built")
    _reject(cfg, source, "moe_layer_freq", lambda v: v == 1, "only moe_layer_freq 1 is built")
    want = "softmax" if mt == "deepseek_v2" else "sigmoid"
    _reject(cfg, source, "scoring_func", lambda v: v == want, f"{mt} scores with {want}")
    methods = ("greedy", "group_limited_greedy") if mt == "deepseek_v2" else ("noaux_tc",)
    _reject(cfg, source, "topk_method", lambda v: v in methods, f"{mt} expects one of {list(methods)}")
    # DeepSeek's own V2 code renormalises (and drops the scaling); transformers' V2 does not: refuse
    _reject(cfg, source, "norm_topk_prob", lambda v: not v or mt != "deepseek_v2",
            "deepseek_v2 with norm_topk_prob is ambiguous (implementations differ)")


def _yarn(cfg: dict, source) -> YarnRope | None:
    """The rope scaling of a DeepSeek config: none, or YaRN (`rope_parameters` of transformers 5,
    or the older top-level `rope_scaling`); any other scaling is refused."""
    key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    rp = cfg.get(key) or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype == "default":
        return None
    if rtype != "yarn":
        raise InputError(source, f"{key}.rope_type", f"only default and yarn RoPE are built, got {rtype!r}")
    try:
        orig = int(rp.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
        factor = float(rp.get("factor") or cfg["max_position_embeddings"] / orig)
        return YarnRope(factor=factor, original_max=orig, beta_fast=float(rp.get("beta_fast") or 32),
                        beta_slow=float(rp.get("beta_slow") or 1), truncate=bool(rp.get("truncate", True)),
                        mscale=float(rp.get("mscale") or 0),
                        mscale_all_dim=float(rp.get("mscale_all_dim") or 0),
                        attention_factor=float(rp.get("attention_factor") or 0))
    except (TypeError, ValueError, KeyError) as e:
        raise InputError(source, key, f"bad yarn parameters ({e})") from None


def _deepseek(cfg: dict, source, common: dict) -> MoEConfig:
    """DeepSeek-V2/V3 config.json -> MoEConfig (MLA, dense first layers, shared experts, groups)."""
    mt = cfg["model_type"]
    _deepseek_checks(cfg, source, mt)
    rope, rank = cfg["qk_rope_head_dim"], cfg["kv_lora_rank"]
    common = dict(common, num_kv_heads=1, head_dim=rank + rope, rope_theta=_rope_theta(cfg, 1e4),
                  yarn=_yarn(cfg, source))
    n_dense = min(cfg.get("first_k_dense_replace") or 0, cfg["num_hidden_layers"])
    grouped = mt == "deepseek_v3" or cfg.get("topk_method") == "group_limited_greedy"
    v3 = mt == "deepseek_v3"
    return MoEConfig(
        **common, v_head_dim=cfg["v_head_dim"], rope_dim=rope, kv_lora_rank=rank,
        qk_nope_head_dim=cfg["qk_nope_head_dim"], q_lora_rank=cfg.get("q_lora_rank") or 0,
        num_experts=cfg["n_routed_experts"], top_k=cfg["num_experts_per_tok"],
        expert_ffn=cfg["moe_intermediate_size"], dense_ffn=cfg["intermediate_size"],
        dense_layers=tuple(range(n_dense)),
        shared_ffn=cfg["moe_intermediate_size"] * (cfg.get("n_shared_experts") or 0),
        scoring="sigmoid" if v3 else "softmax", score_bias=v3,
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        n_group=(cfg.get("n_group") or 1) if grouped else 1,
        topk_group=(cfg.get("topk_group") or 1) if grouped else 1,
        group_score="top2sum" if v3 else "max")


def from_hf_config(cfg: dict, source) -> MoEConfig:
    """Build from a Mixtral, Qwen2-MoE or DeepSeek-V2/V3 `config.json` dict."""
    mt = cfg.get("model_type")
    try:
        common = dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                      num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                      num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                      rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), name=mt)
        common["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        if mt == "mixtral":
            return MoEConfig(**common, num_experts=cfg["num_local_experts"],
                             top_k=cfg["num_experts_per_tok"], expert_ffn=cfg["intermediate_size"],
                             rope_theta=_rope_theta(cfg, 1e6))
        if mt == "qwen2_moe":
            n, step = cfg["num_hidden_layers"], cfg.get("decoder_sparse_step", 1)
            only = set(cfg.get("mlp_only_layers") or [])
            dense = tuple(i for i in range(n) if i in only or (i + 1) % step != 0)
            return MoEConfig(**common, num_experts=cfg["num_experts"],
                             top_k=cfg["num_experts_per_tok"], expert_ffn=cfg["moe_intermediate_size"],
                             dense_ffn=cfg["intermediate_size"], dense_layers=dense,
                             shared_ffn=cfg.get("shared_expert_intermediate_size", 0),
                             shared_gate=bool(cfg.get("shared_expert_intermediate_size", 0)),
                             norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                             qkv_bias=bool(cfg.get("qkv_bias", True)), rope_theta=_rope_theta(cfg, 1e4))
        if mt in ("deepseek_v2", "deepseek_v3"):
            return _deepseek(cfg, source, common)
    except KeyError as e:
        raise InputError(source, e.args[0], "required config key is missing") from None
    raise InputError(source, "model_type",
                     f"expected mixtral, qwen2_moe, deepseek_v2 or deepseek_v3, got {mt!r}")
