"""Recursive speculative decoding (Jeon et al. 2024, arXiv:2402.14160).

Draft: at each tree node, b children sampled WITHOUT replacement from the draft's q by
Gumbel-top-k (Kool et al. 2019: the top-b of log q + Gumbel noise is an ordered sample without
replacement). Verification: recursive rejection sampling (RRS). At a node with target p and
children x_1..x_b drawn in that order:

    p_1 = p, q_1 = q
    accept x_i with probability min(1, p_i(x_i) / q_i(x_i))
    on rejection: p_{i+1} = norm(max(p_i - q_i, 0)),  q_{i+1} = norm(q_i with x_i removed)
    all rejected: emit a bonus token from p_{b+1}

Every node's outcome is independent given the tree, so `rrs_outcome_probs` computes the exact
distribution of the outcome (accept child i, or bonus token v) for all nodes at once; sampling
that categorical is the same as flipping the coins in order.
"""
from __future__ import annotations

import torch


def gumbel_topk(logq: torch.Tensor, b: int, generator=None) -> torch.Tensor:
    """Ordered sample without replacement of b tokens from each row of softmax(logq) [N, V] -> [N, b]."""
    u = torch.rand(logq.shape, device=logq.device, generator=generator).clamp_(1e-20, 1.0)
    return (logq - torch.log(-torch.log(u))).topk(b, dim=-1).indices


def rrs_outcome_probs(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact outcome distribution of recursive rejection sampling, batched over N nodes.

    p, q: [N, V] target and draft distributions; x: [N, b] children in draw order (drawn from q
    without replacement). Returns [N, b + V]: column i < b = P(child i accepted), column b + v =
    P(all rejected and bonus token v). Rows sum to 1.
    """
    p, q = p.double().clone(), q.double().clone()
    n, b = x.shape
    out = torch.zeros(n, b + p.shape[1], dtype=torch.float64, device=p.device)
    reach = torch.ones(n, dtype=torch.float64, device=p.device)
    for i in range(b):
        xi = x[:, i : i + 1]
        pi, qi = p.gather(1, xi)[:, 0], q.gather(1, xi)[:, 0]
        a = torch.where(qi > 0, (pi / qi.clamp_min(1e-300)).clamp(max=1.0), (pi > 0).double())
        out[:, i] = reach * a
        reach = reach * (1 - a)
        p = _normalize((p - q).clamp_min(0.0), fallback=p)
        q = _normalize(q.scatter(1, xi, 0.0), fallback=q)
    out[:, b:] = reach[:, None] * p
    return out


def _normalize(t: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Rows of t normalised; a row with zero mass (reached with probability 0) keeps `fallback`."""
    s = t.sum(-1, keepdim=True)
    return torch.where(s > 0, t / s.clamp_min(1e-300), fallback)


def sample_outcomes(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One outcome index per row of probs [N, M] -> [N]."""
    return torch.multinomial(probs.float().clamp_min(0), 1, generator=generator)[:, 0]
