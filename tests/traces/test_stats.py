import numpy as np
import pytest

from specmoe.traces import RoutingTrace, stats


def tiny():
    # 3 tokens of one sequence, 2 layers, top-2 of 4 experts.
    ids = np.array([[[0, 1], [2, 3]],
                    [[0, 2], [2, 3]],
                    [[0, 1], [3, -1]]], np.int32)
    return RoutingTrace(ids, np.ones(ids.shape, np.float32), np.zeros(3, np.int64), np.arange(3),
                        dict(model="t", num_experts=4, top_k=2, phase="decode", source="hand"))


def test_load_and_imbalance_by_hand():
    load = stats.expert_load(tiny())
    assert load.tolist() == [[3, 2, 1, 0], [0, 0, 2, 3]]
    assert stats.imbalance(load).tolist() == [2.0, pytest.approx(3 / 1.25)]


def test_transitions_and_entropy_by_hand():
    t = stats.transitions(tiny())[0]
    # token 0: {0,1}x{2,3}; token 1: {0,2}x{2,3}; token 2: {0,1}x{3}
    assert t[0].tolist() == [0, 0, 2, 3] and t[1].tolist() == [0, 0, 1, 2] and t[2].tolist() == [0, 0, 1, 1]
    h = lambda *p: -sum(x * np.log2(x) for x in p if x)
    expect = (5 * h(2 / 5, 3 / 5) + 3 * h(1 / 3, 2 / 3) + 2 * h(.5, .5)) / 10
    assert stats.conditional_entropy(t) == pytest.approx(expect)
    # A deterministic map has zero conditional entropy; a uniform one log2(E).
    assert stats.conditional_entropy(np.eye(4) * 5) == 0
    assert stats.conditional_entropy(np.ones((4, 4))) == pytest.approx(2.0)


def test_consecutive_overlap_by_hand():
    ov = stats.consecutive_overlap(tiny())
    # layer 0: (t1 vs t0) shares {0} -> 1/2; (t2 vs t1) shares {0} -> 1/2
    # layer 1: t1 shares {2,3} -> 1; t2 ({3}) shares {3} -> 1/1
    assert ov.tolist() == [0.5, 1.0]


def test_coactivation_is_symmetric_with_zero_diagonal(embedded_trace):
    c = stats.coactivation(embedded_trace, 3)
    assert (c == c.T).all() and (np.diag(c) == 0).all()
    assert c.sum() == embedded_trace.num_tokens * 6 * 5  # k(k-1) ordered pairs per token


def test_esft_figures_match_the_data_readme(esft_intent):
    s = stats.summarize(esft_intent)
    # "consecutive tokens share about 27% of their experts (9.4% if routing were uniform)"
    assert s["mean_consecutive_overlap"] == pytest.approx(0.27, abs=0.015)
    assert s["uniform_consecutive_overlap"] == pytest.approx(0.094, abs=0.001)
    assert all(l["transition_entropy"] < 6.0 for l in s["layers"][:-1])
    assert s["layers"][-1]["transition_entropy"] is None
