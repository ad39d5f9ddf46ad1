"""Engine on a tiny random Llama: speculative greedy output == autoregressive, token for token;
the compacted KV cache equals the one autoregressive decoding builds; RSD at T=1 runs."""
import pytest
import torch
from tests.runtime.specdec.specdec_helpers import DEVICES, one_thread, tiny_llama

from specmoe.runtime.specdec.draft import EarlyExitDraft, MistakeBuffer, distill
from specmoe.runtime.specdec import engine
from specmoe.runtime.specdec.engine import Decoder
from specmoe.runtime.specdec.tree import chain, constant_branching, default_template


@pytest.fixture
def single_thread():
    with one_thread():
        yield




@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


PROMPTS = [[5, 17, 33, 8, 61], [1, 2, 3, 4, 5, 6, 7, 9, 90, 11], [44]]


def _decoders(m, graphs):
    return (Decoder(m, 160, use_graphs=graphs),
            Decoder(m, 160, draft=EarlyExitDraft(m, 1), use_graphs=graphs))


@pytest.mark.parametrize("graphs", [False, True])
def test_greedy_speculative_equals_autoregressive(device, graphs, single_thread):
    if graphs and device != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    m = tiny_llama(device)
    ar_dec, sd_dec = _decoders(m, graphs)
    templ = default_template()
    for prompt in PROMPTS:
        ar = ar_dec.generate(prompt, "ar", 40)
        ar_k = ar_dec.cache.k[:, :, : ar_dec.cache.n].clone()
        for method, tree in [("recycling", templ), ("recycling", chain(3)),
                             ("rsd", constant_branching([3, 2, 1]))]:
            dec = sd_dec if method == "rsd" else ar_dec
            got = dec.generate(prompt, method, 40, tree=tree)
            assert got.tokens == ar.tokens, (method, tree.name)
            n = min(dec.cache.n, ar_k.shape[2])
            # compaction keeps exactly the accepted path: the cache matches AR's slot for slot
            torch.testing.assert_close(dec.cache.k[:, :, :n], ar_k[:, :, :n], atol=1e-4, rtol=1e-4)
        assert len(ar.tokens) == 40 and len(ar.steps) == 40


def test_recycling_accepts_more_than_one_token_once_warm(device, single_thread):
    m = tiny_llama(device)
    dec = Decoder(m, 200)
    for _ in range(2):  # the second pass reuses the adjacency learnt in the first
        res = dec.generate(PROMPTS[0], "recycling", 60, tree=default_template())
    assert res.mean_accepted > 1.5
    for s in res.steps:  # acceptance-trace steps follow the tree: each node a child of the last
        cur = 0
        for a in s["accepted"]:
            assert s["parents"][a] == cur
            cur = a


def test_rsd_sampling_runs_and_osd_distill_lowers_kl(device, single_thread):
    torch.manual_seed(0)
    m = tiny_llama(device)
    draft = EarlyExitDraft(m, 1, rank=8)
    dec = Decoder(m, 200, draft=draft)
    dec.buffer = MistakeBuffer(256, m.cfg.dim, m.cfg.vocab_size, m.device, dtype=torch.float32)
    res = dec.generate(PROMPTS[1], "rsd", 30, temperature=1.0, tree=constant_branching([2, 2]))
    assert len(res.tokens) == 30 and all(0 <= t < m.cfg.vocab_size for t in res.tokens)
    dec.generate(PROMPTS[0], "rsd", 30, temperature=0.0, tree=constant_branching([2, 2]))
    assert dec.buffer.count > 5
    before = distill(draft, dec.buffer, steps=1, lr=0.0)
    after = distill(draft, dec.buffer, steps=80, batch=256, lr=1e-2)
    assert after < 0.8 * before


def test_prefill_seeds_the_adjacency_with_the_prompts_top_k(single_thread):
    """Each prompt token's row holds the target's top-k at its last position in the prompt
    (what a verify step at that position would write); other rows stay untouched."""
    from specmoe.runtime.specdec.model import step_inputs, tree_tables
    m = tiny_llama("cpu")
    prompt = [5, 17, 33, 5, 8, 61, 17, 9]
    body = prompt[:-1]
    cache = m.new_cache(64)
    d, a = tree_tables(list(range(-1, len(body) - 1)), "cpu")
    pos, slots, mask = step_inputs(torch.tensor(0), torch.arange(len(body)), d, a, 64)
    want = m.logits(m.hidden(torch.tensor(body), pos, slots, mask, cache)).topk(8, -1).indices
    dec = Decoder(m, 64)
    assert dec.prefill(prompt, seed_adjacency=False) == 9 and not dec.adj.any()
    dec.prefill(prompt, seed_adjacency=True)
    for t in set(body):
        last = max(i for i, x in enumerate(body) if x == t)
        assert torch.equal(dec.adj[t], want[last]), t
    untouched = torch.ones(dec.adj.shape[0], dtype=torch.bool)
    untouched[body] = False
    assert not dec.adj[untouched].any()
    dec.adj.zero_()
    dec.generate(prompt, "ar", 2)                    # AR keeps no adjacency: no seeding either
    assert not dec.adj.any()


def test_recycling_rejects_a_tree_wider_than_the_adjacency():
    m = tiny_llama("cpu")
    with pytest.raises(ValueError, match="9 children"):
        Decoder(m, 64, adj_k=8).generate(PROMPTS[0], "recycling", 4, tree=constant_branching([9]))


def test_look_ahead_loop_emits_what_the_read_first_loop_emits(monkeypatch, single_thread):
    """On CUDA the loop launches step i + 1 before reading step i; forced on here (CPU), it
    gives the same tokens and acceptance trace, and stops at max_new and at eos."""
    m = tiny_llama("cpu")
    eos = Decoder(m, 160).generate(PROMPTS[1], "ar", 40).tokens[12]
    runs = {}
    for ahead in (False, True):
        class Ring(engine._HostRing):
            def __init__(self, n, device):
                super().__init__(n, device)
                self.ahead = ahead
        monkeypatch.setattr(engine, "_HostRing", Ring)
        for max_new, stop in ((40, None), (7, None), (40, eos)):
            dec = Decoder(m, 160)
            first = dec.generate(PROMPTS[1], "recycling", max_new, tree=default_template(), eos=stop)
            warm = dec.generate(PROMPTS[1], "recycling", max_new, tree=default_template(), eos=stop)
            runs[ahead, max_new, stop] = (first.tokens, first.steps, warm.tokens)
    for key, (tokens, steps, warm) in runs.items():
        if key[0]:
            assert (tokens, steps, warm) == runs[(False,) + key[1:]]
            assert len(tokens) == (key[1] if key[2] is None else tokens.index(eos) + 1) and warm == tokens
    assert eos in runs[True, 40, eos][0]
