"""The host-side dispatch plan of the replay step, on a hand-computed case."""
import numpy as np

from specmoe.runtime.graphstep import layer_dispatch


def test_layer_dispatch_hand_case():
    # ep=2, 2 slots per rank. token0 (rank0) -> slots 0 (rank0), 3 (rank1);
    # token1 (rank1) -> slots 2, 3 (both rank1); token2 (rank0) -> slot 1 (rank0), none.
    phys = np.array([[0, 3], [2, 3], [1, -1]])
    t2g = np.array([0, 1, 0])
    t_idx, slots, mask, send, recv = layer_dispatch(phys, t2g, rank=0, spr=2, ep=2)
    assert t_idx.tolist() == [0, 1, 0]  # to rank0: token0, token2; to rank1: token0
    assert slots.tolist() == [[0, -1], [1, -1], [-1, 1]]
    assert mask.tolist() == [[True, False], [True, False], [False, True]]
    assert send.tolist() == [2, 1] and recv.tolist() == [2, 0]
    t_idx, slots, _, send, recv = layer_dispatch(phys, t2g, rank=1, spr=2, ep=2)
    assert t_idx.tolist() == [0] and slots.tolist() == [[0, 1]]  # one copy for both experts
    assert send.tolist() == [0, 1] and recv.tolist() == [1, 1]


def test_close_frees_the_step_without_the_cyclic_collector():
    """ReplayStep's segment closures refer back to it; close() must break that cycle so the
    step (and on CUDA its graphs) dies at once, not at a cyclic collection that could come
    during a later capture (the H200 run 2 EP=1 failure)."""
    import gc
    import weakref

    import torch

    from specmoe.runtime.config import MoEConfig
    from specmoe.runtime.ep import EPLayout
    from specmoe.runtime.graphstep import ReplayStep
    from specmoe.runtime.model import KVCache, MoEModel, init_random

    cfg = MoEConfig(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=4, num_experts=4, top_k=2, expert_ffn=6, dense_ffn=6, dense_layers=(0,))
    model = init_random(MoEModel(cfg), seed=0).eval()
    layout = EPLayout(np.arange(4)[None], 1, 4)
    phys = np.array([[[0, 1]], [[2, 3]]])  # [N=2, L=1, k=2]
    cache = KVCache(cfg, 2, 3, "cpu", torch.float32)
    cache.fill_random(2, seed=3)
    gc.disable()
    try:
        step = ReplayStep(model, layout, 0, "cpu", phys, np.full((2, 1, 2), 0.5, np.float32),
                          np.zeros(2, np.int64), cache, context=2)
        with torch.no_grad():
            assert step.run_eager().shape == (2, 1, 20)
        ref = weakref.ref(step)
        step.close()
        del step
        assert ref() is None
    finally:
        gc.enable()


def test_fill_random_is_seeded_and_ignores_the_default_generator():
    import torch

    from specmoe.runtime.config import MoEConfig
    from specmoe.runtime.model import KVCache
    cfg = MoEConfig(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=4, num_experts=4, top_k=2, expert_ffn=6)
    a, b = KVCache(cfg, 2, 4, "cpu", torch.float32), KVCache(cfg, 2, 4, "cpu", torch.float32)
    a.fill_random(3, seed=7)
    torch.manual_seed(123)
    b.fill_random(3, seed=7)
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and a.k[:, :, :, :3].std() > 0.5
    assert (a.k[:, :, :, 3:] == 0).all()
