"""EP over gloo (spawned CPU processes) must reproduce the single-process model's logits."""
import numpy as np
import pytest
import torch

from specmoe.runtime.config import MoEConfig
from specmoe.runtime.ep import EPLayout, EPMoE, shard_model
from specmoe.runtime.launch import spawn
from specmoe.runtime.model import MoEModel, init_random

CFG = dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, num_kv_heads=1, head_dim=8,
           num_experts=6, top_k=3, expert_ffn=12, dense_ffn=20, dense_layers=(0,), shared_ffn=10)


def _model(**over):
    torch.manual_seed(0)
    return init_random(MoEModel(MoEConfig(**{**CFG, **over})), seed=1, std=0.3).eval()


def _rank_main(rank, world, over, phy2log, req2gpu, ids, out_dir):
    full = _model(**over)
    layout = EPLayout(np.asarray(phy2log), world, full.cfg.num_experts)
    local = shard_model(full, layout, rank).eval()
    mine = np.flatnonzero(np.asarray(req2gpu) == rank)
    moe = EPMoE(layout, rank)
    with torch.no_grad():
        logits = local(torch.as_tensor(ids)[mine], moe_fn=moe)
    np.save(f"{out_dir}/rank{rank}.npy", logits.numpy())
    np.save(f"{out_dir}/idx{rank}.npy", mine)
    np.save(f"{out_dir}/bytes{rank}.npy", np.array([s["bytes_sent"] for s in moe.stats]))


def _run(tmp_path, world, phy2log, req2gpu, ids, **over):
    spawn(_rank_main, world, over, phy2log, req2gpu, ids, str(tmp_path))
    out = np.zeros((len(ids), ids.shape[1], CFG["vocab_size"]), np.float32)
    for r in range(world):
        out[np.load(tmp_path / f"idx{r}.npy")] = np.load(tmp_path / f"rank{r}.npy")
    return out


def _reference(ids, **over):
    with torch.no_grad():
        return _model(**over)(torch.as_tensor(ids)).numpy()


@pytest.mark.parametrize("world", [2, 3])
def test_ep_matches_single_process_with_replicas_and_shuffle(tmp_path, world):
    rng = np.random.default_rng(world)
    n_moe, slots = 2, 3 * world  # num_physical = 3*world >= 6 experts -> replicas when world=3
    phy2log = np.stack([np.concatenate([rng.permutation(6), rng.integers(0, 6, slots - 6)])
                        for _ in range(n_moe)])
    ids = rng.integers(0, 50, (5, 4))
    req2gpu = rng.integers(0, world, 5)  # speculative shuffle: arbitrary request -> GPU
    req2gpu[:world] = np.arange(world)
    got = _run(tmp_path, world, phy2log, req2gpu, ids)
    ref = _reference(ids)
    assert np.abs(got - ref).max() < 1e-5
    assert np.abs(ref).max() > 1e-2


def test_ep_sigmoid_bias_gate_four_ranks(tmp_path):
    over = dict(scoring="sigmoid", score_bias=True, routed_scaling_factor=2.5, num_experts=8,
                shared_gate=True)
    rng = np.random.default_rng(7)
    phy2log = np.stack([rng.permutation(8) for _ in range(2)])
    ids = rng.integers(0, 50, (4, 3))
    got = _run(tmp_path, 4, phy2log, np.array([3, 2, 1, 0]), ids, **over)
    assert np.abs(got - _reference(ids, **over)).max() < 1e-5


def test_to_physical_prefers_own_replica_then_least_loaded():
    # 4 experts, 6 slots on 2 ranks: rank0 = [0,1,2], rank1 = [3,0,1]; expert 0 and 1 replicated
    lay = EPLayout(np.array([[0, 1, 2, 3, 0, 1]]), 2, 4)
    ids = np.array([[0, 3], [0, 1], [2, -1]])
    phys = lay.to_physical(0, ids, token2gpu=np.array([1, 0, 1]))
    assert phys.tolist() == [[4, 3], [0, 1], [2, -1]]
    # a token on rank 1 needing expert 2 (only on rank 0) goes there; expert 0 stays local
    lay2 = EPLayout(np.array([[0, 2, 0, 1]]), 2, 3)  # rank0 [0,2], rank1 [0,1]
    assert lay2.to_physical(0, np.array([[2, 0]]), np.array([1])).tolist() == [[1, 2]]


def test_layout_rejects_missing_expert():
    from specmoe.errors import InputError
    with pytest.raises(InputError, match=r"physical_to_logical_map\[0\]"):
        EPLayout(np.array([[0, 0, 1, 1]]), 2, 3)


def _replay_main(rank, world, over, phy2log, t2g, ids, phys_ids, w, out_dir, experts="torch"):
    from specmoe.runtime.graphstep import ReplayStep
    from specmoe.runtime.model import KVCache, set_experts_backend
    full = _model(**over)
    layout = EPLayout(np.asarray(phy2log), world, full.cfg.num_experts)
    local = set_experts_backend(shard_model(full, layout, rank).eval(), experts)
    cache = KVCache(full.cfg, max(int((t2g == rank).sum()), 1), 5, "cpu", torch.float32)
    cache.fill_random(4, seed=5)
    step = ReplayStep(local, layout, rank, "cpu", phys_ids, w, t2g, cache, context=4)
    step.buf["ids"] = torch.as_tensor(ids)[np.flatnonzero(t2g == rank)][:, None]
    with torch.no_grad():
        logits = step.run_eager()
    np.save(f"{out_dir}/replay{rank}.npy", logits.numpy())
    np.save(f"{out_dir}/meta{rank}.npy", np.array([step.bytes_sent, step.local_pairs, step.pairs]))


@pytest.mark.parametrize("experts", ["torch", "triton"])
def test_replay_step_matches_model_with_forced_routing(tmp_path, experts):
    """The host-planned, sync-free step (graphstep.ReplayStep, eager on CPU) equals the
    single-process model whose gates are forced to the same routing, at a random KV context;
    with the ranks' experts on the torch path or on the Triton kernel (specmoe.kernels.moe)."""
    import os
    if experts == "triton" and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    from specmoe.runtime.model import KVCache
    world, rng = 2, np.random.default_rng(11)
    phy2log = np.stack([rng.permutation(6) for _ in range(2)])
    n = 5
    ids = rng.integers(0, 50, n)
    logical = np.stack([np.stack([rng.permutation(6)[:3] for _ in range(2)]) for _ in range(n)])
    logical[0, 1, 2] = -1  # a token that skips one choice
    w = rng.random(logical.shape).astype(np.float32)
    t2g = np.array([1, 0, 1, 1, 0])
    layout = EPLayout(phy2log, world, 6)
    phys = np.stack([layout.to_physical(i, logical[:, i], t2g) for i in range(2)], 1)
    spawn(_replay_main, world, {}, phy2log, t2g, ids, phys, w, str(tmp_path), experts)
    full = _model()
    cache = KVCache(full.cfg, n, 5, "cpu", torch.float32)
    cache.fill_random(4, seed=5)
    # each rank filled its own cache from the same seed: rank r's rows are the first rows
    forced = {1: 0, 2: 1}

    def moe_fn(layer, block, x):
        i = forced[layer]
        sel = torch.as_tensor(order)
        return block(x, (torch.as_tensor(logical[sel, i]), torch.as_tensor(w[sel, i])))
    got = np.zeros((n, 1, 50), np.float32)
    for r in range(world):
        order = np.flatnonzero(t2g == r)
        c = KVCache(full.cfg, len(order), 5, "cpu", torch.float32)
        c.fill_random(4, seed=5)
        with torch.no_grad():
            ref = full(torch.as_tensor(ids[order])[:, None], cache=c, moe_fn=moe_fn)
        got[order] = np.load(tmp_path / f"replay{r}.npy")
        assert np.abs(got[order] - ref.numpy()).max() < 1e-5
    meta = np.load(tmp_path / "meta0.npy")
    assert meta[2] == (phys[t2g == 0] >= 0).sum()
