"""A batch-native, bound-constrained L-BFGS in pure JAX.

Minimises N independent problems ``f_i(x_i)`` subject to ``lo_i <= x_i <= hi_i`` together: every array is
batch-first, each iteration costs one batched value-and-gradient evaluation (plus backtracking trials
only where a step is rejected), and finished examples are frozen by masks rather than by branching.

Method (a projected quasi-Newton method with an active set, in the spirit of L-BFGS-B):
  1. binding set: coordinates at a bound whose gradient points out of the box;
  2. direction: the L-BFGS two-loop recursion on the gradient restricted to the free coordinates
     (compact memory of the last ``history`` pairs, per-example circular buffers), falling back to the
     scaled projected gradient where that is not a descent direction;
  3. step: projected backtracking line search ``P(x + α d)`` from α = 1 with the Armijo condition along
     the projected path, a fixed maximum number of halvings;
  4. stop per example when the projected gradient's max-norm is below ``tol`` or the relative decrease
     of f falls below ``ftol`` (scipy's ``factr`` criterion) or the line search cannot make progress.
Unlike jaxopt.LBFGSB under ``vmap``, no example walks its coordinates or its line search alone.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

ValueAndGrad = Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # [N, D] -> ([N], [N, D])


class Solution(NamedTuple):
    x: jax.Array  # [N, D] inside the bounds
    f: jax.Array  # [N]
    iterations: jax.Array  # [N] iterations each example took
    evaluations: jax.Array  # [] batched value-and-grad evaluations performed


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    s_mem: jax.Array  # [N, m, D]
    y_mem: jax.Array  # [N, m, D]
    rho: jax.Array  # [N, m]
    ptr: jax.Array  # [N] next slot to write
    count: jax.Array  # [N] valid pairs
    active: jax.Array  # [N] bool
    iters: jax.Array  # [N]
    evals: jax.Array  # []
    it: jax.Array  # []


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _two_loop(q, st: _State, gamma0):
    """H·q for each example from its own memory (newest pair first)."""
    n, m = st.rho.shape
    rows = jnp.arange(n)
    alphas = []
    for j in range(m):
        idx = (st.ptr - 1 - j) % m
        valid = j < st.count
        s, y, rho = st.s_mem[rows, idx], st.y_mem[rows, idx], st.rho[rows, idx]
        a = jnp.where(valid, rho * _dot(s, q), 0.0)
        q = q - a[:, None] * y
        alphas.append((a, idx, valid))
    newest = (st.ptr - 1) % m
    s_n, y_n = st.s_mem[rows, newest], st.y_mem[rows, newest]
    gamma = jnp.where(st.count > 0, _dot(s_n, y_n) / jnp.maximum(_dot(y_n, y_n), 1e-30), gamma0)
    z = gamma[:, None] * q
    for a, idx, valid in reversed(alphas):
        s, y, rho = st.s_mem[rows, idx], st.y_mem[rows, idx], st.rho[rows, idx]
        b = rho * _dot(y, z)
        z = z + jnp.where(valid, a - b, 0.0)[:, None] * s
    return z


def minimize(value_and_grad: ValueAndGrad, x0: jax.Array, lo: jax.Array, hi: jax.Array, *,
             maxiter: int = 100, history: int = 10, tol: float = 1e-5, ftol: float = 1e-7,
             ls_steps: int = 10, armijo: float = 1e-4) -> Solution:
    """Minimises each row's objective over its box. ``value_and_grad(x) -> (f [N], g [N, D])`` must be
    row-separable (row i of g depends only on row i of x)."""
    n, d = x0.shape
    x0 = jnp.clip(x0, lo, hi)
    f0, g0 = value_and_grad(x0)
    st = _State(x=x0, f=f0, g=g0, s_mem=jnp.zeros((n, history, d), x0.dtype),
                y_mem=jnp.zeros((n, history, d), x0.dtype), rho=jnp.zeros((n, history), x0.dtype),
                ptr=jnp.zeros((n,), jnp.int32), count=jnp.zeros((n,), jnp.int32),
                active=jnp.ones((n,), bool), iters=jnp.zeros((n,), jnp.int32),
                evals=jnp.ones((), jnp.int32), it=jnp.zeros((), jnp.int32))

    def converged(x, g):
        pg = jnp.clip(x - g, lo, hi) - x
        return jnp.max(jnp.abs(pg), axis=-1) <= tol

    st = st._replace(active=~converged(x0, g0))

    def body(st: _State) -> _State:
        x, f, g = st.x, st.f, st.g
        binding = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
        g_free = jnp.where(binding, 0.0, g)
        gamma0 = 1.0 / jnp.maximum(jnp.linalg.norm(g_free, axis=-1), 1e-12)
        direction = -jnp.where(binding, 0.0, _two_loop(g_free, st, gamma0))
        descent = _dot(direction, g) < 0
        direction = jnp.where(descent[:, None], direction, -gamma0[:, None] * g_free)

        def ls_cond(c):
            _, _, _, _, done, k = c
            return jnp.any(~done) & (k < ls_steps)

        def ls_body(c):
            alpha, x_new, f_new, g_new, done, k = c
            xt = jnp.clip(x + alpha[:, None] * direction, lo, hi)
            ft, gt = value_and_grad(xt)
            ok = jnp.isfinite(ft) & (ft <= f + armijo * _dot(g, xt - x))
            take = ~done & ok
            return (jnp.where(done | ok, alpha, 0.5 * alpha), jnp.where(take[:, None], xt, x_new),
                    jnp.where(take, ft, f_new), jnp.where(take[:, None], gt, g_new), done | ok, k + 1)

        init = (jnp.ones((n,), x.dtype), x, f, g, ~st.active, jnp.zeros((), jnp.int32))
        _, x_new, f_new, g_new, accepted, k = jax.lax.while_loop(ls_cond, ls_body, init)
        moved = st.active & accepted
        s, y = x_new - x, g_new - g
        sy = _dot(s, y)
        store = moved & (sy > 1e-10 * jnp.maximum(_dot(y, y), 1e-30))
        rows = jnp.arange(n)
        slot = st.ptr
        s_mem = st.s_mem.at[rows, slot].set(jnp.where(store[:, None], s, st.s_mem[rows, slot]))
        y_mem = st.y_mem.at[rows, slot].set(jnp.where(store[:, None], y, st.y_mem[rows, slot]))
        rho = st.rho.at[rows, slot].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0), st.rho[rows, slot]))
        small_change = (f - f_new) <= ftol * jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
        active = st.active & accepted & ~small_change & ~converged(x_new, g_new)
        return _State(x=x_new, f=f_new, g=g_new, s_mem=s_mem, y_mem=y_mem, rho=rho,
                      ptr=jnp.where(store, (st.ptr + 1) % history, st.ptr),
                      count=jnp.where(store, jnp.minimum(st.count + 1, history), st.count),
                      active=active, iters=st.iters + st.active.astype(jnp.int32),
                      evals=st.evals + k, it=st.it + 1)

    st = jax.lax.while_loop(lambda s: jnp.any(s.active) & (s.it < maxiter), body, st)
    return Solution(x=st.x, f=st.f, iterations=st.iters, evaluations=st.evals)
