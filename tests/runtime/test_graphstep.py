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
