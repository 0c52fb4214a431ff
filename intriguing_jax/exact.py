"""Exact minimum adversarial perturbation for a linear (softmax-regression) classifier.

For logits ``W^T x + b`` the smallest ‖r‖₂ with ``argmax(W^T (x + r) + b) = target`` inside the box is a
convex QP:

    minimise ‖r‖²  subject to  a_j·(x + r) + c_j ≥ 0 (each j ≠ target),  lo − x ≤ r ≤ hi − x,

with ``a_j = W[:, target] − W[:, j]``, ``c_j = b[target] − b[j]``. It is solved in its dual: for
multipliers μ ≥ 0 the minimising r is ``clip(Σ μ_j a_j / 2, lo − x, hi − x)`` and the dual function
g(μ) = ‖r‖² − Σ μ_j (a_j·(x + r) + c_j) is concave, differentiable and has K − 1 variables; scipy's L-BFGS-B
maximises it in float64 (milliseconds per image, where SLSQP on the 784 primal variables takes about a
minute). Weak duality makes √g(μ) a certified lower bound on the minimum for *any* μ ≥ 0, and r(μ*) is the
minimiser once it is feasible: the answer carries both, so its precision is checked, not assumed. SLSQP
on the primal (``method="slsqp"``) is kept as an independent cross-check. scipy is a test/benchmark extra,
imported lazily.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LinearMinimum(NamedTuple):
    distance: float  # ‖r‖₂ of the returned perturbation
    lower_bound: float  # √ of the dual value: no perturbation reaching the target inside the box is shorter
    perturbation: np.ndarray  # [D] r, inside the box
    violation: float  # largest amount by which r misses a margin constraint (0 when feasible)


def _constraints(W, b, x, target):
    W, b, x = (np.asarray(a, np.float64) for a in (W, b, x))
    if W.ndim != 2 or b.shape != (W.shape[1],) or x.shape != (W.shape[0],):
        raise ValueError(f"need W [D, K], b [K], x [D]; got {W.shape}, {b.shape}, {x.shape}")
    if not 0 <= target < W.shape[1]:
        raise ValueError(f"target {target} is not a class of a {W.shape[1]}-class model")
    others = [j for j in range(W.shape[1]) if j != target]
    return W[:, target, None] - W[:, others], b[target] - b[others], x  # A [D, K-1], c [K-1]


def linear_minimum(W, b, x, target: int, box: tuple[float, float] = (0.0, 1.0)) -> LinearMinimum:
    """The minimum-‖r‖₂ perturbation that makes a linear classifier predict ``target``, with a certificate.

    Args:
      W: ``[D, K]`` weights; b: ``[K]`` biases; x: ``[D]`` flat image inside ``box``; target: the class.
      box: pixel bounds ``(lo, hi)``.

    Returns:
      ``LinearMinimum``: the perturbation, its length, the dual lower bound on the minimum and the
      perturbation's constraint violation. ``distance − lower_bound`` bounds the error of ``distance``.

    Raises:
      RuntimeError: when no point of the box makes ``target`` win (the dual is unbounded).
    """
    from scipy.optimize import minimize

    A, c, x = _constraints(W, b, x, target)
    lo, hi = box[0] - x, box[1] - x
    margin_at_x = x @ A + c

    def r_of(mu):
        return np.clip(A @ mu / 2, lo, hi)

    def neg_dual(mu):
        r = r_of(mu)
        m = margin_at_x + r @ A
        return -(r @ r - mu @ m), m  # ∂g/∂μ = −m

    mu0 = np.zeros(A.shape[1])
    sol = minimize(neg_dual, mu0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(mu0),
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-16, "gtol": 1e-13})
    r = r_of(sol.x)
    violation = float(max(0.0, -np.min(margin_at_x + r @ A)))
    reach = float(np.linalg.norm(hi - lo))  # no perturbation in the box is longer than its diagonal
    if violation > 1e-6 * (1 + np.abs(margin_at_x).max()) and -sol.fun > reach ** 2:
        raise RuntimeError(f"target {target} cannot be reached inside the box (dual unbounded)")
    return LinearMinimum(float(np.linalg.norm(r)), float(np.sqrt(max(-sol.fun, 0.0))), r, violation)


def linear_min_l2(W, b, x, target: int, box: tuple[float, float] = (0.0, 1.0), method: str = "dual") -> float:
    """Exact minimum ‖r‖₂ for ``W`` ``[D, K]``, ``b`` ``[K]``, flat image ``x`` ``[D]``.

    Args:
      method: ``"dual"`` (``linear_minimum``; checked to be within 1e-6 relative of its own lower bound)
        or ``"slsqp"`` (scipy's SLSQP on the primal; slow, an independent cross-check).

    Returns:
      The minimum distance.
    """
    if method == "dual":
        m = linear_minimum(W, b, x, target, box)
        if m.violation > 1e-6 or m.distance - m.lower_bound > 1e-6 * max(m.distance, 1e-12):
            raise RuntimeError(f"QP oracle not converged: distance {m.distance}, lower bound {m.lower_bound}, "
                               f"violation {m.violation}")
        return m.distance
    if method != "slsqp":
        raise ValueError(f"method must be 'dual' or 'slsqp', got {method!r}")
    from scipy.optimize import minimize

    A, c, x = _constraints(W, b, x, target)
    cons = [{"type": "ineq", "fun": lambda r, j=j: A[:, j] @ (x + r) + c[j], "jac": lambda r, j=j: A[:, j]}
            for j in range(A.shape[1])]
    lo, hi = box
    sol = minimize(lambda r: r @ r, np.zeros_like(x), jac=lambda r: 2 * r, method="SLSQP",
                   bounds=list(zip(lo - x, hi - x)), constraints=cons,
                   options={"maxiter": 500, "ftol": 1e-14})
    # With ftol this tight SLSQP often ends with "positive directional derivative" at the optimum;
    # accept such an end only if the point is feasible.
    feasible = all(con["fun"](sol.x) >= -1e-6 for con in cons)
    if not (sol.success or feasible):
        raise RuntimeError(f"QP oracle did not converge: {sol.message}")
    return float(np.sqrt(sol.fun))
