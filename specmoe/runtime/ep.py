"""Expert parallelism over torch.distributed.

Placement (COMMON.md contract): `phy2log [num_moe_layers, num_physical]`; physical expert p
lives on EP rank `p // (num_physical // ep)`. Attention, norms, gates, dense layers and shared
experts are replicated (data-parallel attention); each rank holds only its physical slots.

One MoE layer on rank r with local tokens x [T, H]:
  1. gate -> logical topk_ids [T, k] -> physical ids [T, k] (`to_physical`);
  2. dispatch: one row per (token, destination rank) with at least one of the token's experts
     there (a token's experts on one rank share one copy), counts exchanged first with an
     all_to_all_single, then the rows and their per-row metadata (local slots and weights);
  3. experts: each rank sums w_j * expert_j(x) over the row's local slots;
  4. combine: the partial sums go back by the reverse all_to_all_single and are added per token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from specmoe.errors import InputError
from specmoe.runtime.model import MoEModel
from specmoe.runtime.timing import NullTimer


@dataclass
class EPLayout:
    """phy2log int [num_moe_layers, num_physical]; ep ranks; derived slot tables."""

    phy2log: np.ndarray
    ep: int
    num_experts: int
    slots_per_rank: int = field(init=False)
    phy2rank: np.ndarray = field(init=False)  # [num_physical]

    def __post_init__(self):
        p = np.asarray(self.phy2log)
        if p.ndim != 2 or p.shape[1] % self.ep:
            raise InputError("placement", "physical_to_logical_map",
                             f"expected [num_moe_layers, num_physical] with num_physical divisible "
                             f"by ep={self.ep}, got shape {list(p.shape)}")
        if p.min() < 0 or p.max() >= self.num_experts:
            raise InputError("placement", "physical_to_logical_map",
                             f"logical expert ids must be in [0, {self.num_experts})")
        for layer in range(p.shape[0]):
            missing = np.setdiff1d(np.arange(self.num_experts), p[layer])
            if missing.size:
                raise InputError("placement", f"physical_to_logical_map[{layer}]",
                                 f"logical experts {missing[:8].tolist()} have no physical slot")
        self.phy2log = p.astype(np.int64)
        self.slots_per_rank = p.shape[1] // self.ep
        self.phy2rank = np.arange(p.shape[1]) // self.slots_per_rank

    @classmethod
    def contiguous(cls, num_moe_layers: int, num_experts: int, ep: int) -> "EPLayout":
        return cls(np.tile(np.arange(num_experts), (num_moe_layers, 1)), ep, num_experts)

    def local_logical(self, layer: int, rank: int) -> np.ndarray:
        """Logical expert of each of `rank`'s slots, `[slots_per_rank]`."""
        s = self.slots_per_rank
        return self.phy2log[layer, rank * s:(rank + 1) * s]

    def to_physical(self, layer: int, topk_ids: np.ndarray, token2gpu: np.ndarray) -> np.ndarray:
        """Physical slot of each (token, choice), `[T, k]` from logical `[T, k]` (-1 kept).

        A replica on the token's own GPU wins; otherwise the replica on the rank with the least
        load so far, counting tokens in order (deterministic, the simulator's rule).
        """
        ids = np.asarray(topk_ids)
        out = np.full(ids.shape, -1, dtype=np.int64)
        reps = [np.flatnonzero(self.phy2log[layer] == e) for e in range(self.num_experts)]
        if all(len(r) == 1 for r in reps):
            single = np.array([r[0] for r in reps])
            valid = ids >= 0
            out[valid] = single[ids[valid]]
            return out
        load = np.zeros(self.ep, dtype=np.int64)
        for t in range(ids.shape[0]):
            for j, e in enumerate(ids[t]):
                if e < 0:
                    continue
                cand = reps[e]
                ranks = self.phy2rank[cand]
                own = cand[ranks == token2gpu[t]]
                p = own[0] if own.size else cand[np.argmin(load[ranks])]
                out[t, j] = p
                load[self.phy2rank[p]] += 1
        return out


def shard_model(full: MoEModel, layout: EPLayout, rank: int) -> MoEModel:
    """A rank's model: the full model's shared weights and copies of its slots' experts."""
    local = MoEModel(full.cfg, num_slots=layout.slots_per_rank)
    state = {k: v for k, v in full.state_dict().items() if ".experts." not in k}
    local.load_state_dict(state, strict=False)
    with torch.no_grad():
        for i in full.cfg.moe_layers:
            src, dst = full.layers[i].mlp.experts, local.layers[i].mlp.experts
            idx = torch.as_tensor(layout.local_logical(full.moe_index(i), rank))
            for name in ("w_gate", "w_up", "w_down"):
                getattr(dst, name).copy_(getattr(src, name)[idx])
    return local.to(next(full.parameters()).dtype)


def _a2a(out, inp, out_splits, in_splits, group):
    dist.all_to_all_single(out, inp, out_splits, in_splits, group=group)
    return out


class EPMoE:
    """The `moe_fn` for MoEModel.forward on one EP rank.

    `replay_phys(layer_index_among_moe, x) -> (phys_ids [T, k], weights [T, k])` forces the
    routing (routing replay); the gate still runs so its time is counted. `stats` collects
    bytes sent and local activation per layer.
    """

    def __init__(self, layout: EPLayout, rank: int, group=None, timer=None, replay=None,
                 recorder=None):
        self.layout, self.rank, self.group = layout, rank, group
        self.timer = timer or NullTimer()
        self.replay, self.recorder = replay, recorder
        self.stats: list[dict] = []

    def __call__(self, layer: int, block, x):
        t = self.timer
        moe_i = self.layout_index(block, layer)
        t.phase(layer, "gate")
        ids, w = block.gate(x)
        if self.recorder is not None:
            self.recorder.add(moe_i, ids, w)
        if self.replay is not None:
            phys, w = self.replay(moe_i, x)
        else:
            phys = self._phys_from_logical(moe_i, ids)
        t.phase(layer, "dispatch")
        recv_x, recv_meta, send_tok, splits = self.dispatch(x, phys, w)
        t.phase(layer, "experts")
        k = phys.shape[1]
        slots, rw = recv_meta[:, :k], recv_meta[:, k:].view(torch.float32)
        y = block.experts(recv_x, slots, rw)
        t.phase(layer, "combine")
        out = self.combine(y, send_tok, splits, x)
        if block.shared_expert is not None:
            t.phase(layer, "shared")
            out = out + block.shared(x)
        return out

    def layout_index(self, block, layer):
        return block.cfg.moe_layers.index(layer)

    def _phys_from_logical(self, moe_i, ids):
        own = np.full(ids.shape[0], self.rank)
        phys = self.layout.to_physical(moe_i, ids.cpu().numpy(), own)
        return torch.as_tensor(phys, device=ids.device)

    def dispatch(self, x, phys, w):
        """x [T, H], phys [T, k], w [T, k] -> received rows [R, H], meta int32 [R, 2k].

        One host synchronisation: the exchanged counts (needed as split sizes).
        """
        lay, ep = self.layout, self.layout.ep
        spr, (t, k) = lay.slots_per_rank, phys.shape
        dst = torch.where(phys >= 0, phys // spr, ep)  # [T, k]; ep = no expert
        hit = torch.zeros(t, ep + 1, dtype=torch.bool, device=x.device)
        hit = hit.scatter_(1, dst, True)[:, :ep]  # [T, ep]: token has an expert on rank d
        send_counts = hit.sum(0)  # [ep]
        if ep == 1:
            sc = rc = [t]
        else:
            recv_counts = torch.empty_like(send_counts)
            dist.all_to_all_single(recv_counts, send_counts, group=self.group)
            counts = torch.cat([send_counts, recv_counts]).tolist()
            sc, rc = counts[:ep], counts[ep:]
        order = torch.argsort((~hit.T).reshape(-1).to(torch.uint8), stable=True)[:sum(sc)]
        d_idx, t_idx = order // t, order % t  # rows ordered by destination rank
        pd, pw = phys[t_idx], w[t_idx].float()  # [S, k]
        mine = (pd >= 0) & (pd // spr == d_idx[:, None])
        local = torch.where(mine, pd - d_idx[:, None] * spr, -1)
        meta = torch.cat([local.to(torch.int32), torch.where(mine, pw, 0.0).view(torch.int32)], 1)
        h = x.shape[1]
        if ep == 1:
            recv_x, recv_meta = x[t_idx], meta
        else:  # one all-to-all: the metadata rides as extra columns of the rows (bit-cast)
            send = torch.cat([x[t_idx], meta.view(x.dtype).reshape(len(t_idx), -1)], 1)
            recv = _a2a(send.new_empty(sum(rc), send.shape[1]), send, rc, sc, self.group)
            recv_x = recv[:, :h]
            recv_meta = recv[:, h:].contiguous().view(torch.int32).reshape(-1, 2 * k)
        row_bytes = x.shape[1] * x.element_size()
        self.stats.append({"send_rows": sc, "recv_rows": rc,
                           "bytes_sent": sum(sc[d] for d in range(ep) if d != self.rank) * row_bytes,
                           "local_pairs": (dst == self.rank).sum(), "pairs": (dst < ep).sum()})
        return recv_x, recv_meta, t_idx, (sc, rc)

    def combine(self, y, send_tok, splits, x):
        """Partial sums y [R, H] back to their tokens; -> [T, H]."""
        sc, rc = splits
        if len(sc) == 1:
            back = y
        else:
            back = _a2a(y.new_empty(sum(sc), y.shape[1]), y.contiguous(), sc, rc, self.group)
        self.stats[-1]["combine_bytes_sent"] = int(
            sum(rc[d] for d in range(len(rc)) if d != self.rank)) * y.shape[1] * y.element_size()
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        out.index_add_(0, send_tok, back.float())
        return out.to(x.dtype)
