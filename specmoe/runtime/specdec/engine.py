"""Decode loops: autoregressive, Token Recycling and RSD, over one static tree KV cache.

Every step feeds the root (the last emitted token, not yet in the cache) plus the draft tree
in one forward, then keeps the accepted path's KV (`KVCache.compact`). On CUDA each fixed-shape
forward (verify of a tree, one draft level) is captured once in a CUDA graph and replayed: at
135M parameters a step is ~1000 small kernels, so launch overhead, not FLOPs, sets the time.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from specmoe.runtime.specdec import recycling, rsd
from specmoe.runtime.specdec.draft import EarlyExitDraft, MistakeBuffer
from specmoe.runtime.specdec.model import Llama, step_inputs, tree_tables
from specmoe.runtime.specdec.tree import TreeTemplate, chain


@dataclass
class GenResult:
    tokens: list[int]                          # generated tokens (stops after eos / max_new)
    steps: list[dict] = field(default_factory=list)  # acceptance-trace steps {parents, accepted}
    wall_s: float = 0.0                        # prefill + decoding
    prefill_s: float = 0.0

    @property
    def mean_accepted(self) -> float:
        """Tokens emitted per verify step (accepted drafts + the bonus token)."""
        return len(self.tokens) / max(len(self.steps), 1)


class _Runner:
    """fn() over static buffers; on CUDA captured once into a graph, then replayed."""

    def __init__(self, fn, use_graph: bool, snapshot=None):
        self.fn, self.graph, self.out = fn, None, None
        if use_graph:
            restore = snapshot() if snapshot is not None else None
            self._capture()
            if restore is not None:  # warm-up and capture ran fn: undo what it changed
                restore()

    def _capture(self):
        s = torch.cuda.Stream()  # warm up on a side stream, as torch.cuda.graphs documents
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.fn()
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.fn()

    def __call__(self):
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        return self.out


PREFILL_BUCKET = 64      # fused prefill pads the prompt to a multiple of this: one CUDA graph per bucket


class _HostRing:
    """Two host slots for step results: put(i, t) copies t to slot i % 2, get(i) returns step
    i's copy as a list. On CUDA the slots are pinned and put does not wait (get waits for the
    copy's event), and `ahead` tells the loop it may launch step i + 1 before reading step i;
    on a CPU put is a plain copy and the loop reads each step first."""

    def __init__(self, n: int, device: torch.device):
        cuda = device.type == "cuda"
        self.ahead = cuda
        self.host = [torch.empty(n, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        self.events = [torch.cuda.Event() for _ in range(2)] if cuda else None

    def put(self, i: int, t: torch.Tensor) -> None:
        self.host[i % 2].copy_(t, non_blocking=self.events is not None)
        if self.events is not None:
            self.events[i % 2].record()

    def get(self, i: int) -> list[int]:
        if self.events is not None:
            self.events[i % 2].synchronize()
        return self.host[i % 2].tolist()

    def sync(self) -> None:
        if self.events is not None:
            torch.cuda.synchronize()


class Decoder:
    """One sequence's decoding state: model, static cache, per-tree graphs, Token Recycling's adjacency.

    seed_from_prompt: Token Recycling also updates the adjacency from the prompt's prefill
    (`prefill(seed_adjacency=True)`); False keeps decode-time updates only.
    """

    def __init__(self, model: Llama, max_len: int, draft: EarlyExitDraft | None = None,
                 use_graphs: bool | None = None, adj_k: int = 8, seed: int = 0,
                 kernels: str | None = None, precision: str = "tf32", seed_from_prompt: bool = True):
        self.model, self.draft, self.max_len = model, draft, max_len
        self.cache = model.new_cache(max_len)
        dev = model.device
        if use_graphs is None:  # SPECMOE_NO_GRAPHS=1 falls back to eager launches
            use_graphs = dev.type == "cuda" and os.environ.get("SPECMOE_NO_GRAPHS") != "1"
        self.use_graphs = use_graphs
        # verify / AR forwards: the batch-invariant Triton kernels (default on CUDA) or plain torch
        self.kernels = kernels or os.environ.get("SPECMOE_KERNELS") or ("triton" if dev.type == "cuda" else "torch")
        if self.kernels not in ("triton", "torch"):
            raise ValueError(f"kernels must be triton or torch, not {self.kernels!r}")
        self.fused = None
        if self.kernels == "triton":
            from specmoe.runtime.specdec.fused import FusedLlama
            self.fused = FusedLlama(model, max_len, precision)
        self.n_buf = torch.zeros((), dtype=torch.long, device=dev)
        # adjacency [vocab + 1, k] on the device; the last row is scratch (update_adjacency_)
        self.adj = torch.zeros((model.cfg.vocab_size + 1, adj_k), dtype=torch.long, device=dev)
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.seed_from_prompt = seed_from_prompt
        self._trees: dict = {}
        self.buffer: MistakeBuffer | None = None

    # ------------------------------------------------------------------ tree plumbing
    def _tree(self, tree: TreeTemplate) -> dict:
        """Static buffers and runners for one tree shape (built on first use)."""
        key = tree.parents
        if key in self._trees:
            return self._trees[key]
        dev, m = self.model.device, self.model
        depth, anc = tree_tables(list(tree.parents), dev)
        tok = torch.zeros(tree.size, dtype=torch.long, device=dev)
        st = {"tok": tok, "depth": depth, "anc": anc}
        split = self.draft.n_layers if self.draft is not None else None
        st["forward"] = self._forward_fn(tree, depth, anc)

        @torch.no_grad()
        def verify():
            if split is None:
                return st["forward"](tok), None
            h_mid = st["forward"](tok, layers=range(split))
            return st["forward"](tok, layers=range(split, m.cfg.n_layers), h=h_mid), h_mid

        # built on first use: recycling steps run `_recycling_graph` and never capture this one
        st["verify_fn"], st["verify"] = verify, None
        if self.draft is not None:  # RSD's draft-level runners
            st["levels"] = [np.nonzero(tree.depth == d)[0] for d in range(int(tree.depth.max()) + 1)]
            st["draft"] = [self._draft_runner(tok, torch.as_tensor(lv, device=dev), depth, anc)
                           for lv in st["levels"][:-1]]
        self._trees[key] = st
        return st

    def _forward_fn(self, tree: TreeTemplate, depth, anc):
        """forward(tok [T], layers=None, h=None) for a tree: logits [T, V] after the last layer,
        else the residual stream. Triton kernels or plain torch, per `self.kernels`."""
        m = self.model
        if self.fused is not None:
            f = self.fused
            depth32, path = f.tables(list(tree.parents))

            def forward(tok, layers=None, h=None):
                x = f.hidden(tok, self.n_buf, depth32, path, self.cache, layers, h)
                return f.logits(x) if layers is None or layers.stop == m.cfg.n_layers else x
            return forward
        all_idx = torch.arange(tree.size, device=m.device)

        def forward(tok, layers=None, h=None):
            pos, slots, mask = step_inputs(self.n_buf, all_idx, depth, anc, self.max_len)
            x = m.hidden(tok, pos, slots, mask, self.cache, layers, h)
            return m.logits(x) if layers is None or layers.stop == m.cfg.n_layers else x
        return forward

    def verify_runner(self, st: dict) -> _Runner:
        """The verify forward of a `_tree` entry: (logits [T, V], mid hidden or None)."""
        if st["verify"] is None:
            st["verify"] = _Runner(st["verify_fn"], self.use_graphs)
        return st["verify"]

    def _draft_runner(self, tok, idx, depth, anc):
        lo, hi = int(idx[0]), int(idx[-1]) + 1  # levels are contiguous (BFS numbering)
        m, dr = self.model, self.draft

        @torch.no_grad()
        def run():
            pos, slots, mask = step_inputs(self.n_buf, idx, depth, anc, self.max_len)
            return dr.head(m.hidden(tok[lo:hi], pos, slots, mask, self.cache, layers=range(dr.n_layers)))
        return _Runner(run, self.use_graphs)

    @torch.no_grad()
    def prefill(self, prompt: list[int], seed_adjacency: bool = False) -> int:
        """Put prompt[:-1] in the cache; return the root token prompt[-1].

        seed_adjacency: Token Recycling's update applied to the prefill forward too: the row of
        each prompt token gets the target's top-k at that position (its last occurrence wins),
        so continuations the prompt suggests (names, phrases a summary or answer repeats) are
        drafts from the first step. Costs the LM head and a top-k over the prompt's rows."""
        if len(prompt) + 1 > self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_len={self.max_len}")
        self.cache.n = 0
        body = prompt[:-1]
        if body:
            dev, p = self.model.device, len(body)
            self.n_buf.fill_(0)
            tok = torch.tensor(body, device=dev)
            if self.fused is not None:   # padded to a bucket: one graph per bucket on CUDA
                st = self._prefill_runner(min(-(-p // PREFILL_BUCKET) * PREFILL_BUCKET, self.max_len), seed_adjacency)
                st["tok"][:p] = tok
                st["tok"][p:] = 0
                topk = st["run"]()
            else:
                idx = torch.arange(p, device=dev)
                anc = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
                pos, slots, mask = step_inputs(self.n_buf, idx, idx, anc, self.max_len)
                h = self.model.hidden(tok, pos, slots, mask, self.cache)
                topk = self.model.logits(h).topk(self.adj.shape[1], -1).indices if seed_adjacency else None
            if seed_adjacency:
                last = {t: i for i, t in enumerate(body)}          # a token's last position wins
                rows = torch.tensor(list(last), device=dev)
                self.adj[rows] = topk[torch.tensor(list(last.values()), device=dev)]
            self.cache.n = p
        return prompt[-1]

    def _prefill_runner(self, b: int, seed_adjacency: bool) -> dict:
        """Prefill of b tokens as a chain (node t at depth t, path[t, d] = d) on the fused path;
        with seed_adjacency its run() returns the top-k ids [b, k] of each row's logits.

        A prompt of p <= b tokens runs padded to b: rows are independent (batch invariance) and
        row t attends to slots 0..t only, so slots 0..p-1 get the bits an unpadded prefill gives;
        slots p..b-1 get padding, which the first step overwrites before anything reads them."""
        key = ("prefill", b, seed_adjacency)
        if key not in self._trees:
            dev, k = self.model.device, self.adj.shape[1]
            tok = torch.zeros(b, dtype=torch.long, device=dev)
            path = torch.arange(b, dtype=torch.int32, device=dev)[None, :].expand(b, b)
            if seed_adjacency:
                from specmoe.kernels import tree_step

            @torch.no_grad()
            def run():
                h = self.fused.hidden(tok, self.n_buf, path[0], path, self.cache)
                return tree_step.topk_ids(self.fused.logits(h), k) if seed_adjacency else None
            self._trees[key] = {"tok": tok, "run": _Runner(run, self.use_graphs)}
        return self._trees[key]

    def _step_setup(self, tree: TreeTemplate) -> dict:
        if self.cache.n + tree.size > self.max_len:
            raise ValueError("KV cache full: raise max_len")
        self.n_buf.fill_(self.cache.n)
        return self._tree(tree)

    def _choose(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """The target's token after every node [T]: argmax, or a sample (Gumbel-max) at T > 0."""
        if temperature == 0:
            return logits.argmax(-1)
        u = torch.rand(logits.shape, device=logits.device, generator=self.gen).clamp_(1e-20, 1.0)
        return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)

    # ------------------------------------------------------------------ decode loops
    @torch.no_grad()
    def generate(self, prompt: list[int], method: str, max_new: int, temperature: float = 0.0,
                 tree: TreeTemplate | None = None, eos: int | None = None) -> GenResult:
        """Decode up to max_new tokens after `prompt` with method ar | recycling | rsd."""
        if method == "ar":
            tree = chain(0)
        if tree is None:
            raise ValueError(f"method {method} needs a tree")
        if method == "rsd" and self.draft is None:
            raise ValueError("rsd needs a draft model")
        sync = torch.cuda.synchronize if self.model.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        root = self.prefill(prompt, seed_adjacency=method == "recycling" and self.seed_from_prompt)
        sync()
        prefill_s = time.perf_counter() - t0
        if method in ("ar", "recycling"):
            out, steps = self._recycling_loop(root, tree, temperature, max_new, eos)
        else:
            out, steps = [], []
            while len(out) < max_new and (eos is None or eos not in out):
                accepted, emitted = self._rsd_step(root, tree, temperature)
                steps.append({"parents": list(tree.parents), "accepted": accepted})
                out.extend(emitted)
                root = emitted[-1]
        sync()
        wall = time.perf_counter() - t0
        if eos is not None and eos in out:
            out = out[: out.index(eos) + 1]
        return GenResult(out[:max_new], steps, wall, prefill_s)

    def _recycling_graph(self, tree: TreeTemplate, temperature: float) -> dict:
        """One Token Recycling (or, for a 1-node tree, autoregressive) step as one runner.

        Device state carried between steps: tok[0] (the root), n_buf (committed length), adj.
        The runner fills the draft, verifies it, updates the adjacency, walks the tree, compacts
        the KV cache and sets the next root; it returns [L, path [D+1], tokens on path [D+1],
        bonus] for the host's one small read per step.
        """
        key = ("rec", tree.parents, temperature > 0)
        if key in self._trees:
            return self._trees[key]
        if tree.max_branch > self.adj.shape[1]:  # a child's rank indexes an adjacency row
            raise ValueError(f"tree has {tree.max_branch} children at a node, adjacency keeps {self.adj.shape[1]}")
        st, dev, m = self._tree(tree), self.model.device, self.model
        dt = recycling.DeviceTree(tree, dev)
        tok = st["tok"]
        noise = torch.rand((tree.size, m.cfg.vocab_size), device=dev) if temperature > 0 else None
        temp = torch.tensor(max(temperature, 1e-6), device=dev)
        one, zero = torch.ones((), dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev)

        kernels = self.fused is not None and tree.size > 1   # Triton bookkeeping (tree_step.py)
        if kernels:
            from specmoe.kernels import tree_step

        @torch.no_grad()
        def step():
            if kernels:
                tree_step.fill_draft(tok, self.adj, dt.parent, dt.rank, dt.depth, dt.max_depth)
            else:
                recycling.fill_draft_(tok, self.adj, dt)
            logits = st["forward"](tok)                                               # [T, V]
            if noise is None:
                choice = logits.argmax(-1)
            else:                                   # Gumbel-max: one exact sample per node
                choice = (logits / temp - torch.log(-torch.log(noise.clamp(1e-20, 1.0)))).argmax(-1)
            if kernels:
                out = tree_step.accept_(tok, choice, tree_step.topk_ids(logits, self.adj.shape[1]), self.adj,
                                        self.cache.k, self.cache.v, self.n_buf, dt.parent, dt.max_depth)
                self.n_buf.add_(out[0])
                tok[0] = out[-1]
                return out
            if tree.size > 1:  # (AR keeps no adjacency on the baseline's clock)
                recycling.update_adjacency_(self.adj, tok, logits.topk(self.adj.shape[1], -1).indices, dt)
                n_acc, path, bonus = recycling.walk_tree_(tok, choice, dt)
                self.cache.compact_device_(path, self.n_buf)
            else:                                   # one token: nothing to walk or compact
                n_acc, path, bonus = one, zero, choice[0]
            out = torch.cat([n_acc[None], path, tok[path], bonus[None]])
            self.n_buf.add_(n_acc)
            tok[0] = bonus
            return out

        st_rec = {"run": _Runner(step, self.use_graphs, snapshot=lambda: self._snapshot(tok)), "noise": noise,
                  "tok": tok, "depth": dt.max_depth}
        self._trees[key] = st_rec
        return st_rec

    def _snapshot(self, tok):
        """Device state a step's warm-up and capture calls change; returns its restore()."""
        state = [self.n_buf, self.adj, self.cache.k, self.cache.v, tok]
        saved = [t.clone() for t in state]

        def restore():
            for t, s in zip(state, saved):
                t.copy_(s)
        return restore

    @torch.no_grad()
    def step_time_s(self, tree: TreeTemplate, temperature: float = 0.0, reps: int = 30) -> float:
        """Time per recycling step with `tree` (AR for a 1-node tree), as the decode loop runs it:
        `reps` steps launched back to back, each restarted from the same committed length (so
        the cache never fills) and its result copied to the host; state restored afterwards.
        Returns the median over 5 such runs of (wall time / reps)."""
        st = self._recycling_graph(tree, temperature)
        restore = self._snapshot(st["tok"])
        n0 = self.cache.n
        if n0 + tree.size > self.max_len:
            raise ValueError("KV cache full: raise max_len")
        ring = _HostRing(2 * st["depth"] + 4, self.model.device)
        times = []
        for _ in range(5):
            ring.sync()
            t0 = time.perf_counter()
            for i in range(reps):
                self.n_buf.fill_(n0)
                ring.put(i, self._launch(st))
            ring.get(reps - 1)
            times.append((time.perf_counter() - t0) / reps)
        restore()
        return float(np.median(times))

    def _launch(self, st: dict) -> torch.Tensor:
        """Enqueue one recycling step (fresh Gumbel noise when sampling); returns its result tensor."""
        if st["noise"] is not None:
            st["noise"].uniform_(generator=self.gen)
        return st["run"]()

    def _recycling_loop(self, root: int, tree: TreeTemplate, temperature: float, max_new: int,
                        eos: int | None):
        """Steps until max_new tokens or eos. On CUDA step i + 1 is launched before the host reads
        step i's result (it needs none of it: the root and the committed length stay on the
        device), so the GPU never waits for the host; the price is at most one extra step per
        sequence, launched when step i turns out to be the last (its result is dropped; its
        adjacency update stays, as any verified step's does)."""
        st = self._recycling_graph(tree, temperature)
        tok, d = st["tok"], st["depth"]
        self.n_buf.fill_(self.cache.n)
        tok[0] = root
        ring = _HostRing(2 * d + 4, self.model.device)      # [L, path, its tokens, bonus]
        out, steps, parents = [], [], list(tree.parents)     # one list shared by the trace's steps
        if max_new <= 0:
            return out, steps
        if self.cache.n + tree.size > self.max_len:
            raise ValueError("KV cache full: raise max_len")
        ring.put(0, self._launch(st))
        i = 0
        while True:
            # step i + 1 may start before step i is read if it surely fits in the cache (step i
            # commits at most d + 1 tokens) and step i surely leaves tokens to generate
            ahead = (ring.ahead and len(out) + 1 < max_new
                     and self.cache.n + d + 1 + tree.size <= self.max_len)
            if ahead:
                ring.put(i + 1, self._launch(st))
            res = ring.get(i)
            n_acc = res[0]
            steps.append({"parents": parents, "accepted": res[2: 1 + n_acc]})
            out.extend(res[d + 3: d + 2 + n_acc] + [res[-1]])
            self.cache.n += n_acc
            if len(out) >= max_new or (eos is not None and eos in out[-n_acc:]):
                return out, steps
            if not ahead:
                if self.cache.n + tree.size > self.max_len:
                    raise ValueError("KV cache full: raise max_len")
                ring.put(i + 1, self._launch(st))
            i += 1

    def _rsd_step(self, root: int, tree: TreeTemplate, temperature: float):
        """Draft level by level (Gumbel-top-k, or top-k when greedy), verify once, then RRS."""
        st = self._step_setup(tree)
        tok, levels = st["tok"], st["levels"]
        tok[0] = root
        q_int = []                                                  # draft probs per internal level
        for d, run in enumerate(st["draft"]):
            b = len(tree.children[int(levels[d][0])])
            z = run()                                               # [n_d, V]
            if temperature == 0:
                kids = z.topk(b, -1).indices
            else:
                logq = torch.log_softmax(z / temperature, -1)
                q_int.append(logq.exp())
                kids = rsd.gumbel_topk(logq, b, self.gen)
            tok[int(levels[d + 1][0]): int(levels[d + 1][-1]) + 1] = kids.reshape(-1)
        logits, h_mid = self.verify_runner(st)()
        n_int = sum(len(lv) for lv in levels[:-1])
        if temperature == 0:
            choice = logits.argmax(-1)
        else:
            p = torch.softmax(logits / temperature, -1)
            outs = []
            for d, q in enumerate(q_int):                           # constant branching per level
                lv, nxt = levels[d], levels[d + 1]
                kids = tok[int(nxt[0]): int(nxt[-1]) + 1].view(len(lv), -1)
                probs = rsd.rrs_outcome_probs(p[int(lv[0]): int(lv[-1]) + 1], q, kids)
                outs.append(rsd.sample_outcomes(probs, self.gen))
            choice = torch.cat(outs + [self._choose(logits[n_int:], temperature)])
        host = torch.cat([tok, choice]).cpu().numpy()               # the step's one sync
        tokens, choice = host[: tree.size], host[tree.size:]
        if temperature == 0:
            accepted, bonus = recycling.walk_tree(tree, tokens, choice)
        else:
            accepted, bonus = _walk_outcomes(tree, tokens, choice, n_int)
        if self.buffer is not None:
            self._buffer_mistakes(tree, tokens, accepted, bonus, logits, h_mid)
        self.cache.compact([0] + accepted)
        return accepted, [int(tokens[a]) for a in accepted] + [bonus]

    def _buffer_mistakes(self, tree, tokens, accepted, bonus, logits, h_mid):
        """Nodes on the path whose rank-0 draft child is not the token the target emitted there."""
        path = [0] + accepted
        emitted = [int(tokens[a]) for a in accepted] + [bonus]
        bad = [u for u, t in zip(path, emitted)
               if tree.children[u] and int(tokens[tree.children[u][0]]) != t]
        if bad:
            idx = torch.tensor(bad, device=logits.device)
            self.buffer.add(h_mid[idx], logits[idx])


def _walk_outcomes(tree: TreeTemplate, tokens: np.ndarray, outcome: np.ndarray, n_int: int):
    """RRS outcomes -> (accepted nodes, bonus). Internal node u: outcome < b accepts child
    `outcome`, else bonus token outcome - b; a leaf's entry is its bonus token."""
    cur, accepted = 0, []
    while True:
        o = int(outcome[cur])
        if cur >= n_int:
            return accepted, o
        b = len(tree.children[cur])
        if o >= b:
            return accepted, o - b
        cur = tree.children[cur][o]
        accepted.append(cur)
