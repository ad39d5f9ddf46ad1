"""The fused (Triton) verify forward of the SmolLM2 Llama against the plain-torch model, and
greedy Token Recycling on it equal to autoregressive decoding, under Triton's interpreter."""
import pytest
import torch

from specmoe.runtime.specdec.engine import Decoder
from specmoe.runtime.specdec.fused import FusedLlama
from specmoe.runtime.specdec.model import step_inputs, tree_tables
from specmoe.runtime.specdec.tree import chain, constant_branching, tree_paths
from tests.kernels._util import rel_err
from tests.runtime.specdec.specdec_helpers import tiny_llama


def test_tree_paths():
    depth, path = tree_paths([-1, 0, 0, 1, 3, 2])
    assert depth.tolist() == [0, 1, 1, 2, 3, 2]
    assert path[4].tolist() == [0, 1, 3, 4] and path[5, :3].tolist() == [0, 2, 5]


@pytest.mark.parametrize("precision,tol", [("ieee", 1e-5), ("bf16", 2e-2)])
def test_fused_forward_matches_the_torch_model(precision, tol):
    m = tiny_llama(vocab=64)
    parents = list(constant_branching([3, 2]).parents)
    T, n, S = len(parents), 9, 40
    tok = torch.randint(0, 64, (T,), generator=torch.Generator().manual_seed(0))
    prefix = torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(1))
    caches = []
    for _ in range(2):                                    # same prefix in two caches
        c = m.new_cache(S)
        d, a = tree_tables(list(range(-1, n - 1)), "cpu")
        pos, slots, mask = step_inputs(torch.tensor(0), torch.arange(n), d, a, S)
        m.hidden(prefix, pos, slots, mask, c)
        caches.append(c)
    nb = torch.tensor(n)
    d, a = tree_tables(parents, "cpu")
    pos, slots, mask = step_inputs(nb, torch.arange(T), d, a, S)
    ref = m.logits(m.hidden(tok, pos, slots, mask, caches[0]))
    f = FusedLlama(m, S, precision=precision)
    depth, path = f.tables(parents)
    got = f.logits(f.hidden(tok, nb, depth, path, caches[1]))
    assert rel_err(got, ref) < tol
    assert rel_err(caches[1].k[:, :, : n + T], caches[0].k[:, :, : n + T]) < tol
    if precision == "bf16":                 # the bf16 copies are what ran: not the fp32 result
        assert f.layers[0]["wo"].dtype == f.lm_head.dtype == torch.bfloat16 and rel_err(got, ref) > 1e-5


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_fused_greedy_recycling_equals_fused_autoregressive(precision):
    m = tiny_llama(vocab=48)
    dec = Decoder(m, 96, kernels="triton", use_graphs=False, precision=precision)
    ar = dec.generate([5, 17, 33, 8], "ar", 16)
    tree = constant_branching([2, 2, 1])
    for _ in range(2):                                    # the second pass has a warm adjacency
        got = dec.generate([5, 17, 33, 8], "recycling", 16, tree=tree)
        assert got.tokens == ar.tokens
    assert dec.generate([5, 17, 33, 8], "recycling", 16, tree=chain(2)).tokens == ar.tokens


@pytest.mark.parametrize("max_len", [64, 14])      # padded to the 64-token bucket / to max_len
def test_fused_prefill_fills_the_cache_as_the_torch_model_does(max_len):
    m = tiny_llama(vocab=48)
    prompt = [5, 17, 33, 8, 40, 2, 9, 11, 30, 7, 1, 44]
    caches = []
    for kernels in ("torch", "triton"):
        dec = Decoder(m, max_len, kernels=kernels, use_graphs=False, precision="ieee")
        assert dec.prefill(prompt) == prompt[-1] and dec.cache.n == len(prompt) - 1
        caches.append((dec.cache.k[:, :, : dec.cache.n], dec.cache.v[:, :, : dec.cache.n]))
    assert rel_err(caches[1][0], caches[0][0]) < 1e-5 and rel_err(caches[1][1], caches[0][1]) < 1e-5


def test_fused_prefill_padding_changes_no_bits():
    """The prompt's cache slots are the same bits whatever the padding (14 vs 64 rows)."""
    m = tiny_llama(vocab=48)
    prompt = [5, 17, 33, 8, 40, 2, 9, 11, 30, 7, 1, 44]
    kv = []
    for max_len in (14, 64):
        dec = Decoder(m, max_len, kernels="triton", use_graphs=False)
        dec.prefill(prompt)
        kv.append((dec.cache.k[:, :, : dec.cache.n].clone(), dec.cache.v[:, :, : dec.cache.n].clone()))
    assert torch.equal(kv[0][0], kv[1][0]) and torch.equal(kv[0][1], kv[1][1])


def test_fused_prefill_seeds_the_adjacency_as_the_torch_prefill_does():
    m = tiny_llama(vocab=48)
    prompt = [5, 17, 33, 8, 40, 2, 9, 17, 30, 7, 1, 44]
    adj = []
    for kernels in ("torch", "triton"):
        dec = Decoder(m, 64, kernels=kernels, use_graphs=False, precision="ieee")
        dec.prefill(prompt, seed_adjacency=True)
        adj.append(dec.adj)
    assert adj[0][prompt[:-1]].any() and torch.equal(adj[0], adj[1])
