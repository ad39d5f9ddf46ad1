"""Speculative token shuffling: predict a token's experts, send it to the GPU holding most.

Predictors are fitted on the profiling split and return, per token, a score per logical
expert `[T, E]` (an estimate of how likely each expert is to be chosen):
  (a) TokenTable: token id -> per-layer expert frequencies (only when the trace has ids);
  (b) NGram: experts of the previous layer(s) -> the next layer's experts, from transition
      counts (order 1 plus a skip-one table: layer l-1 and l-2 both vote);
  (c) request affinity: the experts a request's earlier tokens used at the same layer.
Policies:
  tp attention: every token, every layer, goes to the rank with the most predicted
      activations (after the TP attention the token may be sent from any rank);
  dp attention: a request is pinned to one rank for all layers; after its first `warmup`
      tokens (served on its round-robin rank while we observe them), it moves to the rank its
      observed routing favours, keeping ranks balanced in tokens.
A wrong guess only costs traffic: scoring always routes every token by the real trace.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _onehot_counts(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Multi-hot `[T, E]` float from `ids [T, K]` (-1 ignored)."""
    T = ids.shape[0]
    out = np.zeros((T, num_experts), np.float32)
    ok = ids >= 0
    np.add.at(out, (np.broadcast_to(np.arange(T)[:, None], ids.shape)[ok], ids[ok]), 1.0)
    return out


def _row_normalise(counts: np.ndarray, prior: float = 1.0) -> np.ndarray:
    """P(next | current) rows with add-`prior`/E smoothing, `[..., E, E]`."""
    E = counts.shape[-1]
    c = counts + prior / E
    return c / c.sum(-1, keepdims=True)


@dataclass
class NGram:
    """trans1[l] `[E, E]`: P(b at l | a at l-1), for l >= 1 (index 0 unused);
    trans2[l]: P(b at l | a at l-2), for l >= 2; layer0 `[E]`: layer-0 marginal."""

    trans1: np.ndarray  # [L, E, E]
    trans2: np.ndarray  # [L, E, E]
    layer0: np.ndarray  # [E]

    @classmethod
    def fit(cls, topk_ids: np.ndarray, num_experts: int) -> "NGram":
        T, L, K = topk_ids.shape
        E = num_experts
        hot = np.stack([_onehot_counts(topk_ids[:, l], E) for l in range(L)], 1)  # [T, L, E]
        t1 = np.zeros((L, E, E))
        t2 = np.zeros((L, E, E))
        for l in range(1, L):
            t1[l] = _row_normalise(hot[:, l - 1].T @ hot[:, l])
            if l >= 2:
                t2[l] = _row_normalise(hot[:, l - 2].T @ hot[:, l])
        m0 = hot[:, 0].sum(0) + 1.0 / E
        return cls(t1.astype(np.float32), t2.astype(np.float32), (m0 / m0.sum()).astype(np.float32))

    def scores(self, topk_ids: np.ndarray, layer: int) -> np.ndarray:
        """Predicted expert scores at `layer` from the real routing of earlier layers, `[T, E]`."""
        T = topk_ids.shape[0]
        E = self.layer0.shape[0]
        if layer == 0:
            return np.broadcast_to(self.layer0, (T, E)).copy()
        s = _onehot_counts(topk_ids[:, layer - 1], E) @ self.trans1[layer]
        if layer >= 2:  # the skip table adds the evidence of layer l-2 at half weight
            s += 0.5 * (_onehot_counts(topk_ids[:, layer - 2], E) @ self.trans2[layer])
        return s


@dataclass
class TokenTable:
    """table `[V, L, E]` expert frequencies for the V token ids seen while profiling."""

    vocab: np.ndarray  # [V] sorted token ids
    table: np.ndarray  # [V, L, E] float32

    @classmethod
    def fit(cls, topk_ids: np.ndarray, token_id: np.ndarray, num_experts: int) -> "TokenTable":
        vocab, inv = np.unique(token_id, return_inverse=True)
        T, L, K = topk_ids.shape
        table = np.zeros((len(vocab), L, num_experts), np.float32)
        for l in range(L):
            table[:, l] = np.zeros((len(vocab), num_experts), np.float32)
            np.add.at(table[:, l], inv, _onehot_counts(topk_ids[:, l], num_experts))
        table /= np.maximum(table.sum(-1, keepdims=True), 1e-9)
        return cls(vocab, table)

    def scores(self, token_id: np.ndarray, layer: int) -> np.ndarray:
        """`[T, E]`; unseen ids get zeros (the other predictors decide)."""
        idx = np.clip(np.searchsorted(self.vocab, token_id), 0, len(self.vocab) - 1)
        seen = self.vocab[idx] == token_id
        return np.where(seen[:, None], self.table[idx, layer], 0.0)


def request_history(topk_ids: np.ndarray, seq_id: np.ndarray, position: np.ndarray,
                    layer: int, num_experts: int) -> np.ndarray:
    """For each token, the experts its request's earlier tokens chose at `layer`,
    normalised to sum 1 (zeros for a request's first token), `[T, E]`. Causal."""
    order = np.lexsort((position, seq_id))
    hot = _onehot_counts(topk_ids[order, layer], num_experts)
    cum = np.cumsum(hot, 0) - hot  # exclusive prefix sums
    seq = seq_id[order]
    start = np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1]
    base = np.repeat(cum[start], np.diff(np.r_[start, len(seq)]), 0)
    hist = cum - base
    out = np.empty_like(hist)
    out[order] = hist / np.maximum(hist.sum(1, keepdims=True), 1e-9)
    return out


@dataclass
class Predictor:
    """The fitted predictors; `scores` sums the available ones, each scaled to sum top_k."""

    ngram: NGram
    tokens: TokenTable | None
    top_k: int
    use_request: bool = True

    @classmethod
    def fit(cls, topk_ids, num_experts, token_id=None, use_request=True) -> "Predictor":
        tokens = None if token_id is None else TokenTable.fit(topk_ids, token_id, num_experts)
        return cls(NGram.fit(topk_ids, num_experts), tokens, topk_ids.shape[2], use_request)

    def names(self) -> list[str]:
        return ["ngram"] + (["token_table"] if self.tokens else []) + \
            (["request_affinity"] if self.use_request else [])

    def scores(self, trace, layer: int) -> np.ndarray:
        """Predicted expert scores `[T, E]` at `layer`, using only the real routing of
        earlier layers, the token id, and the request's earlier tokens."""
        def scaled(s):
            return self.top_k * s / np.maximum(s.sum(1, keepdims=True), 1e-9)
        s = scaled(self.ngram.scores(trace.topk_ids, layer))
        if self.tokens is not None and trace.token_id is not None:
            s += scaled(self.tokens.scores(trace.token_id, layer))
        if self.use_request:
            s += scaled(request_history(trace.topk_ids, trace.seq_id, trace.position, layer,
                                        s.shape[1]))
        return s


def gpu_scores(scores: np.ndarray, phy2log_l: np.ndarray, ep: int) -> np.ndarray:
    """Predicted activations per rank `[T, G]`: an expert counts on every rank holding it."""
    E = scores.shape[1]
    has = np.zeros((E, ep), np.float32)
    has[phy2log_l, np.arange(len(phy2log_l)) // (len(phy2log_l) // ep)] = 1.0
    return scores @ has


def _argmax_spread(s: np.ndarray) -> np.ndarray:
    """Row argmax with ties broken by token index (t + g) % G, so ties spread over ranks."""
    T, G = s.shape
    jitter = ((np.arange(T)[:, None] + np.arange(G)[None, :]) % G) * 1e-6
    return np.argmax(s - jitter, 1)


def balanced_argmax(scores: np.ndarray, slack: float) -> np.ndarray:
    """Each row to its best column, at most ceil((1 + slack) * T / G) rows per column.

    An over-subscribed column keeps the rows that score it highest; the others try their
    next best column with room. `scores [T, G]` -> `[T]`."""
    T, G = scores.shape
    cap = int(np.ceil((1 + slack) * T / G))
    s = scores.astype(np.float64).copy()
    out = np.full(T, -1, np.int64)
    room = np.full(G, cap)
    for _ in range(G):
        idx = np.flatnonzero(out < 0)
        if not len(idx):
            break
        choice = _argmax_spread(s[idx])
        order = np.lexsort((-s[idx, choice], choice))  # by column, best score first
        col = choice[order]
        start = np.searchsorted(col, np.arange(G))
        pos = np.arange(len(col)) - start[col]
        take = pos < room[col]
        out[idx[order[take]]] = col[take]
        room -= np.bincount(col[take], minlength=G)
        s[idx[order[~take]], col[~take]] = -np.inf
        s[:, room <= 0] = -np.inf
    return out


def tp_schedule(trace, predictor: Predictor, phy2log: np.ndarray, ep: int,
                slack: float = 0.10) -> np.ndarray:
    """token2gpu `[T, L]`: per token and layer, the rank with most predicted activations,
    each rank sending at most (1 + slack) x the mean number of tokens (a rank that sends
    every token would make its links the all-to-all's bottleneck)."""
    out = np.zeros((trace.num_tokens, trace.num_layers), np.int64)
    for layer in range(trace.num_layers):
        out[:, layer] = balanced_argmax(gpu_scores(predictor.scores(trace, layer),
                                                   phy2log[layer], ep), slack)
    return out


def dp_schedule(trace, phy2log: np.ndarray, ep: int, warmup: int = 16,
                slack: float = 0.05) -> np.ndarray:
    """token2gpu `[T]` for DP attention: one rank per request.

    A request's first `warmup` tokens run on its round-robin rank (order of first
    appearance); their real routing, summed over layers, scores the ranks, and the request's
    later tokens run on the best-scoring rank that stays within (1 + slack) x the mean
    token count per rank (requests placed largest first)."""
    seqs, first = np.unique(trace.seq_id, return_index=True)
    seqs = seqs[np.argsort(first)]
    req = np.searchsorted(np.sort(seqs), trace.seq_id)
    rr_rank = np.empty(len(seqs), np.int64)
    rr_rank[np.searchsorted(np.sort(seqs), seqs)] = np.arange(len(seqs)) % ep
    early = _first_n_per_request(trace.seq_id, trace.position, warmup)
    affinity = np.zeros((len(seqs), ep))
    for layer in range(trace.num_layers):
        hot = _onehot_counts(trace.topk_ids[early, layer], int(phy2log.max()) + 1)
        g = gpu_scores(hot, phy2log[layer], ep)
        np.add.at(affinity, req[early], g)
    late_tokens = np.bincount(req[~early], minlength=len(seqs)).astype(np.float64)
    home = _balanced_assign(affinity, late_tokens, ep, slack)
    return np.where(early, rr_rank[req], home[req])


def _first_n_per_request(seq_id, position, n) -> np.ndarray:
    """True for the first n tokens (by position) of every request, `[T]`."""
    order = np.lexsort((position, seq_id))
    seq = seq_id[order]
    start = np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1]
    rank_in = np.arange(len(seq)) - np.repeat(start, np.diff(np.r_[start, len(seq)]))
    out = np.empty(len(seq), bool)
    out[order] = rank_in < n
    return out


def _balanced_assign(affinity: np.ndarray, size: np.ndarray, ep: int, slack: float) -> np.ndarray:
    """Requests (largest first) to their best rank with room, `[R]`; full ranks are skipped."""
    cap = (1 + slack) * size.sum() / ep
    used = np.zeros(ep)
    home = np.zeros(len(size), np.int64)
    for r in np.argsort(-size, kind="stable"):
        room = used + size[r] <= cap
        cand = np.where(room, affinity[r], -np.inf) if room.any() else -used
        home[r] = int(np.argmax(cand))
        used[home[r]] += size[r]
    return home


def accuracy(trace, predictor: Predictor, phy2log: np.ndarray, ep: int) -> dict:
    """Held-out precision and recall of the top_k predicted experts, and top-1 GPU accuracy
    (predicted rank == the rank holding most of the token's real experts), all layers."""
    hit = pred_n = real_n = gpu_ok = n = 0
    for layer in range(trace.num_layers):
        s = predictor.scores(trace, layer)
        ids = trace.topk_ids[:, layer]
        real = _onehot_counts(ids, s.shape[1]) > 0
        k = predictor.top_k
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        pred = np.zeros_like(real)
        np.put_along_axis(pred, top, True, 1)
        hit += int((pred & real).sum())
        pred_n += int(pred.sum())
        real_n += int(real.sum())
        g_pred = _argmax_spread(gpu_scores(s, phy2log[layer], ep))
        g_real = gpu_scores(real.astype(np.float32), phy2log[layer], ep)
        gpu_ok += int((g_real[np.arange(len(ids)), g_pred] == g_real.max(1)).sum())
        n += len(ids)
    return dict(expert_precision=hit / max(pred_n, 1), expert_recall=hit / max(real_n, 1),
                gpu_top1_accuracy=gpu_ok / max(n, 1))
