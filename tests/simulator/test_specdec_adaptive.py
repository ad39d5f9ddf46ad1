"""Duo-LLM adaptive computation: policies, choice traces, heterogeneous pricing."""
import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.simulator.adaptive import (BIG, SKIP, SMALL, choices_to_topk, compare_policies, duo_model,
                                        ffn_flops_fraction, load_choices, policy_choices, price)
from specmoe.specs import load_cluster, load_model


@pytest.fixture(scope="module")
def duo():
    return duo_model(load_model("mixtral-8x7b"), small_fraction=0.25), load_cluster("h200x2-nvlink")


def test_duo_model_shape(duo):
    model, _ = duo
    assert model.num_experts == 2 and model.top_k == 1 and model.allow_layer_skip
    assert model.expert_sizes == (7168, 28672)  # big = top-2 x 14336, small = a quarter


def test_big_in_k_policy(duo):
    model, _ = duo
    L = model.num_moe_layers
    ch = policy_choices(100, L, "big-in-k-skip", k=5, skip=3, seed=1)
    assert ((ch == BIG).sum(1) == 5).all() and ((ch == SKIP).sum(1) == 3).all()
    assert ((ch == SMALL).sum(1) == L - 8).all()
    assert np.array_equal(ch, policy_choices(100, L, "big-in-k-skip", k=5, skip=3, seed=1))
    # FFN FLOPs relative to all-big, by hand: (5 * 1 + 24 * 0.25 + 3 * 0) / 32
    assert ffn_flops_fraction(model, ch) == pytest.approx((5 + 24 * 0.25) / 32)
    with pytest.raises(InputError):
        policy_choices(10, L, "big-in-k", k=L + 1)


def test_pricing_orders_small_big_skip(duo):
    model, cluster = duo
    L = model.num_moe_layers
    t = {name: price(model, cluster, np.full((32, L), c, np.int8)).step_time_us
         for name, c in (("skip", SKIP), ("small", SMALL), ("big", BIG))}
    assert t["skip"] < t["small"] < t["big"]
    # one token per sequence: k big layers cost more as k grows when every token is small elsewhere
    df = compare_policies(model, cluster, 8, [0, 32])
    assert df.loc[df.policy == "big-in-k", "step_time_us"].tolist() == pytest.approx(
        [t_ for t_ in df.loc[df.policy.isin(["all-small", "all-big"]), "step_time_us"]][::-1], rel=1e-9)


def test_choice_trace_files(tmp_path, duo):
    model, _ = duo
    L = model.num_moe_layers
    ch = policy_choices(4, L, "big-in-k", k=2)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"choices": ch.tolist()}))
    assert np.array_equal(load_choices(f, L), ch)
    np.save(tmp_path / "c.npy", ch.astype(np.int64))
    assert np.array_equal(load_choices(tmp_path / "c.npy", L), ch)
    assert choices_to_topk(ch).shape == (4, L, 1)
    f.write_text(json.dumps({"choices": [[2] * L]}))
    with pytest.raises(InputError, match="-1 \\(skip\\)"):
        load_choices(f, L)
    f.write_text(json.dumps({"choices": [[0] * (L - 1)]}))
    with pytest.raises(InputError, match="num_tokens"):
        load_choices(f, L)


def test_per_layer_pricing_small_big_skip(duo):
    model, cluster = duo
    L = model.num_moe_layers
    ch = np.full((16, L), SMALL, np.int8)
    ch[:, 1] = BIG
    ch[:, 2] = SKIP
    layers = price(model, cluster, ch).layers.set_index("layer")
    assert layers.loc[2, "experts_us"] == 0.0  # every token skips layer 2: no expert runs
    assert layers.loc[0, "experts_us"] < layers.loc[1, "experts_us"]  # small < big module
    # the small module (a quarter of the width) reads a quarter of the big module's weights
    from specmoe.simulator.compute import ComputeModel
    from specmoe.specs import load_gpu
    cm = ComputeModel(model, load_gpu(cluster.gpu))
    want = cm.ffn_us(np.array([[16.0, 0.0]]), np.array(model.expert_sizes, float))[0]
    assert layers.loc[0, "experts_us"] == pytest.approx(want)
