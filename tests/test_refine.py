import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intriguing_jax import attacks, refine


def _slsqp(A, b, lo, hi):
    from scipy.optimize import minimize
    cons = [{"type": "ineq", "fun": lambda r, a=a, c=c: a @ r - c, "jac": lambda r, a=a: a} for a, c in zip(A, b)]
    sol = minimize(lambda r: 0.5 * r @ r, np.zeros(A.shape[1]), jac=lambda r: r, method="SLSQP",
                   bounds=list(zip(lo, hi)), constraints=cons, options={"maxiter": 500, "ftol": 1e-14})
    return sol.x


@pytest.mark.parametrize("q", [1, 3])
def test_projection_matches_a_general_qp_solver(q):
    rng = np.random.default_rng(q)
    n, d = 8, 30
    x = rng.uniform(0, 1, (n, d)) * (rng.uniform(size=(n, d)) > 0.5)  # many pixels at the box's edge
    A = rng.normal(size=(n, q, d))
    b = rng.uniform(0.5, 2.0, (n, q))
    lo, hi = -x, 1 - x
    r, mu = refine.project(*(jnp.asarray(a, jnp.float32) for a in (A, b, lo, hi)), iters=30)
    r = np.asarray(r, np.float64)
    assert np.all(r >= lo - 1e-6) and np.all(r <= hi + 1e-6) and np.all(np.asarray(mu) >= 0)
    for i in range(n):
        ref = _slsqp(A[i], b[i], lo[i], hi[i])
        if np.all(A[i] @ ref - b[i] >= -1e-6):  # a feasible problem: same minimum
            assert np.all(A[i] @ r[i] - b[i] >= -1e-3 * np.abs(b[i]).max())
            np.testing.assert_allclose(np.linalg.norm(r[i]), np.linalg.norm(ref), rtol=2e-3)


def test_refine_on_a_linear_model_lands_on_the_boundary_point_closest_to_x():
    # two classes, logits (0, w·x): the closest point of class 1's region is x + (κ − w·x) w / ‖w‖²
    # when the box does not bind
    rng = np.random.default_rng(0)
    d = 20
    w = rng.normal(size=d).astype(np.float32)
    x = np.full((1, d), 0.5, np.float32)
    x += (-0.2 - w @ x[0]) / (w @ w) * w  # w·x = −0.2: class 0
    fn = lambda z: jnp.stack([jnp.zeros(z.shape[0]), z @ w], -1)  # noqa: E731
    z0 = x + 0.4 * w / np.linalg.norm(w) + 0.05 * rng.normal(size=(1, d)).astype(np.float32)  # a far success
    assert fn(z0)[0, 1] > 0
    z, evals = refine.refine(fn, jnp.asarray(x), jnp.array([1]), jnp.asarray(z0), steps=5, classes=1, kappa=1e-4,
                             box=(0.0, 1.0))
    best = 0.2 / np.linalg.norm(w)
    assert float(jnp.linalg.norm(z - x)) == pytest.approx(best, rel=1e-3)
    assert int(evals[0]) > 0 and float(fn(z)[0, 1]) > 0


def test_refine_settings_are_checked():
    with pytest.raises(ValueError, match="refine_steps"):
        attacks.AttackConfig(refine=True, refine_steps=0)
    with pytest.raises(ValueError, match="refine_classes"):
        attacks.AttackConfig(refine_classes=0)


def _bumpy_model(d=24, k=4, seed=0):
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(d, 32)), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(32, k)), jnp.float32)
    return lambda z: jax.nn.relu(z @ w1 - 0.5) @ w2


def test_walk_never_lengthens_keeps_every_success_and_counts_its_evaluations():
    fn = _bumpy_model()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0.2, 0.8, (64, 24)), jnp.float32)
    z = jnp.clip(x + jnp.asarray(rng.normal(scale=0.5, size=x.shape), jnp.float32), 0, 1)
    t = jnp.argmax(fn(z), -1)  # every far point z reaches its own target ...
    t = t.at[0].set((t[0] + 1) % 4)  # ... but row 0's (a failure: left as it is)
    z = z.at[1].set(x[1])
    t = t.at[1].set(jnp.argmax(fn(x[1:2]), -1)[0])  # row 1: x itself reaches the target (nothing to walk)
    start = refine.leads(fn(z), t)
    out, evals = refine.walk(fn, x, t, z, steps=20, gamma=0.01, box=(0.0, 1.0))
    out, evals, start = np.asarray(out), np.asarray(evals), np.asarray(start)
    before, after = (np.linalg.norm(np.asarray(v) - np.asarray(x), axis=1) for v in (z, out))
    assert not start[0] and start[1] and start.sum() >= 40
    np.testing.assert_array_equal(out[~start], np.asarray(z)[~start])
    assert np.all(np.asarray(refine.leads(fn(out), t))[start]) and np.all((out >= 0) & (out <= 1))
    assert np.all(after <= before + 1e-6) and np.mean(after[start] / np.maximum(before[start], 1e-9)) < 0.9
    walked = start & (before > 0)
    np.testing.assert_array_equal(evals, np.where(walked, 21, 0))


def test_walk_settings_are_checked():
    with pytest.raises(ValueError, match="walk_steps"):
        attacks.AttackConfig(walk_steps=-1)
    with pytest.raises(ValueError, match="walk_gamma"):
        attacks.AttackConfig(walk_gamma=1.5)
    with pytest.raises(ValueError, match="rescue_steps"):
        attacks.AttackConfig(rescue_steps=-1)
    with pytest.raises(ValueError, match="rescue_gamma"):
        attacks.AttackConfig(rescue_gamma=0.0)


def test_rescue_searches_only_the_failed_rows_and_finds_their_targets():
    fn = _bumpy_model()
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(0.2, 0.8, (32, 24)), jnp.float32)
    z = jnp.clip(x + jnp.asarray(rng.normal(scale=0.5, size=x.shape), jnp.float32), 0, 1)
    t = jnp.argmax(fn(z), -1)  # every z reaches its target ...
    failed = np.arange(32) % 3 == 0
    t = jnp.where(jnp.asarray(failed), (t + 1 + jnp.arange(32) % 3) % 4, t)  # ... but every third row's
    failed &= ~np.asarray(refine.leads(fn(z), t))
    out, evals = refine.rescue(fn, x, t, z, steps=60, gamma=0.05, box=(0.0, 1.0))
    out, evals = np.asarray(out), np.asarray(evals)
    np.testing.assert_array_equal(out[~failed], np.asarray(z)[~failed])  # a success is left as it is
    np.testing.assert_array_equal(evals, np.where(failed, 61, 0))
    reached = np.asarray(refine.leads(fn(out), t))
    assert failed.sum() >= 8 and reached[failed].mean() >= 0.75, reached[failed]
    assert np.all((out >= 0) & (out <= 1))
    # a block without a failure skips the search: nothing spent
    ok = ~failed
    same, spent = refine.rescue(fn, x[ok], t[ok], z[ok], steps=60, gamma=0.05, box=(0.0, 1.0))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(z)[ok])
    assert not np.asarray(spent).any()
