"""Exact minimum adversarial perturbation for a linear (softmax-regression) classifier.

For logits ``W^T x + b`` the smallest ‖r‖₂ with ``argmax(W^T (x + r) + b) = target`` inside the box is a
convex QP; we solve it with scipy's SLSQP (scipy is a test/benchmark extra, imported lazily). Used as
the oracle the attack is checked against.
"""

from __future__ import annotations

import numpy as np


def linear_min_l2(W, b, x, target: int, box: tuple[float, float] = (0.0, 1.0)) -> float:
    """Exact minimum ‖r‖₂ for ``W`` ``[D, K]``, ``b`` ``[K]``, flat image ``x`` ``[D]``."""
    from scipy.optimize import minimize

    W, b, x = (np.asarray(a, np.float64) for a in (W, b, x))
    cons = [{"type": "ineq", "fun": lambda r, j=j: (W[:, target] - W[:, j]) @ (x + r) + b[target] - b[j],
             "jac": lambda r, j=j: W[:, target] - W[:, j]} for j in range(W.shape[1]) if j != target]
    lo, hi = box
    sol = minimize(lambda r: r @ r, np.zeros_like(x), jac=lambda r: 2 * r, method="SLSQP",
                   bounds=list(zip(lo - x, hi - x)), constraints=cons,
                   options={"maxiter": 500, "ftol": 1e-14})
    # With ftol this tight SLSQP often ends with "positive directional derivative" at the optimum;
    # accept such an end only if the point is feasible.
    feasible = all(c["fun"](sol.x) >= -1e-6 for c in cons)
    if not (sol.success or feasible):
        raise RuntimeError(f"QP oracle did not converge: {sol.message}")
    return float(np.sqrt(sol.fun))
