"""Plain-torch Llama (SmolLM2) with a static KV cache that takes tree-shaped appends.

Batch size is 1 (speculative decoding serves one sequence per step). The cache is a static
buffer of `max_len` slots per layer; the first `n` slots hold the committed prefix. A step feeds
T tokens (a draft tree, or one token for autoregressive decoding) into slots n..n+T-1; token i
attends to the prefix and to its tree ancestors (itself included). After verification,
`compact()` moves the accepted path's slots down to n, n+1, ... Every shape is static given T,
so a step can be captured in a CUDA graph.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from specmoe.runtime.specdec.attention import blocked_rows, tree_attention
from specmoe.runtime.specdec.gguf_load import LlamaConfig


class KVCache:
    """k, v: [n_layers, n_kv_heads, max_len, head_dim]; `n` committed slots."""

    def __init__(self, cfg: LlamaConfig, max_len: int, device, dtype):
        shape = (cfg.n_layers, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.n = 0

    def compact(self, node_ids: list[int]) -> None:
        """Keep tree nodes `node_ids` (ascending, root first) as slots n..n+m-1; then n += m."""
        m = len(node_ids)
        if node_ids != list(range(m)):  # a chain prefix is already in place
            src = torch.tensor(node_ids, device=self.k.device) + self.n
            dst = torch.arange(self.n, self.n + m, device=self.k.device)
            self.k.index_copy_(2, dst, self.k.index_select(2, src))
            self.v.index_copy_(2, dst, self.v.index_select(2, src))
        self.n += m

    def compact_device_(self, path: torch.Tensor, n: torch.Tensor) -> None:
        """Device form of `compact` for graphs: slots n + path[d] -> n + d for every d.

        path [D + 1] long (node ids, root first; entries past the accepted length are don't-care:
        they land in slots the next step overwrites); n 0-d long, the committed length. Host `n`
        is advanced by the caller once it has read the accepted length.
        """
        src = n + path
        dst = n + torch.arange(path.numel(), device=path.device)
        self.k.index_copy_(2, dst, self.k.index_select(2, src))
        self.v.index_copy_(2, dst, self.v.index_select(2, src))


def tree_tables(parents: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """depth [T] (root 0) and anc [T, T] bool: anc[i, j] = j is i or an ancestor of i."""
    t = len(parents)
    anc = torch.zeros(t, t, dtype=torch.bool)
    depth = torch.zeros(t, dtype=torch.long)
    for i, p in enumerate(parents):
        anc[i, i] = True
        if p >= 0:
            anc[i] |= anc[p]
            depth[i] = depth[p] + 1
    return depth.to(device), anc.to(device)


def step_inputs(n: torch.Tensor, node_idx: torch.Tensor, depth: torch.Tensor, anc: torch.Tensor,
                max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions [T], cache slots [T] and attention mask [T, max_len] for tree nodes `node_idx`.

    n: 0-d long tensor (committed length); pure tensor ops so it runs inside a CUDA graph.
    """
    t_tree = anc.shape[0]
    pos = n + depth[node_idx]
    slots = n + node_idx
    col = torch.arange(max_len, device=n.device)
    rel = col - n                                                  # [S]
    in_tree = (rel >= 0) & (rel < t_tree)
    rows = anc[node_idx]                                           # [T, t_tree]
    tree = rows.gather(1, rel.clamp(0, t_tree - 1).expand(node_idx.numel(), max_len)) & in_tree
    return pos, slots, (col < n) | tree


class Llama(torch.nn.Module):
    """SmolLM2 / Llama decoder. Weights from `gguf_load.read_gguf` (RoPE on adjacent pairs)."""

    def __init__(self, cfg: LlamaConfig, weights: dict, device="cpu", dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        w = {k: torch.from_numpy(np.array(v, copy=True)).to(device=device, dtype=dtype) for k, v in weights.items()}
        self.embed = w["embed"]
        self.norm = w["norm"]
        self.lm_head = w.get("lm_head", self.embed)
        self.layers = [{k.split(".", 1)[1]: t for k, t in w.items() if k.startswith(f"{i}.")}
                       for i in range(cfg.n_layers)]
        for lw in self.layers:  # fuse QKV and gate/up: fewer launches per layer
            lw["wqkv"] = torch.cat([lw["wq"], lw["wk"], lw["wv"]])
            lw["w13"] = torch.cat([lw["w1"], lw["w3"]])
        half = cfg.rope_dim // 2
        self.inv_freq = (1.0 / cfg.rope_base ** (torch.arange(half, dtype=torch.float64) * 2 / cfg.rope_dim)
                         ).to(device=device, dtype=torch.float32)
        self.device, self.dtype = torch.device(device), dtype

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.cfg, max_len, self.device, self.dtype)

    def _rms(self, x, w):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)).to(x.dtype) * w

    def _rope_table(self, pos):
        """cos, sin [T, rope_dim/2] for positions pos [T]; computed once per forward."""
        ang = pos.float()[:, None] * self.inv_freq[None, :]
        return ang.cos().to(self.dtype), ang.sin().to(self.dtype)

    @staticmethod
    def _rope(x, cos, sin):
        """x [H, T, hd]; rotate adjacent pairs (llama.cpp NORM rope, matching GGUF's permuted Q/K)."""
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)

    def hidden(self, tokens, pos, slots, mask, cache: KVCache, layers: range | None = None,
               h=None) -> torch.Tensor:
        """Run decoder layers `layers` (default all) on tokens [T]; writes K/V at `slots`.

        mask: [T, max_len] bool. Returns the residual stream [T, dim] (before the final norm).
        """
        c = self.cfg
        hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
        x = self.embed[tokens] if h is None else h
        cos, sin = self._rope_table(pos)                            # shared by every layer
        blocked = blocked_rows(mask, nh // nkv)
        for li in (range(c.n_layers) if layers is None else layers):
            lw = self.layers[li]
            qkv = self._rms(x, lw["attn_norm"]) @ lw["wqkv"].T
            qk, v = qkv.split([(nh + nkv) * hd, nkv * hd], dim=-1)
            qk = self._rope(qk.view(-1, nh + nkv, hd).transpose(0, 1), cos, sin)  # Q and K at once
            q, k = qk[:nh], qk[nh:]                                    # [H, T, hd], [Hkv, T, hd]
            cache.k[li].index_copy_(1, slots, k)
            cache.v[li].index_copy_(1, slots, v.view(-1, nkv, hd).transpose(0, 1))
            o = tree_attention(q, cache.k[li], cache.v[li], blocked)      # [H, T, hd]
            x = x + o.transpose(0, 1).reshape(-1, nh * hd) @ lw["wo"].T
            gu = self._rms(x, lw["ffn_norm"]) @ lw["w13"].T
            g, u = gu.chunk(2, dim=-1)
            x = x + (F.silu(g) * u) @ lw["w2"].T
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [T, dim] residual stream -> logits [T, vocab] (float32)."""
        return (self._rms(h, self.norm) @ self.lm_head.T).float()

    def forward(self, tokens, pos, slots, mask, cache):
        return self.logits(self.hidden(tokens, pos, slots, mask, cache))
