"""Exact expert grouping for one layer as a MILP (scipy.optimize.milp, HiGHS), to measure the
heuristics' optimality gap on small instances.

Variables: x[e, g] = 1 if expert e is on rank g (binary); y[t, g] = 1 if token t needs rank g
(continuous in [0, 1], integral at the optimum since y[t, g] >= x[e, g] for each of t's experts).
minimise   sum_t sum_{g != home[t]} y[t, g]       (remote copies; every g when home is None)
subject to sum_g x[e, g] = 1;  sum_e x[e, g] = cap[g];  sum_e w[e] x[e, g] <= bound * mean;
           y[t, g] - x[e, g] >= 0 for every expert e of token t.
With home None the ranks are interchangeable, so expert 0 is fixed on rank 0.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp


def exact_layer(ids_l: np.ndarray, num_experts: int, cap: np.ndarray, weight: np.ndarray,
                bound: float, home: np.ndarray | None = None, time_limit: float = 60.0):
    """Optimal e2r `[E]` and its objective for `ids_l [T, K]`; also HiGHS's status and the
    proven lower bound (equal to the objective when solved to optimality)."""
    T, K = ids_l.shape
    E, G = num_experts, len(cap)
    nx, ny = E * G, T * G
    c = np.zeros(nx + ny)
    remote = np.ones((T, G)) if home is None else (np.arange(G)[None, :] != home[:, None])
    c[nx:] = remote.ravel()
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def add(cs, vs, lb, ub):
        nonlocal r
        rows.extend([r] * len(cs)); cols.extend(cs); vals.extend(vs); lo.append(lb); hi.append(ub)
        r += 1
    for e in range(E):
        add([e * G + g for g in range(G)], [1.0] * G, 1, 1)
    limit = bound * weight.sum() / G
    for g in range(G):
        add([e * G + g for e in range(E)], [1.0] * E, cap[g], cap[g])
        add([e * G + g for e in range(E)], list(map(float, weight)), -np.inf, limit)
    for t in range(T):
        for e in set(int(v) for v in ids_l[t] if v >= 0):
            for g in range(G):
                add([nx + t * G + g, e * G + g], [1.0, -1.0], 0, np.inf)
    A = sp.csr_matrix((vals, (rows, cols)), shape=(r, nx + ny))
    lb, ub = np.zeros(nx + ny), np.ones(nx + ny)
    if home is None:
        lb[0] = 1.0  # x[0, 0] = 1 breaks the rank symmetry
    integrality = np.r_[np.ones(nx), np.zeros(ny)]
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
               bounds=Bounds(lb, ub), options=dict(time_limit=time_limit))
    if res.x is None:
        return None, np.inf, res.status, -np.inf
    e2r = res.x[:nx].reshape(E, G).argmax(1)
    dual = getattr(res, "mip_dual_bound", None)
    return e2r, float(res.fun), res.status, float(res.fun if dual is None else dual)
