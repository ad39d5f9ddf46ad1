import math

import pytest

from specmoe.planner.whatif import Candidate, WhatIfConfig, candidates, max_rate, pareto
from specmoe.specs._fields import FieldError


@pytest.mark.parametrize("true_cap", [0.3, 1.0, 7.7, 100.0, 400.0])
def test_bisection_finds_the_threshold_within_tolerance(true_cap):
    rate, probes = max_rate(lambda r: r <= true_cap, 0.125, 512, 0.05)
    assert rate <= true_cap < rate * 1.05 + 1e-12
    assert len(probes) <= 2 + math.ceil(math.log(math.log(4096) / math.log(1.05), 2)) + 1


def test_bisection_edges():
    assert max_rate(lambda r: False, 1, 10, 0.1)[0] == 0.0
    assert max_rate(lambda r: True, 1, 10, 0.1)[0] == 10


def test_pareto_by_hand():
    pts = [(10, 5), (20, 9), (20, 4), (5, 0), (30, 9), (8, 5)]
    assert pareto(pts) == [False, True, False, False, False, True]


def test_candidate_grid():
    cfg = WhatIfConfig(models=("m",), clusters=("a", "b"), ep=(2, 4, 8), placements=("contiguous",),
                       tree_budgets=(0, 16))
    cs = candidates(cfg, {"a": 8, "b": 2})
    assert [(c.cluster, c.ep, c.replicas) for c in cs if c.tree_budget == 0] == \
        [("a", 2, 4), ("a", 4, 2), ("a", 8, 1), ("b", 2, 1)]
    assert len(cs) == 8
    assert isinstance(cs[0], Candidate)


def test_bad_config():
    with pytest.raises(FieldError, match="attention"):
        WhatIfConfig(attention=("sp",))
    with pytest.raises(FieldError, match="rate_min_rps"):
        WhatIfConfig(rate_min_rps=5, rate_max_rps=1)
