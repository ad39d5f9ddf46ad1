"""Hardware-aware tree search: the MoE-aware optimum differs from the dense one where it should."""
import json

import numpy as np
import pytest

from specmoe.cli import main
from specmoe.planner.acceptance import positional
from specmoe.planner.tree_cost import DraftCost, VerifyCost, distinct_experts, synthetic_routing
from specmoe.planner.tree_search import plan_tree
from specmoe.specs import AttentionSpec, ModelSpec, load_cluster, load_model

ACC = positional([0.6, 0.15, 0.08, 0.04, 0.02])
GRID = (1, 2, 4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def setup():
    return load_model("deepseek-v2-lite"), load_cluster("dgx-h100")


def _best(model, cluster, routing, aware):
    cost = VerifyCost(model, cluster, routing, batch=1, moe_aware=aware, samples=1)
    return plan_tree("sequoia", ACC, cost, DraftCost("free"), max_depth=6, grid=GRID)[0], cost


def _wide_moe():
    """64 big experts, top-1: a token reads one expert's weights per layer, 16 tokens up to 16."""
    return ModelSpec(name="wide-moe", source="test", num_layers=4, hidden_size=4096, num_experts=64,
                     top_k=1, expert_intermediate_size=14336, vocab_size=32000,
                     attention=AttentionSpec("gqa", 32, 8, 128))


def test_moe_aware_optimum_differs_when_width_activates_experts(setup):
    _, cluster = setup
    model = _wide_moe()
    # share = 0: every verify token draws fresh experts, so wide trees touch many more experts
    routing = synthetic_routing(model, num_seqs=4, seq_len=70, share=0.0, seed=1)
    growth = distinct_experts(routing, model, [1, 16, 64], samples=8)
    assert growth[1] == 1 and growth[16] > 10 and growth[64] > 30
    aware, cost = _best(model, cluster, routing, True)
    dense, _ = _best(model, cluster, routing, False)
    assert aware.tree.budget < dense.tree.budget
    # priced honestly, the dense planner's choice is slower than the MoE-aware one
    from specmoe.planner.tree_search import evaluate
    priced = evaluate(dense.tree, ACC, cost, DraftCost("free"))
    assert priced.tokens_per_s < aware.tokens_per_s


def test_no_difference_when_a_sequence_keeps_its_experts(setup):
    _, cluster = setup
    model = _wide_moe()
    routing = synthetic_routing(model, num_seqs=4, seq_len=70, share=1.0, seed=1)
    assert distinct_experts(routing, model, [64], samples=4)[64] == 1
    aware, _ = _best(model, cluster, routing, True)
    dense, _ = _best(model, cluster, routing, False)
    assert aware.tree.parents == dense.tree.parents


def test_cli_tree_json_and_file(tmp_path, capsys):
    out = tmp_path / "tree.json"
    rc = main(["tree", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100", "--acceptance",
               "0.6,0.15,0.08", "--budget", "16", "--max-depth", "4", "--json", "-o", str(out)])
    assert rc == 0
    keys = json.loads(capsys.readouterr().out)
    for k in ("expected_accepted_per_step", "step_time_us", "tokens_per_s", "speedup_vs_autoregressive"):
        assert keys[k] > 0
    plan = json.loads(out.read_text())
    assert plan["version"] == 1 and plan["parents"][0] == -1 and plan["budget"] <= 16
    assert plan["predicted"]["expected_accepted_per_step"] == keys["expected_accepted_per_step"]
    # same inputs and seed: byte-identical output
    out2 = tmp_path / "tree2.json"
    main(["tree", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100", "--acceptance",
          "0.6,0.15,0.08", "--budget", "16", "--max-depth", "4", "--json", "-o", str(out2)])
    assert out.read_bytes() == out2.read_bytes()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(["tree", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100",
               "--acceptance", "0.9,0.4", "-o", str(out)])
    assert rc == 2 and not out.exists()
    assert "--acceptance" in capsys.readouterr().err
    rc = main(["tree", "--model", "nosuch", "--cluster", "dgx-h100", "--acceptance", "0.5"])
    assert rc == 2


def test_recycling_has_no_draft_cost(setup):
    model, cluster = setup
    routing = synthetic_routing(model, num_seqs=2, seq_len=90, share=0.3)
    cost = VerifyCost(model, cluster, routing, batch=2, samples=1)
    best, _ = plan_tree("recycling", ACC, cost, DraftCost.eagle_head(model), budget=80, grid=(80,))
    assert best.draft_us == 0.0 and best.tree.budget == 80
    assert np.isclose(best.speedup, best.expected_accepted * cost.step_us(0) / cost.step_us(80))


def _tiny_trace():
    from specmoe.traces.routing import RoutingTrace
    # two sequences of 3 tokens, 1 layer, top-2 of 4 experts
    ids = np.array([[[0, 1]], [[1, 2]], [[2, 3]], [[0, 1]], [[0, 1]], [[0, 1]]], np.int32)
    return RoutingTrace(ids, np.full(ids.shape, 0.5, np.float32), np.array([0, 0, 0, 1, 1, 1]),
                        np.array([0, 1, 2, 0, 1, 2]), dict(model="tiny", num_experts=4, top_k=2,
                                                           phase="decode", source="test"))


def test_windows_stay_inside_one_sequence():
    from specmoe.planner.tree_cost import sequence_windows
    tr = _tiny_trace()
    idx = sequence_windows(tr, 3, 50, np.random.default_rng(0))
    assert {tuple(r) for r in idx.tolist()} == {(0, 1, 2), (3, 4, 5)}
    idx = sequence_windows(tr, 2, 200, np.random.default_rng(0))
    assert set(map(tuple, idx.tolist())) == {(0, 1), (1, 2), (3, 4), (4, 5)}


def test_distinct_experts_hand_computed():
    tr = _tiny_trace()
    model = ModelSpec(name="tiny", source="test", num_layers=1, hidden_size=64, num_experts=4, top_k=2,
                      expert_intermediate_size=128, vocab_size=100, attention=AttentionSpec("gqa", 2, 1, 32))
    # windows of 3: sequence 0 touches {0,1,2,3} = 4, sequence 1 touches {0,1} = 2
    got = distinct_experts(tr, model, [3], samples=400)[3]
    assert got == pytest.approx(3.0, abs=0.25)
    cost = VerifyCost(model, load_cluster("h200x2-nvlink"), tr, batch=4, ep=2, moe_aware=False)
    ids, t2g = cost.topk_ids(2, np.random.default_rng(1))
    assert ids.shape == (12, 1, 2) and t2g.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    for s in range(4):  # the dense ablation repeats each sequence's root routing
        assert (ids[3 * s:3 * s + 3] == ids[3 * s]).all()


def test_cli_with_acceptance_trace(tmp_path, capsys):
    trace = {"version": 1, "model": "m", "method": "recycling", "temperature": 0.0,
             "steps": [{"parents": [-1, 0, 0, 1], "accepted": [1, 3]},
                       {"parents": [-1, 0, 0, 1], "accepted": [2]},
                       {"parents": [-1, 0, 0, 1], "accepted": []}]}
    f = tmp_path / "acc.json"
    f.write_text(json.dumps(trace))
    out = tmp_path / "tree.json"
    assert main(["tree", "--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--acceptance", str(f),
                 "--budget", "8", "--max-depth", "3", "-o", str(out)]) == 0
    plan = json.loads(out.read_text())
    # rank 0: offered 3 (root) + 1 (node 1), accepted 1 + 1; rank 1: offered 3, accepted 1
    assert plan["acceptance"]["p"] == pytest.approx([0.5, 1 / 3], abs=1e-6)
    assert plan["provenance"]["inputs"]["acceptance"]["sha256"]
    assert "expected accepted tokens/step" in capsys.readouterr().out
