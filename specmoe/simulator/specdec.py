"""Speculative decoding in the simulator: a loop of draft + verify steps over the MoE layers.

Each decode step of a batch of sequences:
  1. draft phase: one draft-model forward per tree level (`DraftCost`; zero for Token Recycling);
  2. verify phase: one forward through the MoE layers with the 1 + n tree tokens of every
     sequence (`simulate_step`; each sequence's routing is a window of consecutive tokens of one
     sequence of the routing trace, so expert activation grows with the tree as it does in
     practice; see specmoe.planner.tree_cost);
  3. each sequence advances by the accepted path plus the bonus token, drawn from the
     acceptance model with a seeded Generator (`sample_accepted`).

`SpecDecoder` plugs into the serving loop (`specmoe.simulator.serving.serve(decoder=...)`): the
time of one decode iteration for a batch and how many tokens each request advances.

Online speculative decoding (OSD; Liu et al. 2023, arXiv:2310.07177): the draft is distilled
on served traffic, so its acceptance rate rises with distilled tokens along a saturating curve
alpha(t) = a_inf - (a_inf - a0) * exp(-t / tau), fitted with scipy's curve_fit. Distillation
costs 6 * draft_params FLOPs per token (forward + backward), paid from the GPUs' idle compute in
each step; what does not fit is charged as extra step time. `online_specdec` reports when it pays.
"""
from __future__ import annotations

import bisect

from dataclasses import dataclass

import numpy as np
import pandas as pd

from specmoe.errors import InputError
from specmoe.planner.acceptance import Acceptance, geometric
from specmoe.planner.tree_cost import DraftCost, VerifyCost, ceil_div, simulate_step
from specmoe.planner.trees import (Tree, accepted_length_pmf, expected_accepted, load_tree,
                                   sample_accepted)
from specmoe.specs import ClusterSpec, ModelSpec, load_gpu
from specmoe.traces.routing import RoutingTrace


@dataclass
class SpecDecResult:
    """steps: one row per decode step (step, draft_us, verify_us, step_us, tokens, accepted_mean)."""

    steps: pd.DataFrame
    batch: int
    ar_step_us: float

    @property
    def tokens_per_s(self) -> float:
        return 1e6 * self.steps["tokens"].sum() / self.steps["step_us"].sum()

    @property
    def mean_accepted(self) -> float:
        return float(self.steps["tokens"].sum() / (self.batch * len(self.steps)))

    def to_json(self) -> dict:
        ar_tps = 1e6 * self.batch / self.ar_step_us
        return {"steps": len(self.steps), "batch": self.batch,
                "mean_accepted_per_step": round(self.mean_accepted, 6),
                "mean_step_time_us": round(float(self.steps["step_us"].mean()), 3),
                "mean_verify_us": round(float(self.steps["verify_us"].mean()), 3),
                "mean_draft_us": round(float(self.steps["draft_us"].mean()), 3),
                "tokens_per_s": round(self.tokens_per_s, 3),
                "ar_step_time_us": round(self.ar_step_us, 3),
                "speedup_vs_autoregressive": round(self.tokens_per_s / ar_tps, 6)}


def simulate_specdec(model: ModelSpec, cluster: ClusterSpec, routing: RoutingTrace, tree: Tree,
                     acc: Acceptance, *, batch: int = 1, steps: int = 16, draft: DraftCost | None = None,
                     ep: int | None = None, context_len: int = 1024, network: str = "analytic",
                     seed: int = 0) -> SpecDecResult:
    """`steps` decode steps of `batch` sequences verifying `tree`; each step's routing is fresh."""
    if steps < 1 or batch < 1:
        raise InputError("--steps", "", "steps and batch must be >= 1")
    draft = DraftCost("free") if tree.method == "recycling" else (draft or DraftCost.eagle_head(model))
    cost = VerifyCost(model, cluster, routing, batch=batch, ep=ep, context_len=context_len,
                      network=network, seed=seed)
    rng = np.random.default_rng(seed)
    draft_us = draft.tree_us(cluster, tree.level_widths(), ceil_div(batch, cost.ep)) if tree.budget else 0.0
    rows = []
    for s in range(steps):
        ids, t2g = cost.topk_ids(tree.budget, rng)
        verify = simulate_step(model, cluster, ep=cost.ep, topk_ids=ids, token2gpu=t2g, phase="decode",
                               context_len=context_len + s, network=network, seed=seed).step_time_us
        tokens = sample_accepted(tree, acc, rng, batch)
        rows.append((s, draft_us, verify, draft_us + verify, int(tokens.sum()), float(tokens.mean())))
    frame = pd.DataFrame(rows, columns=["step", "draft_us", "verify_us", "step_us", "tokens", "accepted_mean"])
    return SpecDecResult(frame, batch, cost.step_us(0))


SPEC_BATCH_GRID = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
SPEC_CONTEXT_GRID = (64, 256, 1024, 4096, 16384, 65536)


class SpecDecoder:
    """Speculative decoding for the serving loop (specmoe.simulator.serving's `Decoder`).

    `iteration(costs, batch, mean_context, rng) -> (seconds, advance [batch])`: one draft +
    verify iteration for `batch` running requests, and the tokens each advances (accepted path
    + bonus, drawn from the acceptance model with the loop's Generator). The verify step of
    batch x (1 + n) tokens, routed in per-sequence windows, is simulated on a (batch, context)
    grid and interpolated bilinearly, as the plain decode costs are; `costs` is not used.
    """

    fixed_advance = None

    def __init__(self, model, cluster, routing, tree: Tree, acc: Acceptance, *, ep=None,
                 draft: DraftCost | None = None, network="analytic", seed=0):
        self.model, self.cluster, self.routing = model, cluster, routing
        self.tree, self.acc, self.ep, self.network, self.seed = tree, acc, ep, network, seed
        self.draft = DraftCost("free") if tree.method == "recycling" else (draft or DraftCost.eagle_head(model))
        self._memo: dict = {}
        self._pmf = accepted_length_pmf(tree, acc)  # reused every iteration

    def point_us(self, batch: int, context: int) -> float:
        """Draft + verify time of one iteration at a grid point."""
        key = (batch, context)
        if key not in self._memo:
            cost = VerifyCost(self.model, self.cluster, self.routing, batch=batch, ep=self.ep,
                              context_len=context, network=self.network, samples=1, seed=self.seed)
            d = (self.draft.tree_us(self.cluster, self.tree.level_widths(), ceil_div(batch, cost.ep))
                 if self.tree.budget else 0.0)
            self._memo[key] = cost.step_us(self.tree.budget) + d
        return self._memo[key]

    def iteration_us(self, batch: int, mean_context: float) -> float:
        (b0, b1, wb), (c0, c1, wc) = _bracket(SPEC_BATCH_GRID, batch), _bracket(SPEC_CONTEXT_GRID, mean_context)
        f = self.point_us
        lo = (1 - wc) * f(b0, c0) + wc * f(b0, c1)
        hi = (1 - wc) * f(b1, c0) + wc * f(b1, c1)
        return (1 - wb) * lo + wb * hi

    def iteration(self, costs, batch: int, mean_context: float, rng: np.random.Generator):
        return (1e-6 * self.iteration_us(batch, mean_context),
                sample_accepted(self.tree, self.acc, rng, batch, self._pmf))

    @property
    def expected_advance(self) -> float:
        return expected_accepted(self.tree, self.acc)


def _bracket(grid, x: float):
    """Neighbouring grid points and the weight of the upper one (extrapolating past the end).
    Plain Python: the serving loop calls this once per iteration."""
    i = min(max(bisect.bisect_left(grid, x), 1), len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    w = (x - lo) / (hi - lo)
    return lo, hi, max(w, 0.0) if x > grid[-1] else min(max(w, 0.0), 1.0)


def load_spec(path, acceptance: str | None = None) -> tuple[Tree, Acceptance]:
    """`--spec TREE.json` (as `specmoe tree` writes it): the tree and its acceptance model.
    `acceptance` (an ACC argument) overrides the one recorded in the file."""
    from specmoe.planner.acceptance import chain, parse_acceptance, positional
    import json
    tree = load_tree(path)
    if acceptance:
        return tree, parse_acceptance(acceptance)
    with open(path) as f:
        rec = json.load(f).get("acceptance")
    if not isinstance(rec, dict) or not ("p" in rec or "alpha" in rec):
        raise InputError(path, "acceptance", "no acceptance model recorded; pass --acceptance")
    if "alpha" in rec:
        return tree, chain(rec["alpha"], str(path))
    p = np.asarray(rec["p"], dtype=np.float64)
    return tree, (positional(p, str(path)) if p.ndim == 1 else Acceptance(p, "depth-positional", str(path)))


# ---------------------------------------------------------------- online speculative decoding


def osd_curve(t, a0, a_inf, tau):
    """Acceptance after t distilled tokens: a_inf - (a_inf - a0) * exp(-t / tau)."""
    return a_inf - (a_inf - a0) * np.exp(-np.asarray(t, dtype=np.float64) / tau)


def fit_osd_curve(tokens, acceptance) -> tuple[float, float, float]:
    """Fit (a0, a_inf, tau) of `osd_curve` to measured (distilled tokens, acceptance) points."""
    from scipy.optimize import curve_fit
    t, a = np.asarray(tokens, np.float64), np.asarray(acceptance, np.float64)
    if t.shape != a.shape or len(t) < 3:
        raise InputError("osd points", "", "need at least 3 (tokens, acceptance) pairs")
    p0 = (a[0], a.max(), max(t.max() / 3, 1.0))
    (a0, a_inf, tau), _ = curve_fit(osd_curve, t, a, p0=p0,
                                    bounds=([0, 0, 1e-9], [1, 1, np.inf]), maxfev=20000)
    return float(a0), float(a_inf), float(tau)


@dataclass
class OSDReport:
    """frame: one row per step (served tokens, alpha, osd_time_s, static_time_s, extra_us)."""

    frame: pd.DataFrame
    pays: bool
    break_even_tokens: int | None

    def to_json(self) -> dict:
        last = self.frame.iloc[-1]
        return {"pays": self.pays, "break_even_tokens": self.break_even_tokens,
                "final_alpha": round(float(last["alpha"]), 6),
                "served_tokens": int(last["served_tokens"]),
                "osd_time_s": round(float(last["osd_time_s"]), 6),
                "static_time_s": round(float(last["static_time_s"]), 6),
                "distill_extra_time_s": round(float(self.frame["extra_us"].sum() * 1e-6), 6)}


def online_specdec(model: ModelSpec, cluster: ClusterSpec, tree: Tree, verify_us: float,
                   curve: tuple[float, float, float], *, batch: int, steps: int,
                   draft: DraftCost, ep: int | None = None, distill_frac: float = 1.0,
                   train_efficiency: float = 0.4, max_rank: int = 8) -> OSDReport:
    """Serve `steps` steps with a draft distilled online, against the same draft kept static.

    The draft's candidates follow `geometric(alpha)` (p_k = alpha (1 - alpha)^(k-1)), with
    alpha(t) from `curve` as t distilled tokens accumulate (static: alpha = a0 throughout).
    Served tokens x distill_frac are distilled. Idle compute of a step = GPUs x peak x step time
    minus the verify's FLOPs (2 x active params per token); distillation FLOPs at
    `train_efficiency` of peak beyond that idle budget are added to the step's time.
    """
    gpu = load_gpu(cluster.gpu)
    ep = ep or cluster.num_gpus
    a0, a_inf, tau = curve
    draft_us = draft.tree_us(cluster, tree.level_widths(), ceil_div(batch, ep)) if tree.budget else 0.0
    step_s = (verify_us + draft_us) * 1e-6
    used = 2.0 * model.active_params() * batch * (tree.budget + 1)
    idle = max(0.0, ep * gpu.bf16_flops * step_s - used)
    static_per_step = batch * expected_accepted(tree, geometric(a0, max_rank))
    distilled = served = 0.0
    t_osd = t_static = 0.0
    rows, even = [], None
    for s in range(steps):
        alpha = float(osd_curve(distilled, a0, a_inf, tau))
        tokens = batch * expected_accepted(tree, geometric(alpha, max_rank))
        need = 6.0 * draft.params * tokens * distill_frac / train_efficiency
        extra_s = max(0.0, need - idle) / (ep * gpu.bf16_flops)
        served += tokens
        distilled += tokens * distill_frac
        t_osd += step_s + extra_s
        t_static = served / static_per_step * step_s  # time the static draft needs for as many tokens
        if even is None and t_osd < t_static * (1 - 1e-9):  # strictly faster, not float noise
            even = int(served)
        rows.append((s, served, alpha, t_osd, t_static, extra_s * 1e6))
    frame = pd.DataFrame(rows, columns=["step", "served_tokens", "alpha", "osd_time_s",
                                        "static_time_s", "extra_us"])
    return OSDReport(frame, bool(t_osd < t_static * (1 - 1e-9)), even)


# ---------------------------------------------------------------- CLI glue (`--spec TREE.json`)
# `specmoe simulate --spec` and `specmoe serve-sim --spec` land here; without --spec they run the
# simulator's own commands unchanged.


def _spec_routing(args, model):
    """The routing for spec windows: --routing (or the embedded sample) when it fits the model,
    else synthetic routing (a given --routing that does not fit is an error)."""
    from specmoe.simulator.commands import _routing_trace
    from specmoe.simulator.routing import fits
    from specmoe.planner.tree_cost import synthetic_routing
    trace = _routing_trace(args.routing)
    if trace is not None and fits(trace, model):
        return trace, f"routing windows from {trace.meta.get('source', args.routing)}"
    if args.routing:
        raise InputError(args.routing, "meta", f"routing does not fit {model.name} "
                         "(expert count, top-k and MoE layers must match)")
    return synthetic_routing(model, seed=args.seed), "synthetic routing (tree_cost.synthetic_routing)"


def simulate_cmd(args) -> int:
    """`specmoe simulate ... --spec TREE.json`: the speculative decode loop. --batch is sequences
    per GPU (each verifies 1 + budget tokens)."""
    import json
    from specmoe.simulator import commands
    if not args.spec:
        return commands.simulate_cmd(args)
    from specmoe.specs import load_cluster, load_model
    model, cluster = load_model(args.model), load_cluster(args.cluster)
    ep = args.ep or cluster.num_gpus
    if args.plan or args.phase != "decode":
        raise InputError("--spec", "", "speculative decoding is simulated for decode steps without --plan")
    routing, note = _spec_routing(args, model)
    tree, acc = load_spec(args.spec, args.spec_acceptance)
    res = simulate_specdec(model, cluster, routing, tree, acc, batch=args.batch * ep,
                           steps=args.spec_steps, ep=ep, context_len=args.context,
                           network=args.network, seed=args.seed)
    out = {"spec": {"tree": str(args.spec), "method": tree.method, "budget": tree.budget,
                    "expected_accepted_per_step": round(expected_accepted(tree, acc), 6), **res.to_json()},
           "step_time_us": round(float(res.steps["step_us"].mean()), 3), "notes": [note]}
    if args.json:
        print(json.dumps(out, sort_keys=True, indent=1))
        return 0
    sp = out["spec"]
    print(f"{model.name} on {cluster.name}, EP={ep}: speculative decoding with {args.spec} "
          f"({tree.method}, {tree.budget} draft tokens), {args.batch * ep} sequences, {sp['steps']} steps")
    print(f"mean step time       {sp['mean_step_time_us']:12.1f} us (verify {sp['mean_verify_us']:.1f} + draft {sp['mean_draft_us']:.1f})")
    print(f"accepted per step    {sp['mean_accepted_per_step']:12.3f} (model: {sp['expected_accepted_per_step']:.3f})")
    print(f"tokens/s             {sp['tokens_per_s']:12.1f} ({sp['speedup_vs_autoregressive']:.3f}x autoregressive, "
          f"whose step is {sp['ar_step_time_us']:.1f} us)")
    print(f"note: {note}")
    return 0


def decoder_from_args(args, model, cluster, ep: int) -> tuple[SpecDecoder, str, str]:
    """`serve-sim ... --spec TREE.json`: the decoder, a header label, and a note."""
    routing, note = _spec_routing(args, model)
    tree, acc = load_spec(args.spec, args.spec_acceptance)
    decoder = SpecDecoder(model, cluster, routing, tree, acc, ep=ep, network=args.network, seed=args.seed)
    label = f"speculative ({tree.method}, budget {tree.budget})"
    return decoder, label, (f"speculative decoding: {args.spec} ({tree.method}, {tree.budget} draft "
                            f"tokens, E[accepted] {expected_accepted(tree, acc):.3f}); {note}")
