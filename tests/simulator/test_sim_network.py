"""Closed forms for the analytic tier; hand-computed cases for the flow tier."""
import numpy as np
import pytest
import scipy.sparse as sp

from specmoe.simulator.flow import FlowNetwork, max_min_rates
from specmoe.simulator.network import (all_gather, all_reduce, all_to_all, analytic_cost,
                                       analytic_times, p2p, reduce_scatter)
from specmoe.simulator.topology import build_topology
from specmoe.specs import load_cluster

from tests.simulator._util import switch_cluster

B, LAT, ALPHA = 100e9, 1e-6, 10e-6  # switch_cluster() defaults


def both(topo, transfer):
    a = analytic_cost(topo, transfer).time_s
    f = FlowNetwork(topo).time(transfer.traffic, transfer.steps)
    return a, f


def test_p2p_alpha_beta():
    topo = build_topology(switch_cluster())
    a, f = both(topo, p2p(4, 0, 1, 1e6))
    expect = ALPHA + 2 * LAT + 1e6 / B
    assert a == pytest.approx(expect) and f == pytest.approx(expect)


@pytest.mark.parametrize("gpus", [2, 4, 8])
def test_uniform_all_to_all_one_switch_tiers_agree(gpus):
    topo = build_topology(switch_cluster(gpus))
    b = 3e6
    m = np.full((gpus, gpus), b)
    a, f = both(topo, all_to_all(m))
    expect = ALPHA + 2 * LAT + (gpus - 1) * b / B  # each GPU's port carries (p - 1) b
    assert a == pytest.approx(expect)
    assert abs(f - a) / a < 0.01


def test_uniform_all_to_all_dgx_preset_tiers_agree():
    topo = build_topology(load_cluster("dgx-h100"))
    m = np.full((8, 8), 5e6)
    a, f = both(topo, all_to_all(m))
    assert abs(f - a) / a < 0.01


def test_ring_collectives_closed_forms():
    topo = build_topology(switch_cluster(4))
    n = 4e6
    ag = analytic_cost(topo, all_gather(4, range(4), n)).time_s
    assert ag == pytest.approx(ALPHA + 3 * 2 * LAT + 3 * n / B)
    rs = analytic_cost(topo, reduce_scatter(4, range(4), n)).time_s
    assert rs == pytest.approx(ALPHA + 3 * 2 * LAT + 0.75 * n / B)
    ar = analytic_cost(topo, all_reduce(4, range(4), n)).time_s
    assert ar == pytest.approx(ALPHA + 6 * 2 * LAT + 1.5 * n / B)
    f = FlowNetwork(topo).time(all_reduce(4, range(4), n).traffic, 6)
    assert f == pytest.approx(ar)


def test_incast_flow_tier_hand_computed():
    """Seven GPUs send b to GPU 0; GPU 1 also sends b to GPU 2. GPU 0's port is shared by 7
    flows (B/7 each), so 1->2 gets the rest of GPU 1's port, 6B/7: it ends at 7b/(6B) and the
    incast ends at 7b/B, against b/B for a single transfer."""
    topo = build_topology(switch_cluster(8))
    b = 1e6
    m = np.zeros((8, 8))
    m[1:, 0] = b
    m[1, 2] = b
    r = FlowNetwork(topo).simulate(m)
    assert r.transfer_s == pytest.approx(7 * b / B)
    assert r.finish_s[1, 2] == pytest.approx(7 * b / (6 * B))
    assert r.finish_s[5, 0] == pytest.approx(7 * b / B)
    assert r.time_s == pytest.approx(ALPHA + 2 * LAT + 7 * b / B)


def test_skew_flow_tier_is_slower_than_bottleneck_bound():
    """GPUs 1 and 2 each send 2b to GPU 0 and b to three other GPUs. Every flow starts at B/4
    (the senders' ports carry four flows), so GPU 0's port runs half empty; after 4b/B the
    small flows end and the two 2b flows split GPU 0's port: total 6b/B. The bottleneck bound
    (analytic) is the busiest port, 5b/B."""
    topo = build_topology(switch_cluster(8))
    b = 1e6
    m = np.zeros((8, 8))
    m[1, 0] = m[2, 0] = 2 * b
    m[1, [3, 4, 5]] = b
    m[2, [6, 7, 3]] = b
    r = FlowNetwork(topo).simulate(m)
    assert r.transfer_s == pytest.approx(6 * b / B)
    assert r.finish_s[1, 3] == pytest.approx(4 * b / B)
    a = analytic_times(topo, m[None])[0]
    assert a == pytest.approx(ALPHA + 2 * LAT + 5 * b / B)


def test_slow_link_hand_computed_pcie():
    """One node of the 8x-l40s-pcie preset: GPUs 0,1 on switch 0 and 2,3 on switch 1
    (GPU links 25 GB/s), switches joined by 20 GB/s host links. In a uniform all-to-all of b,
    the four cross-switch flows leaving switch 0 share its 20 GB/s uplink (5 GB/s each), and
    0->1 gets the rest of GPU 0's 25 GB/s port and of GPU 1's: 15 GB/s."""
    c = load_cluster("8x-l40s-pcie")
    topo = build_topology(c)
    b = 1e6
    m = np.zeros((8, 8))
    m[:4, :4] = b
    r = FlowNetwork(topo).simulate(m)
    assert r.finish_s[0, 1] == pytest.approx(b / 15e9)
    assert r.finish_s[0, 2] == pytest.approx(b / 5e9)
    lat = 2 * 2e-6 + 2 * 3e-6
    assert r.time_s == pytest.approx(c.collective_latency_us * 1e-6 + lat + b / 5e9)
    assert analytic_times(topo, m[None])[0] == pytest.approx(r.time_s)


def test_transposed_matrix_takes_the_same_time():
    topo = build_topology(load_cluster("2x8-h100-ib400"))
    m = np.random.default_rng(3).integers(0, 6, (16, 16)) * 1e5
    fn = FlowNetwork(topo)
    assert fn.time(m) == pytest.approx(fn.time(m.T), rel=2e-3)


def test_max_min_rates_small_example():
    """Links of capacity 1, 1, 3; flows {0}, {0,1}, {1}, {2}: link 0 and 1 each split 1/2."""
    inc = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], float))
    r = max_min_rates(inc, np.array([1.0, 1.0, 3.0]))
    np.testing.assert_allclose(r, [0.5, 0.5, 0.5, 3.0])
    inc = sp.csr_matrix(np.array([[1, 1], [1, 0], [0, 1]], float))
    np.testing.assert_allclose(max_min_rates(inc, np.array([1.0, 4.0])), [0.5, 0.5, 3.5])


def test_empty_traffic_costs_nothing():
    topo = build_topology(switch_cluster())
    z = np.zeros((4, 4))
    assert analytic_times(topo, z[None])[0] == 0.0 and FlowNetwork(topo).time(z) == 0.0


def test_batched_completions_keep_bytes_and_only_add_time():
    topo = build_topology(load_cluster("2x8-h100-ib400"))
    m = np.random.default_rng(4).poisson(3.0, (16, 16)) * 14336.0
    exact = FlowNetwork(topo, 0.0).simulate(m)
    fast = FlowNetwork(topo, 0.01).simulate(m)
    assert exact.time_s * (1 - 1e-9) <= fast.time_s <= exact.time_s * 1.02
    assert fast.recomputations < exact.recomputations


def test_shared_bottleneck_drain_matches_event_by_event():
    """Three flows of b, 2b, 3b into one GPU: equal shares B/3, then B/2, then B: they end at
    3b/B, 5b/B and 6b/B (hand computation; this runs the closed-form drain)."""
    topo = build_topology(switch_cluster(4))
    b = 1e6
    m = np.zeros((4, 4))
    m[1, 0], m[2, 0], m[3, 0] = b, 2 * b, 3 * b
    r = FlowNetwork(topo).simulate(m)
    np.testing.assert_allclose([r.finish_s[1, 0], r.finish_s[2, 0], r.finish_s[3, 0]],
                               [3 * b / B, 5 * b / B, 6 * b / B])


@pytest.mark.parametrize("coalesce", [0.0, 0.01])
def test_batched_collectives_equal_separate_runs(coalesce):
    """simulate_many answers all collectives' rate requests in one progressive filling over
    independent copies of the network; each result must equal its own run (rates computed
    per collective, no RateSolver), bit for bit."""
    import simpy
    topo = build_topology(load_cluster("2x8-h100-ib400"))
    rng = np.random.default_rng(5)
    mats = [rng.poisson(lam, (16, 16)) * 14336.0 for lam in (0.5, 3.0, 8.0)]
    mats.append(np.zeros((16, 16)))
    fn = FlowNetwork(topo, coalesce)
    batched = fn.simulate_many(mats, steps=2)
    for m, got in zip(mats, batched):
        env, out = simpy.Environment(), {}
        env.process(fn.collective(env, m, 2, out))  # no solver: rates computed in place
        env.run()
        assert got.time_s == env.now
        assert got.recomputations == out.get("recomputations", 0)
        if out:
            np.testing.assert_array_equal(got.finish_s.reshape(-1)[out["rows"]], out["finish"])
