import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmoe.errors import InputError
from specmoe.traces import RoutingTrace, load, save


def make_trace(T=5, L=3, K=2, E=8, seed=0, token_id=True):
    rng = np.random.default_rng(seed)
    ids = np.array([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(T)]).reshape(T, L, K)
    return RoutingTrace(ids.astype(np.int32), rng.random((T, L, K), dtype=np.float32),
                        np.repeat(np.arange(T), 1).astype(np.int64) // 2, np.arange(T) % 2,
                        dict(model="m", num_experts=E, top_k=K, phase="decode", source="test"),
                        np.arange(T, dtype=np.int64) if token_id else None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(0, 20), L=st.integers(1, 4), K=st.integers(1, 4), seed=st.integers(0, 99),
       token_id=st.booleans())
def test_round_trip(tmp_path, T, L, K, seed, token_id):
    tr = make_trace(T, L, K, E=8, seed=seed, token_id=token_id)
    save(tr, tmp_path / "t.npz")
    back = load(tmp_path / "t.npz")
    for name in ("topk_ids", "topk_weights", "seq_id", "position"):
        assert np.array_equal(getattr(back, name), getattr(tr, name))
    assert back.meta == tr.meta
    assert (back.token_id is None) == (not token_id)


def _write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _arrays(tr):
    return dict(topk_ids=tr.topk_ids, topk_weights=tr.topk_weights, seq_id=tr.seq_id,
                position=tr.position, meta=np.array(json.dumps(tr.meta)))


@pytest.mark.parametrize("mutate,field", [
    (lambda a: a.update(topk_ids=a["topk_ids"][:, :, 0]), "topk_ids"),
    (lambda a: a.update(topk_ids=a["topk_ids"] + 8), "topk_ids"),
    (lambda a: a.update(topk_ids=a["topk_ids"] - 9), "topk_ids"),
    (lambda a: a.update(topk_weights=a["topk_weights"][:-1]), "topk_weights"),
    (lambda a: a.update(seq_id=a["seq_id"][:-1]), "seq_id"),
    (lambda a: a.update(position=-a["position"] - 1), "position"),
    (lambda a: a.pop("meta"), "meta"),
    (lambda a: a.update(meta=np.array("{not json")), "meta"),
    (lambda a: a.update(meta=np.array(json.dumps({"model": "m"}))), "meta.num_experts"),
    (lambda a: a.update(meta=np.array(json.dumps(dict(model="m", num_experts=8, top_k=3, phase="decode",
                                                      source="s")))), "meta.top_k"),
    (lambda a: a.update(meta=np.array(json.dumps(dict(model="m", num_experts=8, top_k=2, phase="train",
                                                      source="s")))), "meta.phase"),
])
def test_malformed_traces_are_rejected_by_field(tmp_path, mutate, field):
    a = _arrays(make_trace())
    mutate(a)
    with pytest.raises(InputError) as e:
        load(_write(tmp_path, **a))
    assert e.value.field == field and "bad.npz" in str(e.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_garbage_bytes_give_input_error(tmp_path, data):
    p = tmp_path / "g.npz"
    p.write_bytes(data)
    with pytest.raises(InputError):
        load(p)


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    a = _arrays(make_trace())
    a["meta"] = np.array([{"model": "m"}], dtype=object)
    with pytest.raises(InputError, match="pickled"):
        load(_write(tmp_path, **a))


def test_split_by_sequence_keeps_sequences_whole():
    tr = make_trace(T=40)
    head, tail = tr.split_by_sequence(0.25)
    assert set(head.seq_id).isdisjoint(tail.seq_id)
    assert head.num_tokens + tail.num_tokens == 40
    assert len(np.unique(head.seq_id)) == 5
