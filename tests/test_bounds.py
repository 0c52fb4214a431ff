"""Certified radii are sound (never above the exact minimum or an adversarial example found) and ordered."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.tree_util import Partial

from intriguing_jax import attacks, bounds, models


class Tiny(nn.Module):
    width: int = 6
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": nn.tanh}[self.activation]
        hidden = act(nn.Dense(self.width, name="hidden")(x))
        return nn.Dense(3, name="out")(hidden)


def _tiny(seed, activation="relu", dim=4):
    net = Tiny(activation=activation)
    params = net.init(jax.random.key(seed), jnp.zeros((1, dim)))
    params = jax.tree.map(lambda a: 3 * a, params)  # sharper, so radii are well inside the box
    return Partial(net.apply, params), params


def _exact_linf(params, x, y):
    """The exact minimum L∞ perturbation (inside [0, 1]) that makes some class j ≠ y reach y's logit, for a
    one-hidden-layer ReLU net: a big-M MILP per j (scipy.optimize.milp, HiGHS)."""
    w1, b1 = (np.asarray(params["params"]["hidden"][k], np.float64) for k in ("kernel", "bias"))
    w2, b2 = (np.asarray(params["params"]["out"][k], np.float64) for k in ("kernel", "bias"))
    d, h = w1.shape
    # pre-activation bounds over the whole box (valid for any perturbation that stays in it)
    lo = b1 + np.minimum(w1, 0).sum(0)
    hi = b1 + np.maximum(w1, 0).sum(0)
    best = np.inf
    for j in range(w2.shape[1]):
        if j == y:
            continue
        # variables: x' (d), a (h), s (h binary), t (1)
        n = d + 2 * h + 1
        c = np.zeros(n)
        c[-1] = 1.0
        rows, lb, ub = [], [], []

        def row(coefs, low, high):
            r = np.zeros(n)
            for idx, v in coefs:
                r[idx] += v
            rows.append(r)
            lb.append(low)
            ub.append(high)
        for i in range(d):  # |x'_i − x_i| ≤ t
            row([(i, 1.0), (n - 1, -1.0)], -np.inf, x[i])
            row([(i, 1.0), (n - 1, 1.0)], x[i], np.inf)
        for k in range(h):  # a = relu(w1ᵀx' + b1), big-M with the box bounds
            z = [(i, w1[i, k]) for i in range(d)]
            row(z + [(d + k, -1.0)], -np.inf, -b1[k])  # a ≥ z
            row(z + [(d + k, -1.0), (d + h + k, -lo[k])], -lo[k] - b1[k], np.inf)  # a ≤ z − lo(1 − s)
            row([(d + k, 1.0), (d + h + k, -max(hi[k], 0.0))], -np.inf, 0.0)  # a ≤ hi·s
        row([(d + k, w2[k, j] - w2[k, y]) for k in range(h)], b2[y] - b2[j], np.inf)  # z_j ≥ z_y
        bounds_ = scipy.optimize.Bounds(np.r_[np.zeros(d), np.zeros(h), np.zeros(h), 0.0],
                                        np.r_[np.ones(d), np.full(h, np.inf), np.ones(h), np.inf])
        integrality = np.r_[np.zeros(d + h), np.ones(h), 0]
        res = scipy.optimize.milp(c, constraints=scipy.optimize.LinearConstraint(np.array(rows), lb, ub),
                                  integrality=integrality, bounds=bounds_)
        if res.status == 0:
            best = min(best, res.fun)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_radius_never_exceeds_the_exact_minimum_of_a_relu_net(seed):
    fn, params = _tiny(seed)
    xs = np.random.default_rng(seed).uniform(0.3, 0.7, (4, 4))
    ys = np.asarray(jnp.argmax(fn(jnp.asarray(xs, jnp.float32)), -1))
    crown = bounds.certified_radius(fn, xs, ys, norm=np.inf, method="crown", tol=1e-4)
    ibp = bounds.certified_radius(fn, xs, ys, norm=np.inf, method="ibp", tol=1e-4)
    for x, y, c, i in zip(xs, ys, crown, ibp):
        exact = _exact_linf(params, x, int(y))
        assert i <= c * (1 + 1e-3) + 1e-6 <= exact * (1 + 1e-3) + 1e-6, (i, c, exact)
        assert np.isfinite(exact) and c > 0  # a real comparison, and the bound is not vacuous


def test_crown_is_the_exact_l2_minimum_of_a_linear_model():
    model = models.build("FC10(1e-4)")
    params = jax.tree.map(lambda a: a * 30, model.init(jax.random.key(0)))
    fn = Partial(model.apply, params)
    xs = np.random.default_rng(0).uniform(0.3, 0.7, (3, 784))
    ys = np.asarray(jnp.argmax(fn(jnp.asarray(xs, jnp.float32)), -1))
    w, b = (np.asarray(params["params"]["dense_0"][k], np.float64) for k in ("kernel", "bias"))
    r = bounds.certified_radius(fn, xs, ys, norm=2, method="crown", tol=1e-5)
    for x, y, got in zip(xs, ys, r):
        z = x @ w + b
        exact = min((z[y] - z[j]) / np.linalg.norm(w[:, y] - w[:, j]) for j in range(10) if j != y)  # no box
        assert got == pytest.approx(exact, rel=1e-4)


def _exact_l2_in_box(a, m, x):
    """min ‖δ‖₂ subject to a·δ ≤ −m and 0 ≤ x + δ ≤ 1 (a small QP: SLSQP); inf where no δ in the box does."""
    if np.minimum(-a * x, a * (1 - x)).sum() > -m:
        return np.inf
    res = scipy.optimize.minimize(lambda d: d @ d, np.zeros_like(x), jac=lambda d: 2 * d, method="SLSQP",
                                  bounds=list(zip(-x, 1 - x)), options={"ftol": 1e-14, "maxiter": 500},
                                  constraints=[{"type": "ineq", "fun": lambda d: -m - a @ d, "jac": lambda d: -a}])
    assert res.success and a @ res.x <= -m + 1e-7
    return float(np.sqrt(res.x @ res.x))


def test_l2_radius_uses_the_box_and_is_exact_for_a_linear_model():
    """Where the box binds (pixels at 0 or 1 that can only move one way), the L2 radius of a linear model
    is still its exact minimum distance inside the box, and larger than the ball alone would give."""
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(8, 3)), rng.normal(size=3)
    fn = lambda x: x @ jnp.asarray(w, x.dtype) + jnp.asarray(b, x.dtype)  # noqa: E731  (a plain function)
    xs = rng.choice([0.0, 1.0, 0.5], size=(6, 8), p=[0.4, 0.3, 0.3])
    ys = np.argmax(xs @ w + b, -1)
    r = bounds.certified_radius(fn, xs, ys, norm=2, method="crown", tol=1e-6)
    ball = []
    for x, y, got in zip(xs, ys, r):
        z = x @ w + b
        exact = min(_exact_l2_in_box(w[:, y] - w[:, j], z[y] - z[j], x) for j in range(3) if j != y)
        ball.append(min((z[y] - z[j]) / np.linalg.norm(w[:, y] - w[:, j]) for j in range(3) if j != y))
        assert np.isfinite(exact) and got <= exact * (1 + 1e-5) and got == pytest.approx(exact, rel=1e-4)
    assert np.all(r >= np.array(ball) * (1 - 1e-6)) and np.any(r > 1.05 * np.array(ball))  # the box binds


def test_l2_box_dual_is_a_tight_lower_bound():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, x, eps = rng.normal(size=(1, 6)), rng.choice([0.0, 1.0, 0.3], size=6), rng.uniform(0.05, 2.0)
        with jax.enable_x64(True):
            got = float(bounds._l2_box_min(jnp.asarray(a), jnp.asarray(-x), jnp.asarray(1 - x), eps)[0])
        res = scipy.optimize.minimize(lambda d: a[0] @ d, np.zeros(6), jac=lambda d: a[0], method="SLSQP",
                                      bounds=list(zip(-x, 1 - x)), options={"ftol": 1e-14, "maxiter": 500},
                                      constraints=[{"type": "ineq", "fun": lambda d: eps ** 2 - d @ d,
                                                    "jac": lambda d: -2 * d}])
        feasible = res.x * min(1.0, eps / np.linalg.norm(res.x))  # into the ball (0 is in the box)
        assert got <= a[0] @ feasible + 1e-12 and got == pytest.approx(a[0] @ feasible, abs=1e-6)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_no_adversarial_example_inside_a_certified_ball(activation):
    fn, _ = _tiny(3, activation)
    rng = np.random.default_rng(1)
    xs = rng.uniform(0.2, 0.8, (6, 4))
    ys = np.asarray(jnp.argmax(fn(jnp.asarray(xs, jnp.float32)), -1))
    for norm in (2, np.inf):
        crown = bounds.certified_radius(fn, xs, ys, norm=norm, method="crown")
        ibp = bounds.certified_radius(fn, xs, ys, norm=norm, method="ibp")
        alpha = bounds.certified_radius(fn, xs, ys, norm=norm, method="alpha-crown")
        assert np.all(ibp <= crown * (1 + 1e-3) + 1e-9)  # CROWN at least as tight on these nets
        assert np.all(crown <= alpha)  # α-CROWN starts from CROWN's radius and only climbs
        for x, y, r in zip(xs, ys, alpha):
            if r == 0:
                continue
            d = rng.normal(size=(20000, 4))
            d = d / (np.linalg.norm(d, axis=1, keepdims=True) if norm == 2 else np.abs(d).max(1, keepdims=True))
            pts = np.clip(x + r * rng.uniform(0, 1, (20000, 1)) ** 0.25 * d, 0, 1)
            pred = np.asarray(jnp.argmax(fn(jnp.asarray(pts, jnp.float32)), -1))
            assert np.all(pred == y)
    # and every example our attack finds lies outside the L2 ball
    r = bounds.certified_radius(fn, xs, ys, norm=2, method="alpha-crown")
    targets = (ys + 1) % 3
    res = attacks.lbfgs_attack(fn, jnp.asarray(xs, jnp.float32), jnp.asarray(targets, jnp.int32))
    found = np.asarray(res.l2)[np.asarray(res.success)]
    assert np.all(found >= r[np.asarray(res.success)] * (1 - 1e-4))


def test_unsupported_primitives_are_named():
    model = models.build("ConvNet")
    fn = Partial(model.apply, model.init(jax.random.key(0)))
    with pytest.raises(bounds.Unsupported, match="reduce_window_max"):
        bounds.certified_radius(fn, np.full((1, 784), 0.5), [0], method="crown")
    assert bounds.certified_radius(fn, np.full((1, 784), 0.5), [int(jnp.argmax(fn(jnp.full((1, 784), 0.5))))],
                                   method="ibp", norm=np.inf)[0] > 0  # intervals bound max-pooling
    with pytest.raises(bounds.Unsupported, match="sin"):
        bounds.certified_radius(lambda x: jnp.sin(x[:, :3]), np.full((1, 4), 0.5), [0])
    with pytest.raises(ValueError, match="method"):
        bounds.certified_radius(fn, np.full((1, 784), 0.5), [0], method="milp")


def test_the_sandwich_and_its_verdict():
    from experiments.harness import verdicts
    fn, _ = _tiny(4, "relu")  # (seed 4: class pred + 1 is reachable inside the box for these points)
    xs = np.random.default_rng(2).uniform(0.2, 0.8, (5, 4)).astype(np.float32)
    pred = np.asarray(jnp.argmax(fn(jnp.asarray(xs)), -1))
    res = attacks.lbfgs_attack(fn, jnp.asarray(xs), jnp.asarray((pred + 1) % 3, jnp.int32))
    s = bounds.sandwich(fn, xs, res)
    assert s["compared"] == int(np.asarray(res.success).sum()) and s["violations"] == 0 and s["ratio_min"] >= 1 - 1e-4
    assert s["mean_untargeted_certified_l2"] <= s["mean_certified_l2"] + 1e-12  # every class vs one class
    rows = {"FC100-100-10": {**s, "ratio_median": 2.5}, "FC10(1e-4)": {**s, "ratio_median": 9.0}}
    assert verdicts.bound_propagation_tight(rows).holds  # the linear model's ratio is not the rule's
    rows["FC100-100-10"]["ratio_median"] = 3.5
    assert not verdicts.bound_propagation_tight(rows).holds
    md = verdicts.bound_propagation_section({"FC100-100-10": {"ratio_median": 8.0,
                                                              "bound_propagation": {"crown": rows["FC100-100-10"]}}}, 5)
    assert "| FC100-100-10 | " in md and "does not hold" in md


def test_alpha_crown_beats_crown_where_relaxations_are_loose():
    """Two ReLU layers of 32 with many unstable units: optimising the relaxation slopes must certify larger
    radii than CROWN's fixed slopes (a do-nothing optimisation gives ratio 1 and fails), and stay sound."""
    from tests.test_validation import _pgd
    k = jax.random.split(jax.random.key(2), 4)
    w1, b1 = jax.random.normal(k[0], (16, 32)), jax.random.normal(k[1], (32,)) * 0.1
    w2, w3 = jax.random.normal(k[2], (32, 32)) / np.sqrt(32), jax.random.normal(k[3], (32, 3))

    def f(x):
        return jax.nn.relu(jax.nn.relu(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2) @ w3
    x = jax.random.uniform(jax.random.key(11), (8, 16))
    y = np.asarray(jnp.argmax(f(x), 1), np.int32)
    crown = bounds.certified_radius(f, x, y, method="crown")
    alpha = bounds.certified_radius(f, x, y, method="alpha-crown")
    ratio = alpha / crown
    assert np.all(ratio >= 1 - 1e-9) and ratio.mean() > 1.02 and ratio.max() > 1.05, ratio
    for z in _pgd(f, x, jnp.asarray(y), jnp.asarray(alpha * 0.999, jnp.float32)):
        assert np.all(np.asarray(jnp.argmax(f(z), 1)) == y)
