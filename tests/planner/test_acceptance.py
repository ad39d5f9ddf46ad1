"""Acceptance models: fitting from traces (hand-computed and sampled), parsing, bad input."""
import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.planner.acceptance import (chain, fit_chain, fit_depth_positional, fit_positional,
                                        parse_acceptance, positional, trace_from_dict)
from specmoe.planner.sequoia import sequoia_dp
from specmoe.planner.trees import Tree, sample_accepted


def _trace(steps):
    return {"version": 1, "model": "m", "method": "rsd", "temperature": 1.0, "steps": steps}


def test_fit_hand_computed():
    # root has 3 children (1, 2, 3); node 1 has children 4, 5; node 4 has child 6
    parents = [-1, 0, 0, 0, 1, 1, 4]
    steps = [{"parents": parents, "accepted": [1, 4, 6]},  # rank 0, rank 0, rank 0
             {"parents": parents, "accepted": [2]},  # rank 1 at depth 1
             {"parents": parents, "accepted": []},  # nothing
             {"parents": parents, "accepted": [1, 5]}]  # rank 0, then rank 1
    tr = trace_from_dict(_trace(steps), "t")
    # rank 0 offered: 4 (root) + 2 (node 1) + 1 (node 4) = 7; accepted at rank 0: 2 + 1 + 1 = 4
    # rank 1 offered: 4 + 2 = 6; accepted: 1 + 1 = 2;  rank 2 offered: 4, accepted 0
    p = fit_positional(tr).p[0]
    assert p == pytest.approx([4 / 7, 2 / 6, 0.0])
    # chain: depth 1 rank 0: 2/4; depth 2: 1/2; depth 3: 1/1
    assert fit_chain(tr).p[:, 0] == pytest.approx([0.5, 0.5, 1.0])


def test_fit_recovers_sampled_positional_model():
    truth = positional([0.5, 0.2, 0.1, 0.05])
    rng = np.random.default_rng(3)
    tree = sequoia_dp(truth, 20, 5).tree(20)
    kids = [[] for _ in tree.parents]
    for i in range(1, tree.budget + 1):
        kids[tree.parents[i]].append(i)
    steps = []
    for _ in range(4000):
        path, cur = [], 0
        while kids[cur]:
            u, acc_c, nxt = rng.random(), 0.0, None
            for r, c in enumerate(kids[cur]):
                acc_c += truth.prob(int(tree.depth[c]), r)
                if u < acc_c:
                    nxt = c
                    break
            if nxt is None:
                break
            path.append(nxt)
            cur = nxt
        steps.append({"parents": list(tree.parents), "accepted": path})
    fitted = fit_positional(trace_from_dict(_trace(steps), "t"), max_rank=4)
    assert fitted.p[0] == pytest.approx(truth.p[0], abs=0.03)
    by_depth = fit_depth_positional(trace_from_dict(_trace(steps), "t"), 2, 4)
    assert by_depth.p[0] == pytest.approx(truth.p[0], abs=0.04)


def test_chain_fit_from_chain_samples():
    truth = chain([0.9, 0.7, 0.5])
    tree = Tree(tuple(range(-1, 3)))
    lengths = sample_accepted(tree, truth, np.random.default_rng(0), 20000) - 1
    steps = [{"parents": list(tree.parents), "accepted": list(range(1, k + 1))} for k in lengths]
    fitted = fit_chain(trace_from_dict(_trace(steps), "t"))
    assert fitted.p[:, 0] == pytest.approx([0.9, 0.7, 0.5], abs=0.02)


def test_parse_inline_and_files(tmp_path):
    assert parse_acceptance("0.6,0.2").p[0] == pytest.approx([0.6, 0.2])
    assert parse_acceptance("[0.5, 0.1]").p[0] == pytest.approx([0.5, 0.1])
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"alpha": [0.8, 0.7]}))
    a = parse_acceptance(str(f))
    assert a.kind == "chain" and a.p[:, 0] == pytest.approx([0.8, 0.7])
    f.write_text(json.dumps(_trace([{"parents": [-1, 0], "accepted": [1]},
                                     {"parents": [-1, 0], "accepted": []}])))
    assert parse_acceptance(str(f)).p[0] == pytest.approx([0.5])


@pytest.mark.parametrize("text,match", [("0.7,0.5", "sum to <= 1"), ("1.5", "\\[0, 1\\]"),
                                        ("0.x", "list of numbers"), ("nofile.json", "no such file")])
def test_bad_inline(text, match):
    with pytest.raises(InputError, match=match):
        parse_acceptance(text)


@pytest.mark.parametrize("step,match", [({"parents": [-1, 0, 0], "accepted": [2, 1]}, "not a child"),
                                        ({"parents": [-1, 0], "accepted": [3]}, "not a child"),
                                        ({"parents": [-1, 2], "accepted": []}, "parents\\[1\\]"),
                                        ({"accepted": []}, "expected an object")])
def test_bad_trace(tmp_path, step, match):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_trace([step])))
    with pytest.raises(InputError, match=match):
        parse_acceptance(str(f))


def test_bad_trace_version(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"version": 2, "steps": []}))
    with pytest.raises(InputError, match="version"):
        parse_acceptance(str(f))
