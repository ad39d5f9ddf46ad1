"""ModelSpec: the architecture facts of an MoE transformer that cost models need."""
from __future__ import annotations

from dataclasses import dataclass, field

from specmoe.specs._fields import check


@dataclass(frozen=True)
class AttentionSpec:
    """Grouped-query attention (`gqa`) or DeepSeek multi-head latent attention (`mla`)."""

    kind: str  # gqa | mla
    num_heads: int
    num_kv_heads: int = 0  # gqa
    head_dim: int = 0  # gqa
    q_lora_rank: int = 0  # mla; 0 means queries are projected directly
    kv_lora_rank: int = 0  # mla
    qk_nope_head_dim: int = 0  # mla
    qk_rope_head_dim: int = 0  # mla
    v_head_dim: int = 0  # mla

    def __post_init__(self):
        check(self.kind in ("gqa", "mla"), "kind", f"expected gqa or mla, got {self.kind!r}")
        check(self.num_heads > 0, "num_heads", "must be positive")
        if self.kind == "gqa":
            check(self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0,
                  "num_kv_heads", "must be positive and divide num_heads")
            check(self.head_dim > 0, "head_dim", "must be positive")
        else:
            check(self.kv_lora_rank > 0, "kv_lora_rank", "must be positive for mla")
            check(self.qk_nope_head_dim > 0 and self.v_head_dim > 0,
                  "qk_nope_head_dim", "qk_nope_head_dim and v_head_dim must be positive for mla")

    def kv_elems_per_token(self) -> int:
        """Elements cached per token per layer (K and V for gqa; latent plus rope key for mla)."""
        if self.kind == "gqa":
            return 2 * self.num_kv_heads * self.head_dim
        return self.kv_lora_rank + self.qk_rope_head_dim

    def weight_elems(self, hidden: int) -> int:
        """Parameters of one attention layer (projections only)."""
        if self.kind == "gqa":
            q = hidden * self.num_heads * self.head_dim
            kv = 2 * hidden * self.num_kv_heads * self.head_dim
            return q + kv + self.num_heads * self.head_dim * hidden
        qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = hidden * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_dim
        else:
            q = hidden * self.num_heads * qk_dim
        kv_down = hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv_down + kv_up + self.num_heads * self.v_head_dim * hidden

    def flops_per_token(self, hidden: int, context: int) -> float:
        """Forward FLOPs for one query token attending over `context` cached tokens."""
        proj = 2.0 * self.weight_elems(hidden)
        if self.kind == "gqa":
            qk_dim, v_dim = self.head_dim, self.head_dim
        else:  # absorbed MLA attends in the latent space
            qk_dim, v_dim = self.kv_lora_rank + self.qk_rope_head_dim, self.kv_lora_rank
        return proj + 2.0 * self.num_heads * context * (qk_dim + v_dim)


@dataclass(frozen=True)
class ModelSpec:
    """An MoE decoder. Layers [0, num_dense_layers) are dense FFN layers; the rest are MoE.

    Heterogeneous experts (Duo-LLM's small and big modules) are given by
    `expert_intermediate_sizes`, one FFN width per routed expert; `allow_layer_skip` lets a
    token skip a layer's FFN entirely.
    """

    name: str
    source: str
    num_layers: int
    hidden_size: int
    num_experts: int
    top_k: int
    expert_intermediate_size: int
    attention: AttentionSpec
    vocab_size: int
    num_dense_layers: int = 0
    dense_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0  # total width of the shared experts
    scoring: str = "softmax"  # softmax | sigmoid
    norm_topk_prob: bool = True
    dtype_bytes: int = 2
    expert_intermediate_sizes: tuple[int, ...] = ()
    allow_layer_skip: bool = False
    num_moe_layers: int = field(init=False)

    def __post_init__(self):
        check(self.num_layers > 0, "num_layers", "must be positive")
        check(0 <= self.num_dense_layers < self.num_layers, "num_dense_layers",
              "must be in [0, num_layers)")
        check(self.num_dense_layers == 0 or self.dense_intermediate_size > 0,
              "dense_intermediate_size", "must be positive when there are dense layers")
        check(self.hidden_size > 0, "hidden_size", "must be positive")
        check(self.num_experts > 0, "num_experts", "must be positive")
        check(0 < self.top_k <= self.num_experts, "top_k", "must be in [1, num_experts]")
        check(self.expert_intermediate_size > 0, "expert_intermediate_size", "must be positive")
        check(self.num_shared_experts >= 0, "num_shared_experts", "must be >= 0")
        check(self.scoring in ("softmax", "sigmoid"), "scoring", "expected softmax or sigmoid")
        check(self.dtype_bytes in (1, 2, 4), "dtype_bytes", "expected 1, 2 or 4")
        check(self.vocab_size > 0, "vocab_size", "must be positive")
        sizes = self.expert_intermediate_sizes
        check(not sizes or (len(sizes) == self.num_experts and min(sizes) > 0),
              "expert_intermediate_sizes", f"expected {self.num_experts} positive widths")
        if self.num_shared_experts and not self.shared_expert_intermediate_size:
            object.__setattr__(self, "shared_expert_intermediate_size",
                               self.num_shared_experts * self.expert_intermediate_size)
        object.__setattr__(self, "num_moe_layers", self.num_layers - self.num_dense_layers)

    @property
    def expert_sizes(self) -> tuple[int, ...]:
        """FFN width of each routed expert, `[num_experts]`."""
        return self.expert_intermediate_sizes or (self.expert_intermediate_size,) * self.num_experts

    def expert_weight_bytes(self, expert: int | None = None) -> int:
        """Bytes of one routed expert (gate, up and down projections)."""
        width = self.expert_intermediate_size if expert is None else self.expert_sizes[expert]
        return 3 * self.hidden_size * width * self.dtype_bytes

    def expert_flops_per_token(self, expert: int | None = None) -> float:
        width = self.expert_intermediate_size if expert is None else self.expert_sizes[expert]
        return 2.0 * 3 * self.hidden_size * width

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token, all layers."""
        return self.num_layers * self.attention.kv_elems_per_token() * self.dtype_bytes

    def total_params(self) -> int:
        h = self.hidden_size
        attn = self.num_layers * self.attention.weight_elems(h)
        dense = self.num_dense_layers * 3 * h * self.dense_intermediate_size
        routed = self.num_moe_layers * sum(3 * h * w for w in self.expert_sizes)
        shared = self.num_moe_layers * 3 * h * self.shared_expert_intermediate_size
        gate = self.num_moe_layers * h * self.num_experts
        return attn + dense + routed + shared + gate + 2 * self.vocab_size * h

    def active_params(self) -> int:
        h = self.hidden_size
        attn = self.num_layers * self.attention.weight_elems(h)
        dense = self.num_dense_layers * 3 * h * self.dense_intermediate_size
        routed = self.num_moe_layers * self.top_k * 3 * h * self.expert_intermediate_size
        shared = self.num_moe_layers * 3 * h * self.shared_expert_intermediate_size
        return attn + dense + routed + shared + 2 * self.vocab_size * h
