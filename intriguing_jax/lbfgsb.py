"""A batch-native, bound-constrained L-BFGS in pure JAX.

Minimises N independent problems ``f_i(x_i)`` subject to ``lo_i <= x_i <= hi_i`` together: every array is
batch-first, every iteration is exactly one batched value-and-gradient evaluation, and finished examples
are frozen by masks rather than by branching.

Method (a projected quasi-Newton method with an active set, in the spirit of L-BFGS-B):
  1. binding set: coordinates at a bound whose gradient points out of the box;
  2. direction: the L-BFGS two-loop recursion on the gradient restricted to the free coordinates
     (compact memory of the last ``history`` pairs, per-example circular buffers), falling back to the
     scaled projected gradient where that is not a descent direction;
  3. step: projected backtracking line search ``P(x + α d)`` from α = 1 with the Armijo condition along
     the projected path. Each example's trials are spread over the batch's iterations: an example whose
     trial is rejected keeps its direction and halves α at the next iteration, while the others take
     new steps, so no example pays for another's backtracking (at most ``ls_steps`` halvings);
  4. stop per example when the projected gradient's max-norm is below ``tol``, the relative decrease of
     f falls below ``ftol`` (scipy's ``factr`` criterion), after ``maxiter`` accepted steps, or when the
     line search cannot make progress.
Unlike jaxopt.LBFGSB under ``vmap``, no example walks its coordinates or its line search alone.

Compaction (``min_rows``): a batch would otherwise evaluate every row until its slowest example
converges. Once at most half the rows are still active they are gathered (with their memory, bounds and
per-row data ``aux``) into a batch of half the size, down to ``min_rows`` rows; finished rows are written
back. The sizes are static (N, N/2, N/4, ...), so this compiles to one loop per size.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# (x [M, D], aux: a pytree of per-row arrays [M, ...]) -> (f [M], g [M, D]); row i depends only on row i
ValueAndGrad = Callable[[jax.Array, Any], tuple[jax.Array, jax.Array]]


class Solution(NamedTuple):
    x: jax.Array  # [N, D] inside the bounds
    f: jax.Array  # [N]
    iterations: jax.Array  # [N] accepted steps of each example
    evaluations: jax.Array  # [] batched value-and-grad calls (of any size)
    row_evaluations: jax.Array  # [N] evaluations of each row (a finished row riding along counts)


class State(NamedTuple):
    """Per-row solver state (batch-first arrays; ``it`` counts the batch's evaluations)."""

    x: jax.Array
    f: jax.Array
    g: jax.Array
    s_mem: jax.Array  # [N, m, D]
    y_mem: jax.Array  # [N, m, D]
    sy: jax.Array  # [N, m, m] s_i·y_j between the stored pairs (slot order; 0 for an empty slot)
    yy: jax.Array  # [N, m, m] y_i·y_j
    ptr: jax.Array  # [N] next slot to write
    s_new: jax.Array  # [N, D] the last step's pair, written into the memory at the next iteration
    y_new: jax.Array  # [N, D]   (write-then-read lets XLA update the memory in place, not copy it)
    store: jax.Array  # [N] bool: s_new, y_new are to be stored
    direction: jax.Array  # [N, D] the search direction of a step in progress
    alpha: jax.Array  # [N] its next trial step length
    backtracks: jax.Array  # [N] halvings so far on this step (0: the next trial starts a new step)
    active: jax.Array  # [N] bool
    iters: jax.Array  # [N]
    row_evals: jax.Array  # [N]
    it: jax.Array  # [] iterations of the batch, one batched evaluation each


class _Rows(NamedTuple):
    """What travels with a row when the batch is compacted."""

    index: jax.Array  # [M] the row's index in the caller's batch
    lo: jax.Array
    hi: jax.Array
    aux: Any


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _two_loop(q, sq, yq, st: State, gamma0):
    """H·q for each example from its own memory: the L-BFGS two-loop recursion written as batched
    small-matrix algebra. Its 2m sequential dot/axpy passes over [N, D] become the projections of q on
    the memory (``sq``, ``yq`` [N, m], slot order), two unit-triangular m×m solves for the recursion's
    coefficients (from the pairs' inner products ``sy``, ``yy``, kept up to date as pairs are stored)
    and one combination."""
    m = sq.shape[1]
    order = (st.ptr[:, None] - 1 - jnp.arange(m)) % m  # [N, m] slots, newest pair first
    age = lambda a: jnp.take_along_axis(a, order, axis=1)  # noqa: E731
    pairs = lambda a: jnp.take_along_axis(  # noqa: E731
        jnp.take_along_axis(a, order[:, :, None], axis=1), order[:, None, :], axis=2)
    sq, yq = age(sq), age(yq)
    sy, yy = pairs(st.sy), pairs(st.yy)  # sy[j, i] = s_j·y_i in age order
    sy_jj = jnp.diagonal(sy, axis1=1, axis2=2)  # > 0 for stored pairs (curvature condition), else 0
    rho = jnp.where(sy_jj > 0, 1.0 / jnp.where(sy_jj > 0, sy_jj, 1.0), 0.0)  # empty slots drop out
    gamma = jnp.where(sy_jj[:, 0] > 0, sy[:, 0, 0] / jnp.maximum(yy[:, 0, 0], 1e-30), gamma0)
    # first loop, newest to oldest: a_j = rho_j (s_j·q − Σ_{i newer} a_i s_j·y_i)
    lower = rho[:, :, None] * jnp.tril(sy, -1)
    a = _unit_triangular_solve(lower, rho * sq, lower=True)
    # second loop, oldest to newest, on r = γ (q − Σ a_i y_i):
    # b_j = rho_j (y_j·r + Σ_{i older} (a_i − b_i) y_j·s_i)
    upper = rho[:, :, None] * jnp.triu(jnp.swapaxes(sy, 1, 2), 1)
    yr = gamma[:, None] * (yq - jnp.einsum("nji,ni->nj", yy, a))
    b = _unit_triangular_solve(upper, rho * yr + jnp.einsum("nji,ni->nj", upper, a), lower=False)
    # H·q = γ q − γ Σ a_i y_i + Σ (a_i − b_i) s_i, coefficients back in slot order
    slot = age  # j -> (ptr − 1 − j) mod m is its own inverse: the same gather puts ages back in slots
    return (gamma[:, None] * q + jnp.einsum("nmd,nm->nd", st.s_mem, slot(a - b))
            - jnp.einsum("nmd,nm->nd", st.y_mem, slot(gamma[:, None] * a)))


def _unit_triangular_solve(t, rhs, lower: bool):
    """x with (I + t) x = rhs for strictly triangular t [N, m, m] (forward/backward substitution)."""
    eye = jnp.eye(t.shape[-1], dtype=t.dtype)
    return jax.lax.linalg.triangular_solve(t + eye, rhs[:, :, None], left_side=True, lower=lower,
                                           unit_diagonal=True)[:, :, 0]


def _sizes(n: int, min_rows: int | None) -> list[int]:
    """The static batch sizes the rows are compacted through: n, n/2, ... down to min_rows."""
    sizes = [n]
    while min_rows is not None and sizes[-1] // 2 >= max(min_rows, 1):
        sizes.append(sizes[-1] // 2)
    return sizes


class Options(NamedTuple):
    """Stopping and line-search settings shared by every row (see ``minimize``)."""

    maxiter: int = 100
    tol: float = 1e-5
    ftol: float = 1e-7
    ls_steps: int = 10
    armijo: float = 1e-4


def _converged(x, g, lo, hi, tol):
    pg = jnp.clip(x - g, lo, hi) - x
    return jnp.max(jnp.abs(pg), axis=-1) <= tol


def init_rows(x0: jax.Array, f0: jax.Array, g0: jax.Array, lo, hi, *, history: int = 10,
              tol: float = 1e-5) -> State:
    """Solver state for rows starting at ``x0`` (inside ``[lo, hi]``) with values ``f0`` and gradients
    ``g0`` there; a row whose projected gradient is already below ``tol`` starts inactive."""
    n, d = x0.shape
    return State(x=x0, f=f0, g=g0, s_mem=jnp.zeros((n, history, d), x0.dtype),
                  y_mem=jnp.zeros((n, history, d), x0.dtype),
                  sy=jnp.zeros((n, history, history), x0.dtype), yy=jnp.zeros((n, history, history), x0.dtype),
                  ptr=jnp.zeros((n,), jnp.int32),
                  s_new=jnp.zeros_like(x0), y_new=jnp.zeros_like(x0), store=jnp.zeros((n,), bool),
                  direction=jnp.zeros_like(x0), alpha=jnp.ones((n,), x0.dtype),
                  backtracks=jnp.zeros((n,), jnp.int32), active=~_converged(x0, g0, lo, hi, tol),
                  iters=jnp.zeros((n,), jnp.int32), row_evals=jnp.ones((n,), jnp.int32),
                  it=jnp.zeros((), jnp.int32))


def restart_rows(st: State, mask: jax.Array, x0, f0, g0, lo, hi, *, tol: float = 1e-5) -> State:
    """Rows where ``mask`` start a new problem at ``x0`` (values ``f0``, gradients ``g0``) with an empty
    memory; the other rows are unchanged. The memory's contents are not cleared: a slot whose inner
    products in ``sy``/``yy`` are zero takes no part in the recursion."""
    m2, m1 = mask[:, None], mask[:, None, None]
    return st._replace(
        x=jnp.where(m2, x0, st.x), f=jnp.where(mask, f0, st.f), g=jnp.where(m2, g0, st.g),
        sy=jnp.where(m1, 0.0, st.sy), yy=jnp.where(m1, 0.0, st.yy), ptr=jnp.where(mask, 0, st.ptr),
        store=st.store & ~mask, alpha=jnp.where(mask, 1.0, st.alpha),
        backtracks=jnp.where(mask, 0, st.backtracks),
        active=jnp.where(mask, ~_converged(x0, g0, lo, hi, tol), st.active),
        iters=jnp.where(mask, 0, st.iters), row_evals=jnp.where(mask, 0, st.row_evals))


def _remember(st: State, q):
    """Stores the pending pairs (slot ``ptr`` of the memory, its row and column of sy, yy) and projects
    q on the updated memory; one pass over each buffer serves both. (1 / s·y, the recursion's rho, is
    read off the diagonal of sy.)"""
    m, history = st.x.shape[0], st.s_mem.shape[1]
    slot = jnp.where(st.store, st.ptr, history)  # out of range: not written (mode="drop")
    s_mem = st.s_mem.at[jnp.arange(m), slot].set(st.s_new, mode="drop")
    y_mem = st.y_mem.at[jnp.arange(m), slot].set(st.y_new, mode="drop")
    # one matrix-vector product per vector: on XLA:CPU several times faster than one product with a
    # [D, 2] or [D, 3] right-hand side (benchmarks/RESULTS.md)
    s_dots = jnp.stack([jnp.einsum("nmd,nd->nm", s_mem, v) for v in (st.y_new, q)], axis=-1)  # s_i·y_new, s_i·q
    y_dots = jnp.stack([jnp.einsum("nmd,nd->nm", y_mem, v) for v in (st.s_new, st.y_new, q)], axis=-1)
    row = jax.nn.one_hot(slot, history, dtype=bool)  # all False where nothing is stored
    sy = jnp.where(row[:, :, None], y_dots[:, None, :, 0], st.sy)  # sy[slot, j] = s_new·y_j
    sy = jnp.where(row[:, None, :], s_dots[:, :, 0, None], sy)  # sy[i, slot] = s_i·y_new
    yy = jnp.where(row[:, :, None], y_dots[:, None, :, 1], st.yy)
    yy = jnp.where(row[:, None, :], y_dots[:, :, 1, None], yy)
    st = st._replace(s_mem=s_mem, y_mem=y_mem, sy=sy, yy=yy,
                     ptr=jnp.where(st.store, (st.ptr + 1) % history, st.ptr))
    return st, s_dots[:, :, 1], y_dots[:, :, 2]


def propose(st: State, lo, hi) -> tuple[State, jax.Array]:
    """The next trial point of every row: a new quasi-Newton step where the last one was accepted, the
    halved step along the same direction where it was rejected. Inactive rows get a point too (ignored
    by ``accept``)."""
    x, g = st.x, st.g
    binding = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
    g_free = jnp.where(binding, 0.0, g)
    gamma0 = 1.0 / jnp.maximum(jnp.linalg.norm(g_free, axis=-1), 1e-12)
    st, sq, yq = _remember(st, g_free)
    fresh = -jnp.where(binding, 0.0, _two_loop(g_free, sq, yq, st, gamma0))
    fresh = jnp.where((_dot(fresh, g) < 0)[:, None], fresh, -gamma0[:, None] * g_free)
    backtracking = st.backtracks > 0
    direction = jnp.where(backtracking[:, None], st.direction, fresh)
    alpha = jnp.where(backtracking, st.alpha, 1.0)
    xt = jnp.clip(x + alpha[:, None] * direction, lo, hi)
    return st._replace(direction=direction, alpha=alpha), xt


def accept(st: State, xt, ft, gt, lo, hi, opts: Options = Options()) -> tuple[State, jax.Array]:
    """Takes each active row's trial ``xt`` (values ``ft``, gradients ``gt``) if it passes the Armijo
    test, else halves its step for the next ``propose``. Returns the new state and which rows moved
    to ``xt``; rows that converge, reach ``maxiter`` or cannot make progress become inactive."""
    x, f, g = st.x, st.f, st.g
    ok = jnp.isfinite(ft) & (ft <= f + opts.armijo * _dot(g, xt - x))
    take = st.active & ok
    rejected = st.active & ~ok
    x_new = jnp.where(take[:, None], xt, x)
    f_new = jnp.where(take, ft, f)
    g_new = jnp.where(take[:, None], gt, g)
    s, y = x_new - x, g_new - g
    store = take & (_dot(s, y) > 1e-10 * jnp.maximum(_dot(y, y), 1e-30))
    small_change = (f - f_new) <= opts.ftol * jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
    iters = st.iters + take.astype(jnp.int32)
    backtracks = jnp.where(rejected, st.backtracks + 1, 0)
    finished = take & (small_change | _converged(x_new, g_new, lo, hi, opts.tol) | (iters >= opts.maxiter))
    gave_up = rejected & (backtracks > opts.ls_steps)
    return st._replace(x=x_new, f=f_new, g=g_new, s_new=s, y_new=y, store=store, alpha=0.5 * st.alpha,
                       backtracks=backtracks, active=st.active & ~finished & ~gave_up, iters=iters,
                       row_evals=st.row_evals + 1, it=st.it + 1), take


def minimize(value_and_grad: ValueAndGrad, x0: jax.Array, lo: jax.Array, hi: jax.Array, aux: Any = None,
             *, maxiter: int = 100, history: int = 10, tol: float = 1e-5, ftol: float = 1e-7,
             ls_steps: int = 10, armijo: float = 1e-4, min_rows: int | None = None) -> Solution:
    """Minimises N independent box-constrained problems together, one batched evaluation per iteration.

    A general batched L-BFGS-B: each row ``i`` minimises its own ``f_i(x_i)`` over ``lo_i <= x_i <= hi_i``
    with its own memory, line search and stopping test, so a row's path does not depend on its
    batch-mates. Usable under ``jax.jit`` (every size is static) and with any row-separable objective.

    Args:
      value_and_grad: ``(x [M, D], aux) -> (f [M], g [M, D])``, row-separable: row i of f and g depends
        only on row i of x and of ``aux``.
      x0: ``[N, D]`` starting points (clipped into the box).
      lo, hi: bounds, broadcastable to ``[N, D]`` (scalars, per-coordinate or per-row).
      aux: a pytree of per-row arrays ``[N, ...]`` passed to ``value_and_grad`` (gathered with the rows
        when the batch is compacted).
      maxiter: accepted steps per row at most.
      history: L-BFGS memory (pairs kept per row).
      tol: stop a row when its projected gradient's max-norm is below this.
      ftol: stop a row when the relative decrease of f falls below this (scipy's ``factr · eps``).
      ls_steps: halvings of the step before a row gives up.
      armijo: sufficient-decrease constant of the line search.
      min_rows: compact the still-active rows into half-size batches down to this many rows (None:
        never). Changes the work, not the answer.

    Returns:
      ``Solution`` with the rows' final points (inside the box), values, accepted steps and evaluations.

    References:
      Byrd, Lu, Nocedal, Zhu (1995), A limited memory algorithm for bound constrained optimization;
      Nocedal & Wright (2006), Numerical Optimization, Alg. 7.4 (two-loop recursion) and Sec. 16.7
      (gradient projection).
    """
    opts = Options(maxiter=maxiter, tol=tol, ftol=ftol, ls_steps=ls_steps, armijo=armijo)
    n, d = x0.shape
    lo, hi = jnp.broadcast_to(lo, x0.shape), jnp.broadcast_to(hi, x0.shape)
    x0 = jnp.clip(x0, lo, hi)
    f0, g0 = value_and_grad(x0, aux)
    st = init_rows(x0, f0, g0, lo, hi, history=history, tol=tol)

    def iterate(st: State, rows: _Rows) -> State:
        st, xt = propose(st, rows.lo, rows.hi)
        ft, gt = value_and_grad(xt, rows.aux)
        return accept(st, xt, ft, gt, rows.lo, rows.hi, opts)[0]

    # every row's trials: at most maxiter steps, each with at most ls_steps halvings
    max_evals = maxiter * (ls_steps + 1)
    rows = _Rows(index=jnp.arange(n), lo=lo, hi=hi, aux=aux)
    out = (st.x, st.f, st.iters, st.row_evals)
    sizes = _sizes(n, min_rows)
    for smaller in sizes[1:] + [0]:
        # run at this size until at most `smaller` rows are active (at the last size: until none)
        def cond(st, smaller=smaller):
            return (jnp.sum(st.active) > smaller) & (st.it < max_evals)

        st = jax.lax.while_loop(cond, lambda st, rows=rows: iterate(st, rows), st)
        out = tuple(o.at[rows.index].set(v) for o, v in zip(out, (st.x, st.f, st.iters, st.row_evals)))
        if smaller:
            keep = jnp.argsort(~st.active, stable=True)[:smaller]  # every active row, then finished ones
            st = st._replace(**{f: getattr(st, f)[keep] for f in st._fields if f != "it"})
            rows = jax.tree.map(lambda a: a[keep], rows)
    x, f, iters, row_evals = out
    return Solution(x=x, f=f, iterations=iters, evaluations=st.it + 1, row_evaluations=row_evals)
