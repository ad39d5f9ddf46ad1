"""Time decode steps of an EP model with routing replay, one case at a time, on every rank.

A case: `ids [N, L, k]` logical routing and `weights` for the N = ep * batch tokens of the
step, `token2gpu [N]`, and a context length. Each rank runs its tokens' step; CUDA events
time every phase of every layer; the step time is the slowest rank's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from specmoe.runtime.ep import EPLayout, EPMoE
from specmoe.runtime.model import KVCache, MoEModel, init_random, set_experts_backend
from specmoe.runtime.replay import RoutingReplay
from specmoe.runtime.timing import PhaseTimer

MOE_PHASES = ("gate", "dispatch", "experts", "combine", "shared")


def build_rank_model(cfg, slots_per_rank: int, device, seed: int = 0,
                     experts: str = "torch") -> MoEModel:
    """Random bf16 weights at full size, made on the device (std 0.02: activations stay finite);
    experts on the torch path or the Triton kernel (model.Experts.set_backend)."""
    with torch.device(device):
        model = MoEModel(cfg, num_slots=slots_per_rank).to(torch.bfloat16)
    return set_experts_backend(init_random(model, seed=seed), experts).eval()


def _allreduce_max(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


@torch.no_grad()
def run_case(model: MoEModel, layout: EPLayout, rank: int, device, ids: np.ndarray,
             weights: np.ndarray, token2gpu: np.ndarray, context: int, steps: int = 10,
             warmup: int = 3, graphs: bool = True) -> dict:
    """Median step and per-(layer, phase) times (slowest rank), bytes and local activation.

    graphs (CUDA only): the sync-free replay step captured as CUDA graphs (graphstep.py);
    otherwise the eager live path (ep.EPMoE) with the replayed routing.
    """
    mine = np.flatnonzero(token2gpu == rank)
    phys = np.stack([layout.to_physical(i, ids[:, i], token2gpu) for i in range(ids.shape[1])], 1)
    b = len(mine)
    cache = KVCache(model.cfg, max(b, 1), context + 1, device, torch.bfloat16)
    cache.fill_random(context, seed=rank)
    graphs = graphs and torch.device(device).type == "cuda"
    if graphs:
        from specmoe.runtime.graphstep import ReplayStep
        step = ReplayStep(model, layout, rank, device, phys, weights, token2gpu, cache, context)
        captured = step.capture()
        run, mode = step.run_timed, ("cuda_graphs" if captured else "sync_free_eager")
    else:
        replay = RoutingReplay(phys[mine], weights[mine], device)
        g = torch.Generator(device=device).manual_seed(rank)
        input_ids = torch.randint(0, model.cfg.vocab_size, (b, 1), device=device, generator=g)
        mode, moe = "eager", None

        def run():
            nonlocal moe
            cache.length = context
            timer = PhaseTimer(device)
            moe = EPMoE(layout, rank, timer=timer, replay=replay)
            model(input_ids, cache=cache, moe_fn=moe, timer=timer)
            timer.stop()
            return timer.rows()
    per_step = []
    for s in range(warmup + steps):
        if dist.is_initialized():
            dist.barrier()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        rows = run()
        if s >= warmup:
            per_step.append(rows)
    capture_error = None
    if graphs:
        sent, local, pairs = step.bytes_sent, step.local_pairs, step.pairs
        capture_error = step.capture_error
        step.close()
        del step, run
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    else:
        sent = sum(st["bytes_sent"] + st.get("combine_bytes_sent", 0) for st in moe.stats)
        local = sum(int(st["local_pairs"]) for st in moe.stats)
        pairs = sum(int(st["pairs"]) for st in moe.stats)
    keys = [(layer, ph) for layer, ph, _ in per_step[0]]
    mat = np.array([[us for _, _, us in r] for r in per_step])  # [steps, phases]
    flat = _allreduce_max(mat.reshape(-1).tolist() + mat.sum(1).tolist(), device)
    mat_max = np.array(flat[:mat.size]).reshape(mat.shape)
    step_max = np.array(flat[mat.size:])
    phases = {}
    for j, (layer, ph) in enumerate(keys):
        phases.setdefault(str(layer), {})
        phases[str(layer)][ph] = phases[str(layer)].get(ph, 0.0) + float(np.median(mat_max[:, j]))
    moe_layers = list(model.cfg.moe_layers)
    layer_of = np.array([layer for layer, _ in keys])
    is_moe_phase = np.array([ph in MOE_PHASES for _, ph in keys])
    # whole MoE layer (attention + MoE phases, as the simulator's moe_layer_us) and MoE block only
    whole = np.stack([mat_max[:, layer_of == i].sum(1) for i in moe_layers], 1)  # [steps, L_moe]
    block = np.stack([mat_max[:, (layer_of == i) & is_moe_phase].sum(1) for i in moe_layers], 1)
    return {"step_us": float(np.median(step_max)), "step_us_all": step_max.tolist(),
            "moe_layer_us": float(np.median(whole.mean(1))),
            "moe_block_us": float(np.median(block.mean(1))), "phases": phases,
            "tokens_local": b, "bytes_sent_rank": _gather_list(sent, device), "timing": mode,
            **({"capture_error": capture_error} if capture_error else {}),
            "local_activation_rate_rank": _gather_list(local / max(pairs, 1), device)}


def _gather_list(value: float, device) -> list[float]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [float(value)]
    t = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    t[dist.get_rank()] = float(value)
    dist.all_reduce(t)
    return t.tolist()
