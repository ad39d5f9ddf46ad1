"""Speculative decoding on SmolLM2-135M: AR vs Token Recycling (static and planned tree) vs RSD,
greedy and T=1, plus online draft distillation (OSD). Prints a table, writes JSON.

    PYTHONPATH=. python benchmarks/bench_specdec.py --device cuda --out benchmarks/results

Writes OUT/specdec_<dev>.json ([{method, tree, temperature, tokens_per_s, mean_accepted,
speedup_vs_ar, max_new}, ...]), OUT/specdec_<dev>_details.json (everything else measured: greedy
match against AR, OSD before/after, timings, per-category tables), OUT/tree_planned_<dev>.json
and tree_planned_<dev>_T1.json (the planner's hardware-aware trees for greedy and T=1) and
OUT/traces_<dev>.tar.gz (one acceptance trace per run, COMMON.md format); <dev> is h200, h100 or
the device, + _bf16 for --precision bf16.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import torch

from specmoe.cli import _nonneg_int, _positive_int
from specmoe.runtime.specdec.commands import (
    MODEL_NAME,
    load_setup,
    run_method,
    summarize,
)
from specmoe.runtime.specdec.draft import EarlyExitDraft, MistakeBuffer, distill
from specmoe.runtime.specdec.engine import Decoder
from specmoe.runtime.specdec.prompts import encode_chat, load_prompts
from specmoe.runtime.specdec.traces import acceptance_trace, write_json
from specmoe.runtime.specdec.tree import (
    TreeTemplate,
    chain,
    constant_branching,
    default_template,
)


def plan_tree(trace: dict, budget: int, max_depth: int) -> TreeTemplate:
    """The planner's Sequoia tree for `budget` drafts, fitted to a recycling acceptance trace."""
    from specmoe.planner.acceptance import fit_depth_positional, trace_from_dict
    from specmoe.planner.sequoia import sequoia_tree
    acc = fit_depth_positional(trace_from_dict(trace, "warmup"), max_depth, 8)
    return TreeTemplate(tuple(sequoia_tree(acc, budget, max_depth).parents), "planner-sequoia")


# draft budgets the sizing times; 15, 31, 47, ... make the verify a whole number of 16-row tiles
# (the projections' row tile), where one more draft starts a tile that holds a single row
BUDGETS = (8, 15, 16, 24, 31, 32, 47, 48, 63, 64, 79, 80, 95, 96, 127)
HISTORY_POINTS = (12, 40, 120)   # warm-up prompts after which the adjacency is snapshotted


def size_tree(dec: Decoder, trace: dict, static: TreeTemplate, log, reps: int, temperature: float = 0.0) -> dict:
    """Hardware-aware budget (Sequoia, arXiv:2402.12374, § 4): for each budget n the planner's
    Sequoia tree, its expected accepted length E(n) under the acceptance fitted to the warm-up
    trace (taken at `temperature`), and its measured step time c(n) at that temperature on this
    device; the best n maximises E(n) / c(n)."""
    from specmoe.planner.acceptance import fit_depth_positional, trace_from_dict
    from specmoe.planner.sequoia import sequoia_tree
    from specmoe.planner.trees import Tree, expected_accepted
    acc = fit_depth_positional(trace_from_dict(trace, "warmup"), 8, 8)
    c_ar = dec.step_time_s(chain(0), temperature, reps=reps)
    table = [{"tree": "ar", "budget": 0, "expected_accepted": 1.0, "step_ms": round(c_ar * 1e3, 4),
              "predicted_speedup": 1.0}]
    best, best_rate = None, 0.0
    for name, tree in [("static-template", static)] + [(f"sequoia-{b}", None) for b in BUDGETS]:
        if tree is None:
            tree = TreeTemplate(tuple(sequoia_tree(acc, int(name.split("-")[1]), 8).parents), name)
        e = expected_accepted(Tree(tree.parents), acc)
        c = dec.step_time_s(tree, temperature, reps=reps)
        table.append({"tree": name, "budget": tree.size - 1, "expected_accepted": round(e, 4),
                      "step_ms": round(c * 1e3, 4), "predicted_speedup": round(e / c * c_ar, 4)})
        log(f"sizing T={temperature:g}", table[-1])
        if name != "static-template" and e / c > best_rate:
            best, best_rate = TreeTemplate(tree.parents, "planner-hw"), e / c
    return {"table": table, "best": best}


def random_smollm2(device: str):
    """SmolLM2-135M's shapes with random weights (no GGUF needed)."""
    import numpy as np

    from specmoe.runtime.specdec.gguf_load import LlamaConfig
    from specmoe.runtime.specdec.model import Llama
    cfg = LlamaConfig(49152, 576, 30, 9, 3, 1536, 1e5, 64, 1e-5, 1, 2, True)
    rng = np.random.default_rng(0)
    kv = 192
    shapes = {"attn_norm": (576,), "ffn_norm": (576,), "wq": (576, 576), "wk": (kv, 576), "wv": (kv, 576),
              "wo": (576, 576), "w1": (1536, 576), "w3": (1536, 576), "w2": (576, 1536)}
    w = {"embed": rng.normal(0, 0.02, (49152, 576)).astype(np.float32), "norm": np.ones(576, np.float32)}
    for i in range(30):
        for k, sh in shapes.items():
            w[f"{i}.{k}"] = (np.ones(sh) if len(sh) == 1 else rng.normal(0, 0.02, sh)).astype(np.float32)
    return Llama(cfg, w, device=device)


def probe(device: str, kernels: str | None, precision: str = "tf32") -> None:
    """Forward times (CUDA graph replay) of SmolLM2-135M's shapes with random weights, no GGUF;
    and greedy recycling vs AR on them (random weights: near-tied logits everywhere, so any
    rounding difference between a verify row and the AR step shows up as a different token)."""
    m = random_smollm2(device)
    dec = Decoder(m, 800, kernels=kernels, precision=precision)
    g = torch.Generator().manual_seed(0)
    same, total = 0, 0
    for i in range(4):
        prompt = torch.randint(0, 49152, (int(torch.randint(20, 300, (1,), generator=g)),), generator=g).tolist()
        ar = dec.generate(prompt, "ar", 96)
        for tree in (default_template(), constant_branching([4, 2, 1])):
            rec = dec.generate(prompt, "recycling", 96, tree=tree)
            same += rec.tokens == ar.tokens
            total += 1
            print(f"probe kernels={dec.kernels} prompt {i} tree={tree.name}: identical to AR {rec.tokens == ar.tokens}, "
                  f"first difference at {next((j for j, (x, y) in enumerate(zip(rec.tokens, ar.tokens)) if x != y), None)}, "
                  f"mean accepted {rec.mean_accepted:.3f}", flush=True)
    print(f"probe kernels={dec.kernels} greedy recycling identical to AR: {same}/{total}", flush=True)
    for graphs in ((True, False) if device == "cuda" else (False,)):
        dec = Decoder(m, 800, draft=EarlyExitDraft(m, 10), use_graphs=graphs, kernels=kernels, precision=precision)
        dec.cache.n = 500
        for tree in (constant_branching([]), constant_branching([4, 2, 1]), default_template()):
            st = dec._step_setup(tree)
            fns = {"verify": dec.verify_runner(st), "draft_level": st["draft"][0] if st["draft"] else None}
            for name, fn in fns.items():
                if fn is None:
                    continue
                for _ in range(3):
                    fn()
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                sync()
                t0 = time.perf_counter()
                for _ in range(50):
                    fn()
                sync()
                print(f"probe graphs={graphs} tree={tree.name} T={tree.size} {name}: "
                      f"{(time.perf_counter() - t0) / 50 * 1e3:.3f} ms", flush=True)
        rec = Decoder(m, 800, use_graphs=graphs, kernels=kernels, precision=precision)
        for n in (100, 300, 500):         # the step grows with the context: attention walks it
            rec.cache.n = n
            for tree in (chain(0), constant_branching([4, 2, 1]), default_template()):
                ms = rec.step_time_s(tree, reps=50) * 1e3
                print(f"probe graphs={graphs} context={n} tree={tree.name} T={tree.size} recycling step: {ms:.3f} ms",
                      flush=True)
    if device == "cuda":  # kernels per step: what a graph replay pays ~2-3 us each for
        from torch.profiler import ProfilerActivity, profile
        rec = Decoder(m, 800, use_graphs=False, kernels=kernels, precision=precision)
        rec.cache.n = 500
        for tree in (chain(0), default_template()):
            rec.step_time_s(tree, reps=2)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                rec.step_time_s(tree, reps=1)
            n = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
            print(f"probe kernels per recycling step T={tree.size}: {n}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", default="../shared/data/prompts/spec-bench/question.jsonl")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--num-prompts", type=_positive_int, default=24)
    ap.add_argument("--max-new", type=_positive_int, default=1024,
                    help="new tokens per evaluated prompt (Spec-Bench's max_new_tokens: 1024)")
    ap.add_argument("--warm-max-new", type=_positive_int, default=128, help="new tokens per warm-up prompt")
    ap.add_argument("--warm-t1-prompts", type=_nonneg_int, default=60,
                    help="warm-up prompts decoded once more at T=1, for the T=1 acceptance the "
                         "planner's T=1 trees are fitted to (0: fit them to the greedy trace)")
    ap.add_argument("--rsd-max-new", type=_positive_int, default=128,
                    help="new tokens per prompt for RSD (its torch-path draft is slow), against an AR "
                         "run of the same length")
    ap.add_argument("--warm-prompts", type=_positive_int, default=440,
                    help="Spec-Bench prompts (never evaluated) served before the timed runs: Token "
                         "Recycling's adjacency matrix is the serving history they leave")
    ap.add_argument("--osd-stream", type=_positive_int, default=32)
    ap.add_argument("--osd-new", type=_positive_int, default=64)
    ap.add_argument("--osd-heldout", type=_positive_int, default=12)
    ap.add_argument("--draft-layers", type=_positive_int, default=10)
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls (AR and speculative alike)")
    ap.add_argument("--sizing-reps", type=_positive_int, default=30, help="step timings per tree for the sizing")
    ap.add_argument("--probe", action="store_true", help="only time forwards with random weights")
    ap.add_argument("--summarize", metavar="DETAILS_JSON",
                    help="only print the per-category / per-length tables of a saved details file")
    ap.add_argument("--only-osd", action="store_true", help="only the online-distillation experiment")
    ap.add_argument("--threads", type=_nonneg_int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--kernels", choices=["triton", "torch"], default=None,
                    help="verify/AR forward: batch-invariant Triton kernels (CUDA default) or plain torch")
    ap.add_argument("--precision", choices=["tf32", "bf16"], default="tf32",
                    help="triton projections: fp32 weights + TF32 dots, or bf16 weights (results tagged _bf16)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.probe:
        return probe(a.device, a.kernels, a.precision)
    if a.summarize:
        return print_groups(group_summaries(read_details(a.summarize)))
    t_start = time.time()
    out = Path(a.out)
    # fp32 everywhere by default, so greedy speculative output can be compared with AR token for
    # token; --tf32 lets the (fp32) GEMMs use TF32 tensor cores, for AR and speculative alike
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    recs = load_prompts(a.prompts)
    # evaluation: num_prompts questions evenly spaced over the whole file, so every Spec-Bench
    # category is in it (sessions 1-4 took the first 24 of every 12th: no math_reasoning, no rag)
    eval_idx = set(range(0, len(recs), max(1, len(recs) // a.num_prompts))[: a.num_prompts])
    evals = [recs[i] for i in sorted(eval_idx)]
    pool = [r for i, r in enumerate(recs) if i not in eval_idx]              # never evaluated
    warm = [pool[j * len(pool) // a.warm_prompts] for j in range(min(a.warm_prompts, len(pool)))]
    setup = load_setup(a.prompts, 1, a.device)
    enc = lambda rs: [encode_chat(setup.tok, r["text"])[-512:] for r in rs]
    setup.prompts = enc(evals)
    dev_name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    kernels = a.kernels or ("triton" if a.device == "cuda" else "torch")
    card = next((c for c in ("h200", "h100") if c in dev_name.lower()), a.device)
    tag = (card + ("_torch" if kernels == "torch" and a.device == "cuda" else "")
           + ("_tf32" if a.tf32 else "") + ("_bf16" if a.precision == "bf16" else ""))
    details = {"device": dev_name, "kernels": kernels, "precision": a.precision, "tf32": a.tf32,
               "num_prompts": len(evals), "eval_categories": dict(Counter(r["category"] for r in evals)),
               "categories": [r["category"] for r in evals], "max_new": a.max_new,
               "warm_max_new": a.warm_max_new, "rsd_max_new": a.rsd_max_new, "warm_prompts": len(warm),
               "command": " ".join(sys.argv)}
    rows, traces = [], {}
    log = lambda *x: print(f"[{time.time() - t_start:6.1f}s]", *x, flush=True)

    def record(method, tree_name, temp, res, base, max_new=a.max_new):
        s = summarize(res)
        row = {"method": method, "tree": tree_name, "temperature": temp,
               "tokens_per_s": round(s["tokens_per_s"], 2), "mean_accepted": round(s["mean_accepted"], 3),
               "speedup_vs_ar": round(s["tokens_per_s"] / base, 3) if base else 1.0, "max_new": max_new}
        rows.append(row)
        dec_s = sum(r.wall_s - r.prefill_s for r in res)             # decoding only, prefill excluded
        details.setdefault("decode_only", {})[f"{method}/{tree_name}/T{temp:g}/{max_new}"] = {
            "tokens_per_s": round(s["tokens"] / dec_s, 2), "prefill_s": round(sum(r.prefill_s for r in res), 4),
            "steps": s["steps"], "wall_s": round(s["wall_s"], 4),
            # [prompt tokens, new tokens, steps, decode seconds] per prompt
            "per_prompt": [[len(p), len(r.tokens), len(r.steps), round(r.wall_s - r.prefill_s, 5)]
                           for p, r in zip(setup.prompts, res)]}
        suffix = "" if max_new == a.max_new else f"_{max_new}"
        traces[f"acceptance_{method}_{tree_name}_T{temp:g}{suffix}.json"] = acceptance_trace(
            MODEL_NAME, method if method != "rsd+osd" else "rsd", temp, [st for r in res for st in r.steps])
        write_json(rows, out / f"specdec_{tag}.json")
        log(row)
        return s

    if a.only_osd:
        details["osd"] = osd_experiment(setup, recs, a, log, t_start)
        write_json(details["osd"], out / f"osd_{tag}.json")
        return
    static = default_template()
    wprompts = enc(warm)
    max_len = max(len(q) for q in setup.prompts + wprompts) + a.max_new + 128 + 8
    dec = Decoder(setup.model, max_len, kernels=kernels, precision=a.precision)  # one decoder (graphs, adjacency) for AR and recycling
    # warm-up on prompts disjoint from the evaluation set: adjacency, graph capture, the trace
    wres, adj_at = [], {}
    for i, p in enumerate(wprompts):
        if i in HISTORY_POINTS:         # shorter histories, to measure what the history buys
            adj_at[i] = dec.adj.clone()
        wres.append(dec.generate(p, "recycling", a.warm_max_new, 0.0, static, setup.eos))
    wtraces = {0.0: acceptance_trace(MODEL_NAME, "recycling", 0.0, [st for r in wres for st in r.steps])}
    # the planner's trees are fitted per temperature: sampling at T=1 accepts far less than greedy,
    # which moves the best tree shape and budget
    if a.warm_t1_prompts:
        res1 = [dec.generate(p, "recycling", a.warm_max_new, 1.0, static, setup.eos)
                for p in wprompts[: a.warm_t1_prompts]]
        wtraces[1.0] = acceptance_trace(MODEL_NAME, "recycling", 1.0, [st for r in res1 for st in r.steps])
    for temp, t in wtraces.items():
        traces[f"acceptance_recycling_warmup_T{temp:g}.json"] = t
    log("warm-up done")
    # step timings at a typical context: the median evaluation prompt, halfway through its decode
    dec.prefill(sorted(setup.prompts, key=len)[len(setup.prompts) // 2])
    dec.cache.n += a.max_new // 2
    trees_at = {}                       # temperature -> [template, planner-sequoia, planner-hw]
    for temp in (0.0, 1.0):
        wtrace = wtraces.get(temp, wtraces[0.0])
        planned80 = plan_tree(wtrace, static.size - 1, 8)
        sizing = size_tree(dec, wtrace, static, log, a.sizing_reps, temp)
        sfx = "" if temp == 0 else f"_T{temp:g}"
        details["tree_sizing" + sfx] = sizing["table"]
        hw = sizing["best"]
        write_json({"version": 1, "method": hw.name, "temperature": temp, "parents": list(hw.parents),
                    "sizing": sizing["table"]}, out / f"tree_planned_{tag}{sfx}.json")
        trees_at[temp] = [static, planned80] + ([hw] if hw.parents != planned80.parents else [])
    for temp, trees in trees_at.items():  # capture every graph the timed runs use, outside their clocks
        for tree in [chain(0)] + trees:
            dec.generate(wprompts[0], "recycling", 8, temp, tree, setup.eos)
    adj0 = dec.adj.clone()              # each timed recycling run starts from the same adjacency
    for q in setup.prompts:             # the prefill graphs (one per 64-token bucket) the timed runs use
        dec.prefill(q)
        dec.prefill(q, seed_adjacency=True)
    dec.adj.copy_(adj0)                 # (seeding from the evaluation prompts is undone)
    if adj_at:                          # the template's greedy acceptance after shorter histories
        details["history_effect"] = {"warm_prompts": sorted(adj_at) + [len(warm)],
                                     "mean_accepted_static_template_T0": []}
        for i in sorted(adj_at):
            dec.adj.copy_(adj_at[i])
            res = run_method(setup, "recycling", static, a.max_new, 0.0, decoder=dec)
            details["history_effect"]["mean_accepted_static_template_T0"].append(round(summarize(res)["mean_accepted"], 3))

    # what seeding the adjacency from each prompt's prefill buys: the template, greedy, without it
    dec.seed_from_prompt = False
    dec.adj.copy_(adj0)
    s = summarize(run_method(setup, "recycling", static, a.max_new, 0.0, decoder=dec))
    details["prompt_seeding_off_static_template_T0"] = {"mean_accepted": round(s["mean_accepted"], 3),
                                                        "tokens_per_s": round(s["tokens_per_s"], 2)}
    log("without prompt seeding:", details["prompt_seeding_off_static_template_T0"])
    dec.seed_from_prompt = True

    for temp in (0.0, 1.0):
        ar_res = run_method(setup, "ar", None, a.max_new, temp, decoder=dec)
        base = record("ar", "ar", temp, ar_res, None)["tokens_per_s"]
        for tree in trees_at[temp]:
            dec.adj.copy_(adj0)
            res = run_method(setup, "recycling", tree, a.max_new, temp, decoder=dec)
            record("recycling", tree.name, temp, res, base)
            if temp == 0:
                same = sum(r.tokens == q.tokens for r, q in zip(res, ar_res))
                details[f"greedy_identical_to_ar_{tree.name}"] = f"{same}/{len(res)}"
                if tree is static and "history_effect" in details:
                    details["history_effect"]["mean_accepted_static_template_T0"].append(
                        round(summarize(res)["mean_accepted"], 3))
                log("greedy identical to AR:", same, "/", len(res))
        if time.time() - t_start < a.budget_s * 0.6:
            rsd_tree = constant_branching([4, 2, 1])
            rsd_dec = Decoder(setup.model, max_len, draft=EarlyExitDraft(setup.model, a.draft_layers),
                              kernels=kernels, precision=a.precision)
            rsd_dec.generate(wprompts[0], "rsd", 8, temp, rsd_tree, setup.eos)   # graph capture
            for q in setup.prompts:
                rsd_dec.prefill(q)
            rsd_base = base
            if a.rsd_max_new != a.max_new:
                rsd_base = record("ar", "ar", temp, run_method(setup, "ar", None, a.rsd_max_new, temp, decoder=dec),
                                  None, a.rsd_max_new)["tokens_per_s"]
            res = run_method(setup, "rsd", rsd_tree, a.rsd_max_new, temp, decoder=rsd_dec)
            record("rsd", rsd_tree.name, temp, res, rsd_base, a.rsd_max_new)
        details[f"ar_tokens_per_s_T{temp:g}"] = base

    if time.time() - t_start < a.budget_s * 0.7:
        details["osd"] = osd_experiment(setup, recs, a, log, t_start)
        write_json(details["osd"], out / f"osd_{tag}.json")
    details.update(group_summaries(details))
    write_json(details, out / f"specdec_{tag}_details.json")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, t in sorted(traces.items()):
            data = json.dumps(t, sort_keys=True, separators=(",", ":")).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (out / f"traces_{tag}.tar.gz").write_bytes(buf.getvalue())
    print_table(rows)
    print_groups(group_summaries(details))


def osd_experiment(setup, recs, a, log, t_start) -> dict:
    """Serve a stream of math_reasoning prompts with RSD (greedy), buffer the draft's mistakes,
    distill every 4 prompts; mean accepted length on held-out math_reasoning prompts before/after."""
    mr = [r for r in recs if r["category"] == "math_reasoning"]
    stream = [encode_chat(setup.tok, r["text"])[-512:] for r in mr[: a.osd_stream]]
    held = [encode_chat(setup.tok, r["text"])[-512:] for r in mr[-a.osd_heldout:]]
    tree = constant_branching([4, 2, 1])
    m = setup.model
    draft = EarlyExitDraft(m, a.draft_layers, rank=128)
    max_len = max(len(p) for p in stream + held) + a.osd_new + tree.size + 8
    dec = Decoder(m, max_len, draft=draft)

    def heldout():
        res = [dec.generate(p, "rsd", a.osd_new, 0.0, tree, setup.eos) for p in held]
        return summarize(res)["mean_accepted"]

    before = heldout()
    dec.buffer = MistakeBuffer(4096, m.cfg.dim, m.cfg.vocab_size, m.device)
    curve = []
    for i, p in enumerate(stream, 1):
        r = dec.generate(p, "rsd", a.osd_new, 0.0, tree, setup.eos)
        curve.append(round(r.mean_accepted, 3))
        if i % 4 == 0:
            loss = distill(draft, dec.buffer, steps=40, batch=128, lr=2e-3, seed=i)
            log(f"osd: {i} prompts served, buffer {dec.buffer.count}, loss {loss:.3f}")
        if time.time() - t_start > a.budget_s:
            break
    dec.buffer = None
    after = heldout()
    log(f"osd: held-out mean accepted {before:.3f} -> {after:.3f}")
    return {"command": " ".join(sys.argv), "draft_layers": a.draft_layers, "tree": tree.name, "stream_prompts": len(curve),
            "heldout_prompts": len(held), "category": "math_reasoning",
            "heldout_mean_accepted_before": round(before, 4), "heldout_mean_accepted_after": round(after, 4),
            "stream_mean_accepted": curve}


def read_details(path: str) -> dict:
    """A saved details file with what `group_summaries` needs, or exit 2 with one line."""
    def fail(why):
        print(f"error: {path}: {why}", file=sys.stderr)
        sys.exit(2)
    try:
        d = json.loads(Path(path).read_text())
        ok = isinstance(d, dict) and "categories" in d and f"ar/ar/T0/{d['max_new']}" in d["decode_only"] and all(
            len(pp) == 4 for v in d["decode_only"].values() for pp in v["per_prompt"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        fail(f"not a readable details file ({e})")
    if not ok:
        fail("categories, the greedy AR run or decode_only.*.per_prompt [prompt, new, steps, seconds] "
             "missing (details files before session 6 lack them)")
    return d


def by_group(details: dict, labels: list[str], temps: tuple[str, ...] = ("T0", "T1")) -> dict:
    """Decode-only tokens/s, mean accepted and speedup over AR per group of evaluated prompts
    (labels[i]: prompt i's group), for every run of the evaluated length at temperatures `temps`:
    {"recycling/<tree>/T0": {group: {...}}}. Tokens/s pool the group's tokens and seconds."""
    runs = {k.rsplit("/", 1)[0]: v["per_prompt"] for k, v in details["decode_only"].items()
            if k.endswith(f"/{details['max_new']}")}

    def rate(per_prompt, g):
        sel = [pp for pp, lab in zip(per_prompt, labels) if lab == g]
        toks, steps, secs = (sum(pp[i] for pp in sel) for i in (1, 2, 3))
        return toks / secs, toks / max(steps, 1), len(sel)

    out = {}
    for key, per_prompt in sorted(runs.items()):
        method, _, temp = key.split("/")
        ar = runs.get(f"ar/ar/{temp}")
        if method == "ar" or ar is None or temp not in temps:
            continue
        out[key] = {}
        for g in sorted(set(labels)):
            (tps, acc, n), (ar_tps, _, _) = rate(per_prompt, g), rate(ar, g)
            out[key][g] = {"prompts": n, "tokens_per_s": round(tps, 1), "mean_accepted": round(acc, 3),
                           "speedup_vs_ar": round(tps / ar_tps, 3)}
    return out


def group_summaries(details: dict) -> dict:
    """By Spec-Bench category, and (greedy: every method gives AR's tokens) by whether AR's answer
    ran to max_new (long greedy answers of small models tend to repeat themselves, which the
    adjacency matrix predicts far ahead) or ended with EOS before it."""
    ar = details["decode_only"][f"ar/ar/T0/{details['max_new']}"]["per_prompt"]
    capped = ["ran to max_new" if pp[1] >= details["max_new"] else "ended before max_new" for pp in ar]
    return {"decode_by_category": by_group(details, details["categories"]),
            "decode_by_length_T0": by_group(details, capped, ("T0",))}


def print_groups(summaries: dict) -> None:
    for name, table in summaries.items():
        print(f"\n{name}: decode-only speedup over AR (mean accepted, prompts)")
        for run, groups in table.items():
            cells = "  ".join(f"{g} {v['speedup_vs_ar']:.2f} ({v['mean_accepted']:.2f}, {v['prompts']})"
                              for g, v in groups.items())
            print(f"  {run:32s} {cells}")


def print_table(rows):
    print(f"{'method':10s} {'tree':22s} {'T':>4s} {'new':>5s} {'tok/s':>9s} {'accepted':>9s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['method']:10s} {r['tree']:22s} {r['temperature']:4g} {r['max_new']:5d} {r['tokens_per_s']:9.1f} "
              f"{r['mean_accepted']:9.3f} {r['speedup_vs_ar']:8.2f}")


if __name__ == "__main__":
    from specmoe.errors import InputError
    try:
        main()
    except InputError as e:          # a malformed prompts file or GGUF: one line, exit 2
        print(f"bench_specdec: error: {e}", file=sys.stderr)
        sys.exit(2)
