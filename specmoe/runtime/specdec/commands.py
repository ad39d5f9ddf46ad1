"""`specmoe generate`: decode Spec-Bench prompts with ar | recycling | rsd and report speed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"


@dataclass
class Setup:
    model: object
    tok: object
    prompts: list[list[int]]
    eos: int


def load_setup(prompts_path, num_prompts, device, categories=None, max_prompt_tokens=512) -> Setup:
    import torch

    from specmoe.errors import InputError
    from specmoe.runtime.specdec.gguf_load import read_gguf, smollm2_gguf_path
    from specmoe.runtime.specdec.model import Llama
    from specmoe.runtime.specdec.prompts import (
        encode_chat,
        load_prompts,
        load_tokenizer,
    )

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "device", "cuda requested but no GPU is visible")
    recs = load_prompts(prompts_path, num_prompts, categories)
    path = smollm2_gguf_path()
    cfg, weights = read_gguf(path)
    tok = load_tokenizer(path)
    ids = [encode_chat(tok, r["text"])[-max_prompt_tokens:] for r in recs]
    return Setup(Llama(cfg, weights, device=device), tok, ids, cfg.eos_id)


def run_method(setup: Setup, method: str, tree, max_new: int, temperature: float, decoder):
    """Decode every prompt of `setup` with one Decoder (so Token Recycling's adjacency carries
    over from prompt to prompt, as in the paper); returns one GenResult per prompt."""
    return [decoder.generate(p, method, max_new, temperature, tree, setup.eos) for p in setup.prompts]


def warmed_decoder(setup: Setup, warm: list[list[int]], methods: list[str], tree, max_new: int,
                   temperature: float, seed: int = 0, draft_layers: int = 10, kernels: str | None = None,
                   precision: str = "tf32"):
    """One Decoder for every method of a comparison, ready for timing: it decodes the `warm`
    prompts first (untimed; Token Recycling's adjacency then holds that serving history), and
    on a GPU it captures every graph the timed runs of `setup.prompts` use (each method's step,
    each prompt's prefill bucket) with the adjacency restored afterwards."""
    from specmoe.runtime.specdec.draft import EarlyExitDraft
    from specmoe.runtime.specdec.engine import Decoder

    max_len = max(512, *(len(p) for p in setup.prompts + warm)) + max_new + max(tree.size, 81) + 8
    draft = EarlyExitDraft(setup.model, draft_layers) if "rsd" in methods else None
    dec = Decoder(setup.model, max_len, draft=draft, seed=seed, kernels=kernels, precision=precision)
    for p in warm:
        dec.generate(p, methods[-1], max_new, temperature, tree, setup.eos)
    if dec.use_graphs:
        adj = dec.adj.clone()
        for m in methods:
            for p in setup.prompts:
                dec.generate(p, m, 2, temperature, tree, setup.eos)
        dec.adj.copy_(adj)
    return dec


def summarize(res) -> dict:
    toks = sum(len(r.tokens) for r in res)
    wall = sum(r.wall_s for r in res)
    steps = sum(len(r.steps) for r in res)
    return {"tokens": toks, "wall_s": wall, "tokens_per_s": toks / wall if wall else 0.0,
            "mean_accepted": toks / max(steps, 1), "steps": steps}


def generate_cmd(args) -> int:
    from specmoe.errors import InputError
    from specmoe.runtime.specdec.traces import acceptance_trace, write_json
    from specmoe.runtime.specdec.tree import default_template, load_tree

    if args.temperature < 0:
        raise InputError("--temperature", "temperature", "must be >= 0")
    kernels = args.kernels or os.environ.get("SPECMOE_KERNELS")
    if kernels not in (None, "triton", "torch"):
        raise InputError("SPECMOE_KERNELS", "kernels", f"must be triton or torch, not {kernels!r}")
    if kernels == "triton" and args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError("--kernels", "kernels", "triton needs --device cuda (or TRITON_INTERPRET=1, slow)")
    if args.precision != "tf32" and (kernels == "torch" or (kernels is None and args.device == "cpu")):
        raise InputError("--precision", "precision", f"{args.precision} is a precision of the triton kernels; "
                         "the torch forward runs fp32")
    tree = load_tree(args.tree) if args.tree else default_template()
    if args.method == "rsd" and not args.tree:
        from specmoe.runtime.specdec.tree import constant_branching
        tree = constant_branching([4, 2, 1])
    if args.method == "recycling" and tree.max_branch > 8:
        raise InputError(args.tree, "parents", f"a node has {tree.max_branch} children; at most 8")
    setup = load_setup(args.prompts, args.num_prompts + args.warm_prompts, args.device)
    if args.method == "rsd" and not 0 < args.draft_layers < setup.model.cfg.n_layers:
        raise InputError("--draft-layers", "draft_layers",
                         f"must be in 1..{setup.model.cfg.n_layers - 1}, got {args.draft_layers}")
    warm, setup.prompts = setup.prompts[args.num_prompts:], setup.prompts[: args.num_prompts]
    methods = ["ar"] + ([args.method] if args.method != "ar" else [])
    dec = warmed_decoder(setup, warm, methods, tree, args.max_new_tokens, args.temperature, args.seed,
                         args.draft_layers, kernels, args.precision)
    rows, traces = [], {}
    base = None
    for m in methods:
        res = run_method(setup, m, tree if m != "ar" else None, args.max_new_tokens, args.temperature, dec)
        s = summarize(res)
        base = base or s["tokens_per_s"]
        name = "ar" if m == "ar" else (Path(args.tree).name if args.tree else tree.name)
        rows.append({"method": m, "tree": name, "temperature": args.temperature,
                     "tokens_per_s": round(s["tokens_per_s"], 2), "mean_accepted": round(s["mean_accepted"], 3),
                     "speedup_vs_ar": round(s["tokens_per_s"] / base, 3)})
        traces[m] = acceptance_trace(MODEL_NAME, m, args.temperature, [st for r in res for st in r.steps])
        print(f"{m:10s} tree={name:18s} T={args.temperature:g}  {s['tokens_per_s']:8.1f} tok/s  "
              f"mean accepted {s['mean_accepted']:.3f}  speedup {s['tokens_per_s'] / base:.2f}x")
    for m, t in traces.items():
        write_json(t, Path(args.trace_dir) / f"acceptance_{m}_T{args.temperature:g}.json", compact=True)
    if args.results:
        write_json(rows, args.results)
    return 0
