"""Draft trees: Sequoia's DP against brute force, closed forms, sampling, baselines, TREE.json."""
import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.planner.acceptance import Acceptance, chain, positional
from specmoe.planner.sequoia import sequoia_dp
from specmoe.planner.trees import (Tree, brute_force_best, canonical, chain_tree, eagle2_tree,
                                   enumerate_trees, expected_accepted, load_tree, node_probs,
                                   recycling_template, rsd_beam, rsd_constant, sample_accepted,
                                   save_json, truncate)

MODELS = {
    "positional": positional([0.55, 0.2, 0.1, 0.05]),
    "flat": positional([0.3, 0.3, 0.3]),
    "chain": chain([0.9, 0.6, 0.8, 0.3]),
    "by-depth": Acceptance(np.array([[0.7, 0.2], [0.4, 0.4], [0.2, 0.1]]), "depth-positional"),
}


def test_enumeration_counts_catalan():
    assert [sum(1 for _ in enumerate_trees(n)) for n in range(1, 8)] == [1, 2, 5, 14, 42, 132, 429]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("max_depth", [1, 2, 3, 8])
def test_dp_equals_brute_force(name, max_depth):
    acc = MODELS[name]
    dp = sequoia_dp(acc, 8, max_depth)
    for n in range(1, 9):
        want, _ = brute_force_best(n, acc, max_depth)
        assert dp.best_upto()[n] == pytest.approx(want, abs=1e-12)
        tree = dp.tree(n)  # the reconstructed tree achieves the value
        assert tree.budget <= n and tree.max_depth <= max_depth
        assert expected_accepted(tree, acc) == pytest.approx(want, abs=1e-12)


def test_dp_random_acceptance_against_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(5):
        p = rng.dirichlet(np.ones(5))[:4] * rng.uniform(0.5, 1)
        acc = positional(p)
        dp = sequoia_dp(acc, 7, 4)
        for n in (3, 5, 7):
            assert dp.best_upto()[n] == pytest.approx(brute_force_best(n, acc, 4)[0], abs=1e-12)


def test_empty_tree_is_one():
    acc = MODELS["positional"]
    assert expected_accepted(Tree((-1,)), acc) == 1.0
    assert sequoia_dp(acc, 0, 3).best_upto()[0] == 1.0


@pytest.mark.parametrize("alpha", [0.3, 0.8, 0.95])
@pytest.mark.parametrize("gamma", [1, 4, 9])
def test_chain_closed_form(alpha, gamma):
    want = (1 - alpha ** (gamma + 1)) / (1 - alpha)
    assert expected_accepted(chain_tree(gamma), positional([alpha])) == pytest.approx(want, rel=1e-12)
    # with only rank 1 drafted, the DP's best tree is that chain
    assert sequoia_dp(positional([alpha]), gamma, gamma).best_upto()[gamma] == pytest.approx(want, rel=1e-12)


def test_sampled_lengths_follow_exact_distribution():
    acc = MODELS["by-depth"]
    tree = sequoia_dp(acc, 12, 4).tree(12)
    f = node_probs(tree, acc)
    # P(stop at v) = f(v) * (1 - sum of its drafted children's p): tokens = depth(v) + 1
    stop = f.copy()
    for i in range(1, tree.budget + 1):
        stop[tree.parents[i]] -= f[i]
    exact = np.bincount(tree.depth + 1, weights=stop, minlength=tree.max_depth + 2)
    n = 200_000
    got = np.bincount(sample_accepted(tree, acc, np.random.default_rng(1), n), minlength=len(exact)) / n
    assert np.abs(got - exact).max() < 4 * np.sqrt(0.25 / n)
    assert exact.sum() == pytest.approx(1.0)
    assert (exact * np.arange(len(exact))).sum() == pytest.approx(expected_accepted(tree, acc))


def test_recycling_template_shape():
    t = recycling_template()  # the published "2.2.2" template: 80 nodes, 6 levels
    assert t.budget == 80
    assert max(np.bincount(t.parents[1:])) <= 8
    assert t.level_widths() == [8, 21, 25, 15, 8, 3]
    assert truncate(t, 10).budget == 10
    # its deepest path is rank 0 five times then rank 1
    deepest = [i for i in range(81) if t.depth[i] == 6]
    assert sorted(t.rank[deepest].tolist()) == [0, 0, 1]


def test_from_paths_rejects_gaps():
    from specmoe.planner.trees import from_paths
    with pytest.raises(InputError, match="without gaps"):
        from_paths([[0], [2]])
    with pytest.raises(InputError, match="parent path"):
        from_paths([[0], [1, 0, 0]])


def test_eagle2_and_rsd_respect_budget():
    acc = MODELS["positional"]
    for n in (4, 16, 40):
        assert eagle2_tree(acc, n, 5, 10).budget == n
        c = rsd_constant(acc, n, 5)
        assert c.budget <= n
        widths = c.level_widths()  # constant branching: every node of a level has b_d children
        kids = np.bincount(c.parents[1:], minlength=c.budget + 1)
        for d in range(c.max_depth):
            assert len(set(kids[c.depth == d])) == 1
        s = rsd_beam(acc, n, 5)
        assert s.budget <= n and len(set(s.level_widths())) == 1
        assert expected_accepted(sequoia_dp(acc, n, 5).tree(n), acc) >= max(
            expected_accepted(t, acc) for t in (c, s, eagle2_tree(acc, n, 5, 10))) - 1e-12
        assert widths == c.level_widths()


def test_tree_json_roundtrip(tmp_path):
    t = canonical(sequoia_dp(MODELS["positional"], 10, 4).tree(10), "sequoia")
    path = tmp_path / "tree.json"
    save_json(t.to_json(), path)
    back = load_tree(path)
    assert back.parents == t.parents and back.method == "sequoia"
    assert json.loads(path.read_text())["budget"] == 10


@pytest.mark.parametrize("parents,msg", [([0, 0], "root"), ([-1, 1], "parents\\[1\\]"),
                                         ([-1, 0, 5], "parents\\[2\\]"), ([], "non-empty")])
def test_bad_parents_rejected(tmp_path, parents, msg):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": 1, "method": "x", "parents": parents}))
    with pytest.raises(InputError, match=msg):
        load_tree(path)


def test_dp_dominates_random_trees_property():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
           st.lists(st.integers(0, 10**6), min_size=1, max_size=30), st.integers(1, 6))
    def check(raw, seeds, depth):
        p = np.array(raw) / max(1.0, sum(raw))
        acc = positional(p)
        parents = [-1] + [s % (i + 1) for i, s in enumerate(seeds)]  # any tree: parents[i] < i
        tree = canonical(Tree(tuple(parents)))
        if tree.max_depth > depth:
            return
        best = sequoia_dp(acc, tree.budget, depth).best_upto()[tree.budget]
        assert best >= expected_accepted(tree, acc) - 1e-12

    check()
