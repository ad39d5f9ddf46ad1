"""Serving loop against closed forms, with a stub cost model of constant step times."""
import numpy as np
import pytest

from specmoe.simulator.serving import ServingConfig, StepCosts, kv_capacity_tokens, serve
from specmoe.specs import load_cluster, load_model
from specmoe.traces.requests import RequestTrace, load_requests, synthetic

PREFILL, DECODE = 0.05, 0.01


class Fixed:
    """Stand-in for StepCosts: constant prefill and decode iteration times."""

    def __init__(self, per_token_decode=0.0):
        self.model, self.cluster, self.ep = load_model("mixtral-8x7b"), load_cluster("dgx-h100"), 8
        self.per_token = per_token_decode
        self.notes, self._memo = [], {}

    def decode_s(self, tokens, ctx):
        return DECODE + self.per_token * tokens

    def prefill_s(self, tokens, ctx):
        return PREFILL


def trace(arrivals, inp, out):
    return RequestTrace(np.array(arrivals, float), np.array(inp), np.array(out), "test")


def test_single_request_closed_form():
    r = serve(trace([0.0], [100], [11]), Fixed())
    row = r.requests.iloc[0]
    assert row.ttft_s == pytest.approx(PREFILL)
    assert row.e2e_s == pytest.approx(PREFILL + 10 * DECODE)
    assert row.tpot_s == pytest.approx(DECODE)


def test_arrival_during_decode_waits_for_the_iteration_then_prefills():
    # request 1 arrives at 0.075 s, in the 3rd decode iteration of request 0 (0.07-0.08)
    r = serve(trace([0.0, 0.075], [10, 10], [11, 3]), Fixed())
    ttft = r.requests.ttft_s.to_numpy()
    assert ttft[1] == pytest.approx(0.08 + PREFILL - 0.075)
    # request 0: 3 decode iterations, the prefill, then 7 more
    assert r.requests.e2e_s[0] == pytest.approx(PREFILL + 10 * DECODE + PREFILL)


def test_max_batch_one_serialises_requests():
    r = serve(trace([0, 0, 0], [5, 5, 5], [4, 4, 4]), Fixed(), ServingConfig(max_batch_size=1))
    one = PREFILL + 3 * DECODE
    np.testing.assert_allclose(r.requests.finish_s, [one, 2 * one, 3 * one])
    assert r.summary["throughput_requests_per_s"] == pytest.approx(3 / (3 * one))


def test_kv_capacity_blocks_admission():
    cfg = ServingConfig(kv_capacity_tokens=25)
    r = serve(trace([0, 0], [10, 10], [5, 5]), Fixed(), cfg)
    assert r.requests.finish_s[1] == pytest.approx(2 * (PREFILL + 4 * DECODE))
    r = serve(trace([0], [30], [5]), Fixed(), cfg)
    assert r.summary["rejected"] == 1 and r.summary["served"] == 0


def test_underloaded_throughput_equals_arrivals_and_littles_law():
    """Poisson arrivals far below capacity: every request is served, the completion rate is the
    arrival rate, and (Little's law) the time-averaged number of requests past their first token
    equals the arrival rate times the mean time from first token to finish."""
    tr = synthetic(rate_rps=4.0, duration_s=600, mean_input=200, mean_output=50, seed=1)
    r = serve(tr, Fixed(per_token_decode=1e-4))
    s, df = r.summary, r.requests
    assert s["served"] == len(tr)
    assert s["throughput_requests_per_s"] == pytest.approx(len(tr) / tr.arrival_s[-1], rel=0.02)
    decode_time = (df.finish_s - (df.arrival_s + df.ttft_s)).to_numpy()
    lam = len(tr) / s["makespan_s"]
    assert s["mean_running"] == pytest.approx(lam * decode_time.mean(), rel=1e-4)
    assert 1 <= s["mean_decode_batch"] < 10


def test_kv_capacity_formula():
    m, c = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    cap = kv_capacity_tokens(m, c, 8, 0.1)
    free = 8 * 79.6 * 2**30 * 0.9 - m.total_params() * 2
    assert cap == int(free // (32 * 2 * 8 * 128 * 2))


def test_memoised_costs_track_direct_simulation():
    """The interpolated decode cost is within 5% of simulate_step between grid points."""
    from specmoe.simulator.routing import synthetic_topk
    from specmoe.simulator.step import simulate_step
    m, c = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    costs = StepCosts(m, c, 8, None, seed=0)
    for tokens, ctx in ((40, 700), (100, 3000)):
        direct = simulate_step(m, c, ep=8, topk_ids=synthetic_topk(m, tokens, 99), context_len=ctx)
        assert costs.decode_s(tokens, ctx) == pytest.approx(direct.step_time_us * 1e-6, rel=0.05)


def test_real_trace_smoke_is_deterministic():
    tr = load_requests("azure-conv").window(20)
    m, c = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    a = serve(tr, StepCosts(m, c, 8, None, seed=0)).summary
    b = serve(tr, StepCosts(m, c, 8, None, seed=0)).summary
    assert a == b and a["served"] == len(tr)
