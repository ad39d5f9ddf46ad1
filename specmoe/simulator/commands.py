"""`specmoe simulate` and `specmoe serve-sim`: parse inputs, call the simulator, print or write."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specmoe.errors import InputError
from specmoe.fileio import write_atomic as _write_atomic

DEFAULT_ROUTING = Path(__file__).resolve().parents[1] / "traces" / "data" / "esft_intent_sample.npz"


def _routing_trace(path):
    from specmoe.traces.routing import load
    if path is None:
        return load(DEFAULT_ROUTING) if DEFAULT_ROUTING.exists() else None
    return load(path)


def _plan_placement(path) -> tuple[np.ndarray, int, str | None]:
    """phy2log, ep and attention mode from a plan JSON. The planner owns the format; this CLI
    edge imports its loader lazily so the simulator package itself never imports the planner."""
    from specmoe.planner import plan as planfile
    p = planfile.load(path)
    return np.asarray(p.phy2log), int(p.ep), p.attention


def simulate_cmd(args) -> int:
    from specmoe.simulator.calibration import load_calibration
    from specmoe.simulator.routing import routing_for
    from specmoe.simulator.step import simulate_step
    from specmoe.specs import load_cluster, load_model

    model, cluster = load_model(args.model), load_cluster(args.cluster)
    phy2log, ep, attention = None, args.ep, args.attention
    if args.plan:
        phy2log, plan_ep, plan_attention = _plan_placement(args.plan)
        if args.ep is not None and args.ep != plan_ep:
            raise InputError("--ep", "", f"{args.ep} differs from the plan's parallel.ep={plan_ep}")
        ep = plan_ep
        attention = attention or plan_attention
        from specmoe.simulator.dispatch import check_phy2log
        check_phy2log(phy2log, model, ep, args.plan)
    ep = ep or cluster.num_gpus
    if not 1 <= ep <= cluster.num_gpus:
        raise InputError("--ep", "", f"must be in [1, {cluster.num_gpus}] for cluster {cluster.name}")
    cal = load_calibration(args.calibration) if args.calibration else None
    trace = _routing_trace(args.routing)
    ids, note = routing_for(model, trace, args.batch * ep, args.seed)
    res = simulate_step(model, cluster, ep=ep, topk_ids=ids, phy2log=phy2log, phase=args.phase,
                        context_len=args.context, attention=attention or "dp",
                        network=args.network, calibration=cal, overlap=args.overlap, seed=args.seed)
    res.notes.insert(0, f"{note}; {args.batch} tokens per GPU x {ep} GPUs, seed {args.seed}")
    if args.plot:
        from specmoe.simulator.plot import plot_timeline
        _write_atomic(args.plot, lambda tmp: plot_timeline(res, tmp, f"{model.name} on {cluster.name}, EP={ep}"))
    if args.json:
        print(json.dumps(res.to_json(), sort_keys=True, indent=1))
        return 0
    _print_step(res, model, cluster, ep)
    if args.plot:
        print(f"timeline written to {args.plot}")
    return 0


def _print_step(res, model, cluster, ep) -> None:
    df = res.layers.copy()
    cols = ["attention_us", "gate_us", "dispatch_us", "experts_us", "combine_us", "total_us"]
    print(f"{model.name} on {cluster.name}, EP={ep}: one step")
    print(df.to_string(index=False, float_format=lambda x: f"{x:9.1f}", columns=["layer", "kind"] + cols))
    print(f"step time            {res.step_time_us:12.1f} us (LM head {res.lm_head_us:.1f} us)")
    print(f"mean MoE layer       {res.moe_layer_us:12.1f} us")
    for k, v in sorted(res.bytes_by_link_class.items()):
        print(f"bytes over {k:<10}{v / 1e6:12.3f} MB")
    print(f"remote dispatch copies per token per layer {res.remote_copies_per_token_layer:.4f}")
    for n in res.notes:
        print(f"note: {n}")


def serve_sim_cmd(args) -> int:
    from specmoe.simulator.serving import ServingConfig, StepCosts, serve
    from specmoe.specs import load_cluster, load_model
    from specmoe.traces.requests import load_requests

    model, cluster = load_model(args.model), load_cluster(args.cluster)
    ep = args.ep or cluster.num_gpus
    if not 1 <= ep <= cluster.num_gpus:
        raise InputError("--ep", "", f"must be in [1, {cluster.num_gpus}] for cluster {cluster.name}")
    trace = load_requests(args.requests)
    if args.duration:
        trace = trace.window(args.duration)
        if not len(trace):
            raise InputError("--duration", "", f"no request of {args.requests} arrives within {args.duration:g} s")
    costs = StepCosts(model, cluster, ep, _routing_trace(args.routing), args.seed,
                      network=args.network)
    cfg = ServingConfig(max_batch_size=args.max_batch, slo_ttft_ms=args.slo_ttft_ms,
                        slo_tpot_ms=args.slo_tpot_ms)
    decoder, label = None, "plain decoding"
    if getattr(args, "spec", None):
        from specmoe.simulator.specdec import decoder_from_args
        decoder, label, spec_note = decoder_from_args(args, model, cluster, ep)
    res = serve(trace, costs, cfg, decoder=decoder, seed=args.seed)
    if decoder is not None:
        res.notes.append(spec_note)
    if args.output:
        _write_atomic(args.output, lambda tmp: res.requests.to_csv(tmp, index=False))
    if args.json:
        print(json.dumps(res.to_json(), sort_keys=True, indent=1))
        return 0
    s = res.summary
    print(f"{model.name} on {cluster.name}, EP={ep}, {label}: {s['served']} of {s['requests']} "
          f"requests from {args.requests}, makespan {s['makespan_s']:.1f} s")
    print(f"throughput   {s['throughput_tokens_per_s']:.1f} output tokens/s, "
          f"{s['throughput_requests_per_s']:.3f} requests/s, mean decode batch {s['mean_decode_batch']:.1f}")
    for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
        q = s[name]
        print(f"{name:<8} p50 {q['p50']:10.1f}  p90 {q['p90']:10.1f}  p99 {q['p99']:10.1f}")
    print(f"SLO attainment (TTFT <= {args.slo_ttft_ms:g} ms and TPOT <= {args.slo_tpot_ms:g} ms): "
          f"{100 * s['slo_attainment']:.1f}%")
    for n in res.notes:
        print(f"note: {n}")
    return 0
