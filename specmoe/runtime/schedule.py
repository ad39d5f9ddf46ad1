"""Token (request) schedules: the GPU each decode token's request runs on (`token2gpu`).

Shuffling is lossless: a token's output does not depend on the GPU that runs its attention
(tests/runtime/test_ep.py). The runtime executes the plan's `token_schedule.policy`:
  - `none`: round robin, token t on GPU t % ep;
  - `dp-request` (speculative request shuffling with DP attention): the planner's
    `shuffle.dp_schedule` over the whole replayed trace gives every request a home GPU (its
    first tokens' routing, summed over layers, scores the GPUs); a step's tokens run at
    their requests' homes.
`tp-token` shuffles tokens between TP-attention groups; the runtime's attention is DP only.
"""
from __future__ import annotations

import numpy as np

from specmoe.errors import InputError


def token2gpu(policy: str, rows: np.ndarray, trace, phy2log: np.ndarray, ep: int,
              source="token_schedule") -> np.ndarray:
    """`[len(rows)]` GPU of each trace row of the step."""
    if policy == "none":
        return np.arange(len(rows)) % ep
    if policy == "dp-request":
        from specmoe.planner.shuffle import dp_schedule
        return dp_schedule(trace, phy2log, ep)[rows].astype(np.int64)
    raise InputError(source, "token_schedule.policy",
                     f"the runtime runs DP attention: expected none or dp-request, got {policy!r}"
                     " (plan with --attention dp)")
