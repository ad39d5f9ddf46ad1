"""RSD is lossless: exact enumeration on toy models, chi-square on samples (fixed seeds)."""
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from tests.runtime.specdec.specdec_helpers import DEVICES, one_thread, real_model, tiny_llama

from specmoe.runtime.specdec import rsd


@pytest.fixture
def single_thread():
    with one_thread():
        yield



def _ordered_draws(q, b):
    """All ordered samples without replacement of b tokens from q, with their probabilities."""
    for xs in itertools.permutations(range(len(q)), b):
        pr, left = 1.0, 1.0
        for x in xs:
            pr *= q[x] / left
            left -= q[x]
        if pr > 0:
            yield xs, pr


def _step_distribution(P, Q, root, branching):
    """Exact distribution of the token sequence one RSD step emits (accepted path + bonus).

    P, Q: [V, V] toy target/draft: next-token distributions given the last token.
    Enumerates the draft's draws at every node and uses rrs_outcome_probs for the verdicts."""
    out = {}

    def node(last, prefix, depth, weight):
        if depth == len(branching):  # leaf: bonus ~ p
            for v, pv in enumerate(P[last]):
                out[prefix + (v,)] = out.get(prefix + (v,), 0.0) + weight * pv
            return
        for xs, pr in _ordered_draws(Q[last], branching[depth]):
            o = rsd.rrs_outcome_probs(torch.tensor(P[last])[None], torch.tensor(Q[last])[None],
                                      torch.tensor([xs]))[0].numpy()
            b = len(xs)
            for v in range(len(P)):
                if o[b + v] > 0:
                    out[prefix + (v,)] = out.get(prefix + (v,), 0.0) + weight * pr * o[b + v]
            for i, x in enumerate(xs):
                if o[i] > 0:
                    node(x, prefix + (x,), depth + 1, weight * pr * o[i])
    node(root, (), 0, 1.0)
    return out


def _target_prob(P, root, seq):
    pr, last = 1.0, root
    for t in seq:
        pr *= P[last, t]
        last = t
    return pr


@pytest.mark.parametrize("branching", [[2, 2], [3, 1], [1, 1, 1], [4]])
@pytest.mark.parametrize("seed", [0, 1])
def test_rrs_output_distribution_is_exactly_the_target(branching, seed, single_thread):
    rng = np.random.default_rng(seed)
    V = 5
    P = rng.dirichlet(np.full(V, 0.5), V)
    P[:, 0] = 0.0  # tokens the target never emits: the residual must never produce them
    P /= P.sum(1, keepdims=True)
    Q = rng.dirichlet(np.full(V, 0.7), V)  # full support, far from P
    dist = _step_distribution(P, Q, root=1, branching=branching)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)
    # every emitted prefix of length L, completed by the target itself, has the target's probability
    for L in range(1, len(branching) + 2):
        marg = {}
        for seq, pr in dist.items():
            if len(seq) >= L:
                key = seq[:L]
                marg[key] = marg.get(key, 0.0) + pr
            else:  # step ended early: the next steps sample the rest from the target
                for tail in itertools.product(range(V), repeat=L - len(seq)):
                    last = seq[-1]
                    marg[seq + tail] = marg.get(seq + tail, 0.0) + pr * _target_prob(P, last, tail)
        for key in itertools.product(range(V), repeat=L):
            assert marg.get(key, 0.0) == pytest.approx(_target_prob(P, 1, key), abs=1e-12), key


def test_rrs_rejects_when_draft_is_wrong_and_accepts_when_equal():
    p = torch.tensor([[0.0, 1.0, 0.0]])
    q = torch.tensor([[0.5, 0.25, 0.25]])
    o = rsd.rrs_outcome_probs(p, q, torch.tensor([[0, 2]]))[0]
    # hand: both children have p = 0 -> rejected; residual is p itself -> bonus token 1 w.p. 1
    assert o.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 0.0])
    o = rsd.rrs_outcome_probs(q, q, torch.tensor([[2, 0]]))[0]
    assert o[0].item() == pytest.approx(1.0)  # p == q: the first draw is always accepted


def test_gumbel_topk_is_sampling_without_replacement():
    q = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    n = 40000
    draws = rsd.gumbel_topk(q.log().expand(n, 4), 2, g).numpy()
    pairs = list(_ordered_draws(q.numpy(), 2))
    idx = {xs: i for i, (xs, _) in enumerate(pairs)}
    obs = np.bincount([idx[tuple(d)] for d in draws], minlength=len(pairs))
    exp = np.array([pr for _, pr in pairs], dtype=np.float64)
    exp = exp / exp.sum() * n
    assert chisquare(obs, exp).pvalue > 1e-3


def _chi2_pvalue(samples, p, n):
    exp = p * n
    big = np.nonzero(exp >= 5)[0]
    obs = np.bincount(samples, minlength=len(p))
    o = np.append(obs[big], n - obs[big].sum())
    e = np.append(exp[big], n - exp[big].sum())
    keep = e > 0
    return chisquare(o[keep], e[keep] * o[keep].sum() / e[keep].sum()).pvalue


@pytest.mark.parametrize("device", DEVICES)
def test_engine_rsd_first_token_follows_target_tiny(device, single_thread):
    """End to end through Decoder.generate: the first emitted token ~ target softmax."""
    from specmoe.runtime.specdec.draft import EarlyExitDraft
    from specmoe.runtime.specdec.engine import Decoder
    from specmoe.runtime.specdec.tree import constant_branching
    m = tiny_llama(device, vocab=24, seed=3)
    dec = Decoder(m, 64, draft=EarlyExitDraft(m, 1), use_graphs=False, seed=7)
    prompt = [3, 9, 4]
    tree = constant_branching([3, 2])
    n = 1500
    firsts = [dec.generate(prompt, "rsd", 1, temperature=1.0, tree=tree).tokens[0] for _ in range(n)]
    base = Decoder(m, 64, use_graphs=False)
    base.prefill(prompt)
    from specmoe.runtime.specdec.model import step_inputs, tree_tables
    d, a = tree_tables([-1], m.device)
    pos, slots, mask = step_inputs(torch.tensor(base.cache.n, device=m.device), torch.tensor([0], device=m.device), d, a, 64)
    with torch.no_grad():
        p = torch.softmax(m(torch.tensor([prompt[-1]], device=m.device), pos, slots, mask, base.cache)[0], -1)
    assert _chi2_pvalue(np.array(firsts), p.cpu().double().numpy(), n) > 1e-3


def test_rrs_first_token_follows_target_real_model(single_thread):
    """SmolLM2-135M target, its 10-layer early exit as draft: first token of an RSD step ~ p."""
    from specmoe.runtime.specdec.draft import EarlyExitDraft
    from specmoe.runtime.specdec.model import step_inputs, tree_tables
    from specmoe.runtime.specdec.prompts import encode_chat
    m, tok, _ = real_model()
    ids = encode_chat(tok, "Name a colour.")
    cache = m.new_cache(len(ids) + 1)
    d, a = tree_tables(list(range(-1, len(ids) - 1)), "cpu")
    pos, slots, mask = step_inputs(torch.tensor(0), torch.arange(len(ids)), d, a, cache.max_len)
    draft = EarlyExitDraft(m, 10)
    with torch.no_grad():
        h = m.hidden(torch.tensor(ids), pos, slots, mask, cache, layers=range(10))
        q = torch.softmax(draft.head(h[-1:]), -1)
        h = m.hidden(torch.tensor(ids), pos, slots, mask, cache, layers=range(10, 30), h=h)
        p = torch.softmax(m.logits(h[-1:]), -1)
    g = torch.Generator().manual_seed(0)
    n, chunk, b, firsts = 1200, 200, 3, []
    for _ in range(n // chunk):
        kids = rsd.gumbel_topk(q.log().expand(chunk, -1), b, g)
        probs = rsd.rrs_outcome_probs(p.expand(chunk, -1), q.expand(chunk, -1), kids)
        o = rsd.sample_outcomes(probs, g)
        firsts += torch.where(o < b, kids.gather(1, o.clamp(max=b - 1)[:, None])[:, 0], o - b).tolist()
    assert _chi2_pvalue(np.array(firsts), p[0].double().numpy(), n) > 1e-3


@pytest.mark.parametrize("method", ["recycling", "rsd"])
def test_engine_second_token_follows_target_tiny(method, single_thread):
    """The 2nd emitted token (often from an accepted draft, so from the tree walk) ~ its exact
    marginal sum_x1 p(x1) p(x2 | x1), computed with one plain forward per x1."""
    from specmoe.runtime.specdec.draft import EarlyExitDraft
    from specmoe.runtime.specdec.engine import Decoder
    from specmoe.runtime.specdec.tree import constant_branching
    m = tiny_llama("cpu", vocab=16, seed=5)
    prompt = [3, 9, 4]
    dec = Decoder(m, 64, draft=EarlyExitDraft(m, 2), use_graphs=False, seed=11)
    tree = constant_branching([4, 3])
    dec.generate(prompt, "recycling", 30, temperature=1.0, tree=tree)  # warm the adjacency
    n, seconds, accepted = 1000, [], 0
    for _ in range(n):
        r = dec.generate(prompt, method, 2, temperature=1.0, tree=tree)
        seconds.append(r.tokens[1])
        accepted += len(r.steps[0]["accepted"]) > 0
    assert accepted > n // 10  # the drafts really were used

    from specmoe.runtime.specdec.model import step_inputs, tree_tables

    def probs(seq):
        d = Decoder(m, 64, use_graphs=False)
        d.prefill(seq)
        dd, a = tree_tables([-1], "cpu")
        pos, slots, mask = step_inputs(torch.tensor(d.cache.n), torch.tensor([0]), dd, a, 64)
        with torch.no_grad():
            return torch.softmax(m(torch.tensor([seq[-1]]), pos, slots, mask, d.cache)[0].double(), -1)
    p1 = probs(prompt)
    p2 = sum(p1[x] * probs(prompt + [x]) for x in range(16))
    assert _chi2_pvalue(np.array(seconds), p2.numpy(), n) > 1e-3
