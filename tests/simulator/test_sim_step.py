import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.simulator.dispatch import route
from specmoe.simulator.routing import synthetic_topk
from specmoe.simulator.step import simulate_step
from specmoe.specs import load_cluster, load_model

from tests.simulator._util import switch_cluster, tiny_model


def ids_of(rows):
    """[[layer0 experts], [layer1 experts]] per token -> int32 [T, 2, K]."""
    return np.array(rows, np.int32)


def test_dispatch_counts_one_copy_per_distinct_remote_gpu():
    # 8 experts on 4 ranks (2 each). Token 0 on rank 0 picks experts 2 and 3 (both rank 1):
    # one copy. Token 1 on rank 1 picks 2 (local) and 7 (rank 3): one copy. Layer 1: token 0
    # skips (all -1), token 1 picks 0 and 4 (ranks 0 and 2): two copies.
    ids = ids_of([[[2, 3], [-1, -1]], [[2, 7], [0, 4]]])
    d = route(ids, np.array([0, 1]), np.tile(np.arange(8), (2, 1)), 4)
    assert d.copies[0, 0, 1] == 1 and d.copies[0, 1, 3] == 1 and d.copies[0, 1, 1] == 1
    assert d.copies[1, 1, 0] == 1 and d.copies[1, 1, 2] == 1
    assert d.remote_copies == 4
    np.testing.assert_array_equal(d.expert_tokens[0], [0, 0, 2, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(d.routed, [[1, 1, 0, 0], [0, 1, 0, 0]])


def test_replicas_prefer_local_then_least_loaded_rank():
    # 4 logical experts, 8 physical slots on 4 ranks; expert 0 is on ranks 0, 2 and 3.
    phy2log = np.array([[0, 1, 2, 3, 0, 1, 0, 2]])
    tokens = 5
    ids = np.array([[[0]]] * tokens, np.int32)
    t2g = np.array([2, 1, 1, 1, 0])
    d = route(ids, t2g, phy2log, 4)
    # token 0 (rank 2) and token 4 (rank 0) are local; tokens 1-3 on rank 1 go to the least
    # loaded of ranks 0, 2, 3: rank 3 (load 0), then rank 0 (1, ties to lower), then rank 2.
    np.testing.assert_array_equal(d.expert_tokens[0], [2, 0, 0, 0, 2, 0, 1, 0])
    assert d.copies[0, 1, 3] == 1 and d.copies[0, 1, 0] == 1 and d.copies[0, 1, 2] == 1


def test_step_breakdown_and_json_keys(model):
    ids = np.random.default_rng(0).integers(0, 8, (32, 2, 2)).astype(np.int32)
    ids[:, :, 1] = (ids[:, :, 0] + 1) % 8
    r = simulate_step(model, switch_cluster(4), topk_ids=ids)
    assert list(r.layers.layer) == [0, 1, 2] and list(r.layers.kind) == ["dense", "moe", "moe"]
    moe = r.layers[r.layers.kind == "moe"]
    assert (moe.dispatch_us > 0).all() and (moe.gate_us > 0).all()
    parts = r.layers[["attention_us", "gate_us", "dispatch_us", "experts_us", "combine_us"]].sum(axis=1)
    np.testing.assert_allclose(parts, r.layers.total_us)
    assert r.step_time_us == pytest.approx(r.layers.total_us.sum() + r.lm_head_us)
    j = r.to_json()
    for k in ("step_time_us", "layers", "bytes_by_link_class", "remote_copies_per_token_layer"):
        assert k in j
    copies = route(ids, np.arange(32) % 4, np.tile(np.arange(8), (2, 1)), 4).remote_copies
    assert r.remote_copies_per_token_layer == pytest.approx(copies / 64)
    assert r.bytes_by_link_class["nvlink"] == pytest.approx(2 * copies * 64 * 2)


def test_same_inputs_give_byte_identical_json():
    m = load_model("deepseek-v2-lite")
    ids = np.random.default_rng(1).integers(0, 64, (64, 26, 6)).astype(np.int32)
    a = [json.dumps(simulate_step(m, load_cluster("2x8-h100-ib400"), topk_ids=ids, network=n,
                                  seed=5).to_json(), sort_keys=True) for n in ("flow", "flow")]
    assert a[0] == a[1]


def test_skipped_layer_costs_no_expert_time(model):
    ids = np.zeros((8, 2, 2), np.int32)
    ids[:, :, 1] = 1
    ids[:, 1] = -1
    r = simulate_step(model, switch_cluster(4), topk_ids=ids)
    assert r.layers.experts_us[2] == 0 and r.layers.dispatch_us[2] == 0
    assert r.layers.experts_us[1] > 0


def test_heterogeneous_experts_priced_by_width():
    sizes = (512, 512, 512, 512, 4096, 4096, 4096, 4096)
    m = tiny_model(hidden_size=1024, expert_intermediate_sizes=sizes)
    small = np.tile(np.array([[0, 1]], np.int32), (16, 2, 1))
    big = small + 4
    t_small = simulate_step(m, switch_cluster(4), topk_ids=small).layers.experts_us[1]
    t_big = simulate_step(m, switch_cluster(4), topk_ids=big).layers.experts_us[1]
    assert t_big > 4 * t_small


def test_flow_and_analytic_agree_on_a_balanced_step():
    m = load_model("mixtral-8x7b")
    ids = np.tile(np.array([[0, 1]], np.int32), (256, 32, 1))
    ids = (ids + np.arange(256)[:, None, None] * 2) % 8  # every rank sends the same
    a = simulate_step(m, load_cluster("dgx-h100"), ep=8, topk_ids=ids)
    f = simulate_step(m, load_cluster("dgx-h100"), ep=8, topk_ids=ids, network="flow")
    assert a.layers.dispatch_us.sum() == pytest.approx(f.layers.dispatch_us.sum(), rel=0.01)


def test_overlap_and_tp_attention_run(model):
    ids = np.random.default_rng(0).integers(0, 4, (64, 2, 1)).astype(np.int32)
    ids = np.concatenate([ids, ids + 4], axis=2)
    base = simulate_step(model, switch_cluster(4), topk_ids=ids)
    ov = simulate_step(model, switch_cluster(4), topk_ids=ids, overlap=True)
    tp = simulate_step(model, switch_cluster(4), topk_ids=ids, attention="tp")
    assert ov.step_time_us > 0 and any("micro-batches" in n for n in ov.notes)
    assert tp.layers.attention_us[1] != base.layers.attention_us[1]
    assert tp.bytes_by_link_class["nvlink"] > base.bytes_by_link_class["nvlink"]


def test_overlap_hides_communication_behind_compute():
    """Two micro-batches on a slow network: the step is shorter than the serial sum of phases."""
    m = load_model("mixtral-8x7b")
    ids = (np.arange(512 * 32 * 2).reshape(512, 32, 2) % 8).astype(np.int32)
    c = load_cluster("8x-l40s-pcie")
    r = simulate_step(m, c, ep=8, topk_ids=ids, overlap=True)
    busy = r.layers[["attention_us", "gate_us", "dispatch_us", "experts_us", "combine_us"]].sum().sum()
    assert r.layers.total_us.sum() < 0.95 * busy


@pytest.mark.parametrize("phy2log,field,words", [
    (np.tile(np.arange(8), (3, 1)), "physical_to_logical_map", "layers"),
    (np.tile(np.arange(8), (2, 1))[:, :6], "physical_to_logical_map", "divide"),
    (np.tile(np.r_[np.arange(7), 0], (2, 1)), "physical_to_logical_map[0]", "no physical slot"),
    (np.tile(np.arange(1, 9), (2, 1)), "physical_to_logical_map", "outside"),
])
def test_placement_validation(model, phy2log, field, words):
    ids = np.zeros((4, 2, 2), np.int32)
    ids[..., 1] = 1
    with pytest.raises(InputError) as e:
        simulate_step(model, switch_cluster(4), topk_ids=ids, phy2log=phy2log)
    assert e.value.field == field and words in e.value.problem


def test_bad_routing_and_ep_rejected(model):
    ids = np.zeros((4, 2, 2), np.int32)
    with pytest.raises(InputError, match="MoE layers"):
        simulate_step(model, switch_cluster(4), topk_ids=ids[:, :1])
    with pytest.raises(InputError, match="expert id"):
        simulate_step(model, switch_cluster(4), topk_ids=ids + 8)
    with pytest.raises(InputError, match="expert id -2"):  # below -1 (unsigned fast check)
        simulate_step(model, switch_cluster(4), topk_ids=ids - 2)
    with pytest.raises(InputError):
        simulate_step(model, switch_cluster(4), ep=5, topk_ids=ids)
    with pytest.raises(InputError, match="not divisible"):
        simulate_step(model, switch_cluster(4), ep=3, topk_ids=ids)


def test_route_is_the_same_counted_on_threads(monkeypatch):
    """The thread pool for large routings changes nothing: a skipped layer's -1s, several
    experts per rank, arbitrary and round-robin token placement; threaded == serial."""
    from specmoe.simulator import dispatch
    model = load_model("deepseek-v3")
    ids = synthetic_topk(model, 32 * 16, seed=1)
    ids[::7, 3, :] = -1
    p2l = dispatch.default_phy2log(model, 16)
    fields = ("copies", "expert_tokens", "tokens_per_gpu", "routed", "sent", "received")
    for src in (np.random.default_rng(0).integers(0, 16, len(ids)), np.arange(len(ids)) % 16):
        monkeypatch.setattr(dispatch, "_PARALLEL_MIN", 1 << 60)
        serial = dispatch.route(ids, src, p2l, 16)
        monkeypatch.setattr(dispatch, "_PARALLEL_MIN", 0)
        threaded = dispatch.route(ids, src, p2l, 16)
        for f in fields:
            np.testing.assert_array_equal(getattr(serial, f), getattr(threaded, f), err_msg=f)
        assert serial.copies.sum() > 0


def test_route_thread_pool_survives_fork(monkeypatch):
    """whatif --jobs forks workers: a child must not wait on the parent's (thread-less) pool."""
    import multiprocessing as mp

    from specmoe.simulator import dispatch
    monkeypatch.setattr(dispatch, "_PARALLEL_MIN", 0)
    ids = np.random.default_rng(0).integers(0, 16, (64, 2, 2)).astype(np.int32)
    p2l = np.tile(np.arange(16), (2, 1))
    want = int(dispatch.route(ids, np.arange(64) % 4, p2l, 4).copies.sum())  # parent's pool
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_route_in_child, args=(q, ids, p2l))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and q.get(timeout=5) == want


def _route_in_child(q, ids, p2l):
    from specmoe.simulator import dispatch
    q.put(int(dispatch.route(ids, np.arange(64) % 4, p2l, 4).copies.sum()))
