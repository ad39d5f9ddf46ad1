"""What a draft tree costs per decode step on an MoE model under expert parallelism.

step time = verify_time(n) + draft_time(depth)   (Sequoia's hardware-aware objective divides
E[accepted] by this; arXiv:2402.12374 § 3.3).

verify_time(n): the simulator prices one forward step in which each of `batch` sequences
verifies its root plus n draft tokens. Expert activation grows with n, and not linearly:
consecutive tokens of a sequence share experts. So the routing of the n + 1 verify tokens of a
sequence is a window of n + 1 consecutive tokens of one sequence of the routing trace, and the
batch is `batch` such windows (their sources spread round-robin over the EP ranks, one rank per
sequence as with data-parallel attention). `moe_aware=False` gives the ablation a dense-model
planner would implicitly assume: every verify token of a sequence reuses the root's experts, so
the set of activated experts does not grow with n.

draft_time(depth): one draft-model forward pass per tree level (a roofline on one GPU, each DP
rank drafting for its own sequences), or zero for Token Recycling, whose draft is a lookup in
an adjacency matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specmoe.errors import InputError
from specmoe.simulator.step import simulate_step
from specmoe.specs import ClusterSpec, ModelSpec, load_gpu
from specmoe.traces.routing import RoutingTrace


@dataclass(frozen=True)
class DraftCost:
    """kind: "model" (a dense draft model of `params` parameters) or "free" (Token Recycling)."""

    kind: str = "model"
    params: float = 0.5e9
    overhead_us: float = 20.0  # launch + sync per draft forward (estimate)

    @classmethod
    def eagle_head(cls, model: ModelSpec) -> "DraftCost":
        """The default draft: an EAGLE-style head, one dense decoder layer of the target's width
        (attention + an FFN as wide as top_k experts) plus the LM head."""
        h = model.hidden_size
        params = (model.attention.weight_elems(h) + 3 * h * model.top_k * model.expert_intermediate_size
                  + model.vocab_size * h)
        return cls("model", float(params))

    def level_us(self, cluster: ClusterSpec, tokens: int, dtype_bytes: int = 2) -> float:
        """One draft forward over `tokens` tokens on one GPU: max(FLOPs / peak, weights / HBM)."""
        if self.kind == "free" or tokens <= 0:
            return 0.0
        gpu = load_gpu(cluster.gpu)
        compute = 2.0 * self.params * tokens / gpu.bf16_flops
        memory = self.params * dtype_bytes / gpu.hbm_bandwidth
        return 1e6 * max(compute, memory) + self.overhead_us

    def tree_us(self, cluster: ClusterSpec, widths: list[int], seqs_per_gpu: int) -> float:
        """Draft time of a tree whose levels hold `widths` tokens: level d is drafted from the
        widths[d-1] frontier (the root for level 1)."""
        if self.kind == "free" or not widths:
            return 0.0
        frontier = [1] + list(widths[:-1])
        return sum(self.level_us(cluster, seqs_per_gpu * f) for f in frontier)


def sequence_windows(routing: RoutingTrace, tokens_per_seq: int, count: int,
                     rng: np.random.Generator) -> np.ndarray:
    """int [count, tokens_per_seq]: token indices of `count` windows of consecutive tokens of one
    sequence. If no sequence is long enough, windows start at a sequence start and run on into the
    following sequences (stated in the step notes)."""
    seq = routing.seq_id
    starts = np.r_[0, np.nonzero(seq[1:] != seq[:-1])[0] + 1]
    ends = np.r_[starts[1:], len(seq)]
    T = tokens_per_seq
    ok = [(s, e) for s, e in zip(starts, ends) if e - s >= T]
    if ok:
        which = rng.integers(len(ok), size=count)
        first = np.array([rng.integers(ok[w][0], ok[w][1] - T + 1) for w in which])
    else:
        first = starts[rng.integers(len(starts), size=count)]
    idx = first[:, None] + np.arange(T)[None, :]
    return idx % len(seq)


def layer_aligned(routing: RoutingTrace, model: ModelSpec, source="--routing") -> np.ndarray:
    """topk_ids [num_tokens, model.num_moe_layers, top_k] from the trace (layers repeat
    cyclically if the trace has fewer). The expert counts must match."""
    if routing.num_experts != model.num_experts:
        raise InputError(source, "meta.num_experts",
                         f"trace has {routing.num_experts} experts, model {model.name} has {model.num_experts}")
    ids = routing.topk_ids
    if ids.shape[1] != model.num_moe_layers:
        ids = ids[:, np.arange(model.num_moe_layers) % ids.shape[1]]
    return ids


@dataclass
class VerifyCost:
    """verify_time(n) for `batch` sequences, each verifying 1 + n tokens, priced by the simulator."""

    model: ModelSpec
    cluster: ClusterSpec
    routing: RoutingTrace
    batch: int = 1
    ep: int | None = None
    context_len: int = 1024
    network: str = "analytic"
    moe_aware: bool = True
    samples: int = 2
    seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.ep = self.ep or self.cluster.num_gpus
        self._ids = layer_aligned(self.routing, self.model)

    def topk_ids(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """topk_ids [batch * (n + 1), num_moe_layers, top_k] and token2gpu [batch * (n + 1)]."""
        T = n + 1
        idx = sequence_windows(self.routing, T, self.batch, rng)  # [batch, T]
        if not self.moe_aware:
            idx = np.repeat(idx[:, :1], T, axis=1)
        ids = self._ids[idx.reshape(-1)]
        token2gpu = np.repeat(np.arange(self.batch) % self.ep, T)
        return ids, token2gpu

    def step_us(self, n: int) -> float:
        if n not in self._cache:
            rng = np.random.default_rng([self.seed, n])
            times, copies = [], []
            for _ in range(self.samples):
                ids, t2g = self.topk_ids(n, rng)
                res = simulate_step(self.model, self.cluster, ep=self.ep, topk_ids=ids,
                                    token2gpu=t2g, phase="decode", context_len=self.context_len,
                                    network=self.network, seed=self.seed)
                times.append(res.step_time_us)
                copies.append(res.remote_copies_per_token_layer)
            self._cache[n] = (float(np.mean(times)), float(np.mean(copies)))
        return self._cache[n][0]

    def remote_copies(self, n: int) -> float:
        self.step_us(n)
        return self._cache[n][1]


def distinct_experts(routing: RoutingTrace, model: ModelSpec, ns, samples: int = 64, seed: int = 0) -> dict:
    """Mean distinct experts per MoE layer activated by n consecutive tokens of one sequence."""
    ids = layer_aligned(routing, model)
    rng = np.random.default_rng(seed)
    out = {}
    for n in ns:
        idx = sequence_windows(routing, n, samples, rng)  # [samples, n]
        w = ids[idx]  # [samples, n, L, K]
        L = w.shape[2]
        w = np.moveaxis(w, 2, 1).reshape(samples, L, -1)  # [samples, L, n*K]
        counts = [len(np.unique(row[row >= 0])) for s in w for row in s]
        out[int(n)] = float(np.mean(counts))
    return out


def synthetic_routing(model: ModelSpec, num_seqs: int = 32, seq_len: int = 160, share: float = 0.3,
                      seed: int = 0) -> RoutingTrace:
    """A routing trace for a model without a measured one: each token keeps each of the previous
    token's experts with probability `share` and draws the rest uniformly without replacement.

    share = 0.3 puts the consecutive-token expert overlap near the 27% measured on DeepSeek's
    ESFT routing (shared/data/README.md) for top-k much smaller than the expert count.
    """
    E, K, L = model.num_experts, model.top_k, model.num_moe_layers
    rng = np.random.default_rng(seed)
    ids = np.zeros((num_seqs, seq_len, L, K), np.int32)
    prev = np.argsort(rng.random((num_seqs, L, E)), axis=-1)[..., :K]  # [S, L, K]
    for t in range(seq_len):
        # kept experts get score 2 (> any uniform draw), so top-K keeps them and fills uniformly
        score = rng.random((num_seqs, L, E))  # [S, L, E]
        keep = rng.random((num_seqs, L, K)) < share
        np.put_along_axis(score, prev, np.where(keep, 2.0, np.take_along_axis(score, prev, -1)), -1)
        cur = np.argsort(-score, axis=-1, kind="stable")[..., :K]
        ids[:, t] = cur
        prev = cur
    ids = ids.reshape(num_seqs * seq_len, L, K)
    w = np.full(ids.shape, 1.0 / K, np.float32)
    seq_id = np.repeat(np.arange(num_seqs), seq_len)
    pos = np.tile(np.arange(seq_len), num_seqs)
    meta = dict(model=model.name, num_experts=E, top_k=K, phase="decode",
                source=f"specmoe synthetic_routing share={share} seed={seed}")
    return RoutingTrace(ids, w, seq_id.astype(np.int64), pos.astype(np.int64), meta)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else a
