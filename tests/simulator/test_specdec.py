"""Speculative decoding in the simulator: the decode loop, the serving hook, online SD."""
import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.planner.acceptance import geometric, positional
from specmoe.planner.sequoia import sequoia_tree
from specmoe.planner.tree_cost import DraftCost, synthetic_routing
from specmoe.planner.trees import Tree, expected_accepted, save_json
from specmoe.simulator.specdec import (SpecDecoder, fit_osd_curve, load_spec, online_specdec,
                                       osd_curve, simulate_specdec)
from specmoe.specs import load_cluster, load_model

ACC = positional([0.6, 0.2, 0.1])


@pytest.fixture(scope="module")
def env():
    model, cluster = load_model("deepseek-v2-lite"), load_cluster("dgx-h100")
    return model, cluster, synthetic_routing(model, num_seqs=4, seq_len=40, share=0.3)


def test_loop_accounting_and_determinism(env):
    model, cluster, routing = env
    tree = sequoia_tree(ACC, 8, 3)
    a = simulate_specdec(model, cluster, routing, tree, ACC, batch=4, steps=6, seed=3)
    b = simulate_specdec(model, cluster, routing, tree, ACC, batch=4, steps=6, seed=3)
    assert json.dumps(a.to_json()) == json.dumps(b.to_json())
    s = a.steps
    assert np.allclose(s.step_us, s.draft_us + s.verify_us)
    assert a.tokens_per_s == pytest.approx(1e6 * s.tokens.sum() / s.step_us.sum())
    assert (s.tokens >= 4).all() and (s.tokens <= 4 * (tree.max_depth + 1)).all()


def test_empty_tree_advances_one_token(env):
    model, cluster, routing = env
    res = simulate_specdec(model, cluster, routing, Tree((-1,), "chain"), ACC, batch=3, steps=3)
    assert (res.steps.tokens == 3).all() and (res.steps.draft_us == 0).all()


def test_decoder_advance_and_interpolation(env):
    model, cluster, routing = env
    tree = sequoia_tree(ACC, 8, 3)
    dec = SpecDecoder(model, cluster, routing, tree, ACC, draft=DraftCost("free"))
    rng = np.random.default_rng(0)
    adv = np.concatenate([dec.iteration(None, 50, 900, rng)[1] for _ in range(200)])
    assert adv.mean() == pytest.approx(expected_accepted(tree, ACC), rel=0.02)
    # on grid points the time is the simulated one; between them, linear in batch
    t4, t8 = dec.point_us(4, 1024), dec.point_us(8, 1024)
    assert dec.iteration_us(4, 1024) == t4
    assert dec.iteration_us(6, 1024) == pytest.approx((t4 + t8) / 2)
    assert dec.iteration(None, 6, 1024, rng)[0] == pytest.approx(1e-6 * (t4 + t8) / 2)
    assert dec.fixed_advance is None


def test_osd_fit_recovers_curve():
    t = np.array([0, 5e3, 1e4, 2e4, 4e4, 8e4, 1.6e5])
    a = osd_curve(t, 0.35, 0.72, 1.5e4)
    assert fit_osd_curve(t, a) == pytest.approx((0.35, 0.72, 1.5e4), rel=1e-4)
    noisy = a + np.random.default_rng(0).normal(0, 0.005, len(t))
    a0, a_inf, tau = fit_osd_curve(t, noisy)
    assert a_inf == pytest.approx(0.72, abs=0.02)
    with pytest.raises(InputError):
        fit_osd_curve([0, 1], [0.3, 0.4])


def test_osd_pays_only_when_acceptance_rises():
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    tree = sequoia_tree(geometric(0.5), 16, 5)
    draft = DraftCost.eagle_head(model)
    flat = online_specdec(model, cluster, tree, 5000.0, (0.4, 0.4, 1e4), batch=8, steps=200, draft=draft)
    assert not flat.pays and flat.break_even_tokens is None
    assert flat.frame.osd_time_s.iloc[-1] == pytest.approx(flat.frame.static_time_s.iloc[-1])
    rise = online_specdec(model, cluster, tree, 5000.0, (0.4, 0.7, 1e4), batch=8, steps=200, draft=draft)
    assert rise.pays and rise.break_even_tokens > 0
    # no idle compute to hide it in: distillation is charged to the step time
    costly = online_specdec(model, cluster, tree, 5000.0, (0.4, 0.7, 1e4), batch=8, steps=200,
                            draft=draft, train_efficiency=1e-6)
    assert costly.frame.extra_us.min() > 0 and not costly.pays


def test_load_spec_from_tree_json(tmp_path):
    tree = sequoia_tree(ACC, 6, 3)
    path = tmp_path / "tree.json"
    save_json(tree.to_json(acceptance=ACC.to_json()), path)
    t, acc = load_spec(path)
    assert t.parents == tree.parents and np.allclose(acc.p, ACC.p)
    save_json(tree.to_json(), path)
    with pytest.raises(InputError, match="acceptance"):
        load_spec(path)
    assert load_spec(path, "0.5,0.1")[1].p[0].tolist() == [0.5, 0.1]


def test_simulate_and_serve_sim_with_spec(tmp_path, capsys):
    from specmoe.cli import main
    tree_json = tmp_path / "tree.json"
    assert main(["tree", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100", "--acceptance",
                 "0.6,0.2", "--budget", "8", "--max-depth", "3", "-o", str(tree_json)]) == 0
    capsys.readouterr()
    assert main(["simulate", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100", "--batch", "1",
                 "--spec", str(tree_json), "--spec-steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    spec = out["spec"]
    assert spec["steps"] == 4 and spec["batch"] == 8 and spec["budget"] <= 8
    assert out["step_time_us"] == spec["mean_step_time_us"] > spec["ar_step_time_us"]
    base = dict(model="mixtral-8x7b", cluster="dgx-h100", requests="azure-conv", duration="20")
    argv = ["serve-sim"] + [x for k, v in base.items() for x in (f"--{k}", v)] + ["--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    t2 = tmp_path / "m.json"
    assert main(["tree", "--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--acceptance", "0.7,0.2",
                 "--budget", "8", "-o", str(t2)]) == 0
    capsys.readouterr()
    assert main(argv + ["--spec", str(t2)]) == 0
    spec_run = json.loads(capsys.readouterr().out)
    # speculation advances several tokens per iteration: time per output token drops
    assert spec_run["summary"]["tpot_ms"]["p50"] < plain["summary"]["tpot_ms"]["p50"]
    assert main(argv + ["--spec", str(tmp_path / "missing.json")]) == 2
