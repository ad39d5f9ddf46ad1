"""Recording the gate's choices writes a routing trace that loads back and replays exactly."""
import numpy as np
import torch

from specmoe.runtime.config import MoEConfig
from specmoe.runtime.ep import EPLayout, EPMoE
from specmoe.runtime.model import MoEModel, init_random
from specmoe.runtime.replay import Recorder, RoutingReplay
from specmoe.traces.routing import load, save


def test_record_save_load_replay_roundtrip(tmp_path):
    import torch.distributed as dist
    from specmoe.runtime.launch import free_port
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        cfg = MoEConfig(vocab_size=40, hidden_size=16, num_layers=3, num_heads=2, num_kv_heads=2,
                        head_dim=8, num_experts=5, top_k=2, expert_ffn=8, dense_ffn=8, dense_layers=(0,))
        m = init_random(MoEModel(cfg), seed=3, std=0.3).eval()
        ids = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(0))
        lay = EPLayout.contiguous(2, 5, 1)
        rec = Recorder()
        with torch.no_grad():
            ref = m(ids, moe_fn=EPMoE(lay, 0, recorder=rec))
        path = tmp_path / "rec.npz"
        save(rec.trace("tiny", 5), path)
        tr = load(path)
        assert tr.topk_ids.shape == (12, 2, 2) and tr.meta["phase"] == "decode"
        phys = np.stack([lay.to_physical(i, tr.topk_ids[:, i], np.zeros(12, int)) for i in range(2)], 1)
        replay = RoutingReplay(phys, tr.topk_weights, "cpu")
        with torch.no_grad():
            got = m(ids, moe_fn=EPMoE(lay, 0, replay=replay))
        assert torch.allclose(got, ref, atol=1e-5)
        # replaying a different routing changes the output: the replay is really used
        with torch.no_grad():
            other = m(ids, moe_fn=EPMoE(lay, 0, replay=RoutingReplay((phys + 1) % 5, tr.topk_weights, "cpu")))
        assert (other - ref).abs().max() > 1e-3
    finally:
        dist.destroy_process_group()
