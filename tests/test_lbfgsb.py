"""The batch-native L-BFGS-B solver on problems with known minimisers, and against jaxopt.LBFGSB."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intriguing_jax import lbfgsb


def box_quadratic(n=12, d=30, seed=0):
    """Rows ``0.5 Σ_j a_j (x_j − c_j)²`` over [−1, 1]^d: the minimiser is clip(c, −1, 1). The spread
    of curvatures differs by row, so rows converge after different numbers of steps."""
    rng = np.random.default_rng(seed)
    spread = np.linspace(0.2, 2.0, n)[:, None]  # row i: curvatures in [1, 10^spread_i]
    a = 10.0 ** (rng.uniform(0, 1, (n, d)) * spread)
    c = rng.uniform(-2, 2, (n, d))
    return jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)


def quadratic_vg(x, aux):
    a, c = aux  # f is shifted to be 0 at the minimiser, so that float32 resolves progress down to it
    return 0.5 * jnp.sum(a * ((x - c) ** 2 - (jnp.clip(c, -1, 1) - c) ** 2), -1), a * (x - c)


KW = dict(maxiter=500, tol=1e-5, ftol=0.0)


@pytest.mark.parametrize("min_rows", [None, 2])
def test_reaches_the_box_constrained_minimiser(min_rows):
    a, c = box_quadratic()
    x0 = jnp.zeros_like(c)
    sol = jax.jit(lambda x0, a, c: lbfgsb.minimize(quadratic_vg, x0, -1.0, 1.0, (a, c), min_rows=min_rows,
                                                   **KW))(x0, a, c)
    np.testing.assert_allclose(sol.x, np.clip(c, -1, 1), atol=1e-5)
    assert np.all(np.asarray(sol.iterations) < KW["maxiter"])  # converged, not stopped by the cap
    assert np.all((np.asarray(sol.x) >= -1) & (np.asarray(sol.x) <= 1))


def test_compaction_changes_the_work_not_the_answer():
    a, c = box_quadratic(n=16)
    x0 = jnp.zeros_like(c)
    full = lbfgsb.minimize(quadratic_vg, x0, -1.0, 1.0, (a, c), **KW)
    compact = lbfgsb.minimize(quadratic_vg, x0, -1.0, 1.0, (a, c), min_rows=2, **KW)
    np.testing.assert_allclose(compact.x, full.x, atol=1e-6)
    np.testing.assert_array_equal(compact.iterations, full.iterations)
    # without compaction every row is evaluated as often as the slowest one
    assert np.all(np.asarray(full.row_evaluations) == int(full.evaluations))
    assert int(compact.row_evaluations.sum()) < 0.8 * int(full.row_evaluations.sum())


def test_rows_are_independent_of_their_batch_mates():
    """Each row's trials (including its backtracking) are its own: alone or in a compacted batch, the
    same path. In float64, so that the comparison is not blurred by float32 sums that differ by shape."""
    with jax.enable_x64(True):
        a, c = (v.astype(jnp.float64) for v in box_quadratic(n=6))
        x0 = jnp.zeros_like(c)
        batch = lbfgsb.minimize(quadratic_vg, x0, -1.0, 1.0, (a, c), min_rows=2, **KW)
        for i in (0, 5):
            one = lbfgsb.minimize(quadratic_vg, x0[i:i + 1], -1.0, 1.0, (a[i:i + 1], c[i:i + 1]), **KW)
            np.testing.assert_allclose(one.x[0], batch.x[i], atol=1e-12)
            assert int(one.iterations[0]) == int(batch.iterations[i])


def test_no_worse_than_jaxopt_on_a_nonquadratic_problem():
    """Rows of ``Σ softplus(W x − b) + 0.05‖x‖²`` (convex, not quadratic) over a box: ours reaches an
    objective no worse than jaxopt.LBFGSB's (relative tolerance 1e-5: float32)."""
    jaxopt = pytest.importorskip("jaxopt")
    rng = np.random.default_rng(1)
    n, d, k = 8, 20, 40
    W = jnp.asarray(rng.normal(size=(n, k, d)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(n, k)), jnp.float32)

    def f(x, W, b):
        return jnp.sum(jax.nn.softplus(W @ x - b)) + 0.05 * jnp.sum(x ** 2)

    def vg(x, aux):
        vals, grads = jax.vmap(jax.value_and_grad(f))(x, *aux)
        return vals, grads

    lo, hi = -0.5, 0.5
    ours = lbfgsb.minimize(vg, jnp.zeros((n, d)), lo, hi, (W, b), maxiter=200, tol=1e-6, ftol=0.0)
    solver = jaxopt.LBFGSB(fun=f, maxiter=200, tol=1e-6)
    ref = jax.jit(jax.vmap(lambda W, b: solver.run(jnp.zeros(d), bounds=(jnp.full(d, lo), jnp.full(d, hi)),
                                                   W=W, b=b).params))(W, b)  # jitted: eager, it runs op by op
    ref = jnp.clip(ref, lo, hi)
    f_ours, f_ref = jax.vmap(f)(ours.x, W, b), jax.vmap(f)(ref, W, b)
    assert np.all(np.asarray(f_ours) <= np.asarray(f_ref) * (1 + 1e-5)), (f_ours, f_ref)


def test_two_loop_recursion_matches_the_textbook_form():
    """The batched small-matrix form of the two-loop recursion (memory in circular slots, two unit
    triangular solves) equals Nocedal & Wright's Algorithm 7.4 run pair by pair."""
    rng = np.random.default_rng(0)
    n, m, d = 3, 4, 6
    st = lbfgsb.init_rows(jnp.zeros((n, d)), jnp.zeros(n), jnp.zeros((n, d)), -10.0, 10.0, history=m)
    pairs = [[] for _ in range(n)]
    for k in range(6):  # more pairs than slots: the oldest are overwritten
        s = rng.normal(size=(n, d))
        y = s @ np.diag(rng.uniform(0.5, 2.0, d)) + 0.05 * rng.normal(size=(n, d))  # s·y > 0
        st = st._replace(s_new=jnp.asarray(s, jnp.float32), y_new=jnp.asarray(y, jnp.float32),
                         store=jnp.ones(n, bool))
        for i in range(n):
            pairs[i] = (pairs[i] + [(s[i], y[i])])[-m:]
        q = rng.normal(size=(n, d))
        st_after, sq, yq = lbfgsb._remember(st, jnp.asarray(q, jnp.float32))
        st = st_after._replace(store=jnp.zeros(n, bool))
        got = np.asarray(lbfgsb._two_loop(jnp.asarray(q, jnp.float32), sq, yq, st, jnp.ones(n)))
        for i in range(n):
            r, a = q[i].copy(), []
            for s_j, y_j in reversed(pairs[i]):  # newest first
                a.append(s_j @ r / (s_j @ y_j))
                r -= a[-1] * y_j
            s_new, y_new = pairs[i][-1]
            r *= (s_new @ y_new) / (y_new @ y_new)
            for (s_j, y_j), a_j in zip(pairs[i], reversed(a)):  # oldest first
                r += s_j * (a_j - y_j @ r / (s_j @ y_j))
            np.testing.assert_allclose(got[i], r, rtol=2e-4, atol=2e-5, err_msg=f"pair {k}, row {i}")
