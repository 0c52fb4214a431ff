"""Bad input to the public entry points: property-based (hypothesis) over shapes, dtypes, ranges and NaN/inf
placements — each call returns a valid result or raises the documented ValueError, as an independent
oracle predicts — and the soundness of ``certified_radius`` on random small nets against a PGD search."""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.tree_util import Partial

from intriguing_jax import attacks, bounds, spectral, transfer, validate

D, K = 8, 3
W = np.random.default_rng(0).normal(size=(D, K)).astype(np.float32)
CFG = attacks.AttackConfig(c_steps=3, maxiter=15, walk_steps=0, rescue_steps=0)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def linear(w, x):
    return x.reshape(x.shape[0], -1) @ w


def nan_model(w, x):
    return linear(w, x) * jnp.nan


@st.composite
def calls(draw):
    """Images and labels with one thing possibly wrong, and the error an oracle expects (None: valid)."""
    shape = draw(st.sampled_from([(2, D), (2, 2, 4), (D,), (0, D), (2, 2, 2, 2)]))
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int32"]))
    scale = draw(st.sampled_from([1.0, 255.0, -1.0]))
    poison = draw(st.sampled_from([None, "nan", "inf"]))
    labels = draw(st.sampled_from(["ok", "too_big", "negative", "short", "float"]))
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    x = rng.uniform(0.1, 0.9, size=shape) * scale
    if poison and x.size:
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = np.nan if poison == "nan" else np.inf
    with np.errstate(invalid="ignore"):  # NaN cast to int32: the dtype is what the call must refuse
        x = x.astype(dtype)
    n = shape[0] if len(shape) >= 2 else 1
    y = {"ok": np.arange(n) % K, "too_big": np.full(n, K), "negative": np.full(n, -1),
         "short": np.zeros(n + 1), "float": np.zeros(n) + 0.5}[labels]
    y = y.astype(np.float32 if labels == "float" else np.int32)
    # the oracle: the first rule a call breaks names its argument
    if len(shape) < 2:
        expect = "rank"
    elif dtype == "int32":
        expect = "floating"
    elif shape[0] == 0:
        expect = "empty"
    elif poison:
        expect = "NaN/inf"
    elif scale != 1.0:
        expect = "box"
    elif labels == "short":
        expect = "shape"
    elif labels == "float":
        expect = "integer"
    elif labels in ("too_big", "negative"):
        expect = r"\[0, 3\)"
    else:
        expect = None
    return x, y, expect


def _expect_error(fn, expect):
    if expect is None:
        return fn()
    with pytest.raises(ValueError, match=expect):
        fn()


@SETTINGS
@given(calls())
def test_attack_validates_every_input_or_returns_a_valid_result(call):
    x, y, expect = call
    fn = Partial(linear, jnp.asarray(W))
    res = _expect_error(lambda: attacks.lbfgs_attack(fn, x, y, config=CFG), expect)
    if res is not None:
        assert res.adversarial.shape == x.shape and np.all(np.isfinite(res.l2)) and np.all(res.l2 >= 0)
        assert np.all((res.adversarial >= 0) & (res.adversarial <= 1))
        pred = np.argmax(linear(W, np.asarray(res.adversarial, np.float32)), 1)
        assert np.all(pred[np.asarray(res.success)] == y[np.asarray(res.success)])


@SETTINGS
@given(calls(), st.sampled_from(["ibp", "crown"]))
def test_certified_radius_validates_every_input_or_returns_radii(call, method):
    x, y, expect = call
    fn = Partial(linear, jnp.asarray(W))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bounds.CertificateAtLimit)
        r = _expect_error(lambda: bounds.certified_radius(fn, x, y, method=method), expect)
    if r is not None:
        assert r.shape == (x.shape[0],) and np.all(np.isfinite(r)) and np.all(r >= 0)


def test_the_issues_cases_name_the_problem():
    fn = Partial(linear, jnp.asarray(W))
    x = np.random.default_rng(1).uniform(0, 1, (4, D)).astype(np.float32)
    y = np.argmax(linear(W, x), 1).astype(np.int32)
    for method in bounds.METHODS:  # unscaled images: refused, the box named, not a vacuous radius of √D
        with pytest.raises(ValueError, match=r"box \[0.0, 1.0\].*divid"):
            bounds.certified_radius(fn, x * 255, y, method=method)
    with pytest.raises(ValueError, match="box"):
        bounds.certified_radius(fn, 2 * x - 1, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        bounds.certified_radius(fn, x, np.full(4, K))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[4\]"):
        bounds.certified_radius(fn, x, y[:3])
    with pytest.raises(ValueError, match="targets must differ"):
        bounds.certified_radius(fn, x, y, targets=y)
    bad = Partial(nan_model, jnp.asarray(W))  # NaN logits: named, for the attack and the bounds
    with pytest.raises(ValueError, match="NaN/inf logits"):
        attacks.lbfgs_attack(bad, x, (y + 1) % K, config=CFG)
    with pytest.raises(ValueError, match="NaN/inf logits"):
        attacks.lbfgs_attack_untargeted(bad, x, y, config=CFG)
    with pytest.raises(ValueError, match="NaN/inf logits"):
        bounds.certified_radius(bad, x, y)
    with pytest.raises(ValueError, match="labels must lie"):
        attacks.lbfgs_attack_untargeted(fn, x, np.full(4, K), config=CFG)


def test_a_radius_at_eps_max_is_flagged_not_reported_as_measured():
    def wide_margin(x):  # class 0 wins by 100 and the logits barely move: proven far beyond eps_max
        return linear(W * 1e-3, x) + jnp.array([100.0, 0.0, 0.0])
    x = np.full((2, D), 0.5, np.float32)
    for method in bounds.METHODS:
        with pytest.warns(bounds.CertificateAtLimit, match="2 of 2 image.*eps_max = 0.5"):
            r = bounds.certified_radius(wide_margin, x, np.zeros(2, np.int32), eps_max=0.5, method=method)
        assert np.allclose(r, 0.5, rtol=1e-2)


def test_other_entry_points_refuse_bad_input():
    x = np.random.default_rng(2).uniform(0, 1, (3, D)).astype(np.float32)
    y = np.zeros(3, np.int32)
    with pytest.raises(ValueError, match="NaN/inf"):
        transfer.error_rates({"m": lambda z: np.zeros(len(z), int)}, np.where(x > 0.5, np.nan, x), y)
    with pytest.raises(ValueError, match="labels must have shape"):
        transfer.error_rates({"m": lambda z: np.zeros(len(z), int)}, x, y[:2])
    with pytest.raises(ValueError, match="perturbed must have the shape"):
        transfer.rescale_to_rms(x, x[:, :4], 0.1)
    with pytest.raises(ValueError, match="box"):
        transfer.rescale_to_rms(x * 255, x, 0.1)
    with pytest.raises(ValueError, match="finite"):
        spectral.certified_radius(np.full((3, K), np.nan), 1.0, W)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        spectral.certified_radius(linear(W, x), 1.0, W, targets=np.full(3, 7))
    with pytest.raises(ValueError, match="last_kernel"):
        spectral.certified_radius(linear(W, x), 1.0, W[:, :2])
    with pytest.raises(ValueError, match="NaN/inf"):
        validate.images(np.array([[0.1, np.inf]]))


# ---- soundness: no point a search finds lies inside a certified ball --------------------------------

H = 8


def _conv(p, x):  # 4×4 image, 3×3 convolution with 2 channels, ReLU, 2×2 average pooling, dense
    h = jax.lax.conv_general_dilated(x.reshape(-1, 4, 4, 1), p["kern"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h).reshape(-1, 2, 2, 2, 2, 2).mean(axis=(2, 4))  # average pooling
    return h.reshape(h.shape[0], -1) @ p["dense"]


def _mlp(act, p, x):
    return act(act(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"]) @ p["w2"]) @ p["w3"]


# one function per kind, its weights bound as traced arguments: the attack compiles once per kind
_APPLY = {"conv": _conv, **{k: functools.partial(_mlp, a) for k, a in
                            (("relu", jax.nn.relu), ("sigmoid", jax.nn.sigmoid), ("tanh", jnp.tanh))}}


def _net(kind, key):
    k = jax.random.split(key, 4)
    if kind == "conv":
        p = {"kern": jax.random.normal(k[0], (3, 3, 1, 2)), "dense": jax.random.normal(k[1], (2 * 2 * 2, K))}
    else:
        p = {"w1": jax.random.normal(k[0], (16, H)), "b1": jax.random.normal(k[1], (H,)) * 0.1,
             "w2": jax.random.normal(k[2], (H, H)) / np.sqrt(H), "w3": jax.random.normal(k[3], (H, K))}
    return Partial(_APPLY[kind], p)


def _pgd(f, x, y, radius, steps=60, restarts=3, seed=0):
    """Projected gradient ascent on the best wrong logit's margin inside ‖δ‖₂ ≤ radius ∩ [0, 1]; returns
    the points found (every one inside the ball and the box)."""
    def margin(z, yy):
        logits = f(z)
        return jnp.max(jnp.where(jax.nn.one_hot(yy, K) > 0, -jnp.inf, logits), -1) - logits[jnp.arange(len(yy)), yy]

    grad = jax.jit(jax.grad(lambda z, yy: margin(z, yy).sum()))

    def project(z):
        d = z - x
        norm = jnp.linalg.norm(d, axis=1, keepdims=True)
        d = d * jnp.minimum(1.0, radius[:, None] / jnp.maximum(norm, 1e-12))
        return jnp.clip(x + d, 0.0, 1.0)  # clipping toward an in-box x only shortens δ

    best = []
    for r in range(restarts):
        z = project(x + jax.random.normal(jax.random.key(seed + r), x.shape) * radius[:, None])
        for _ in range(steps):
            g = grad(z, y)
            z = project(z + 0.25 * radius[:, None] * g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), 1e-12))
        best.append(z)
    return best


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.sampled_from(["relu", "sigmoid", "tanh", "conv"]), st.integers(0, 2 ** 16))
def test_certified_balls_hold_no_point_a_search_finds(kind, seed):
    f = _net(kind, jax.random.key(seed))
    x = jax.random.uniform(jax.random.key(seed + 1), (6, 16))
    y = np.asarray(jnp.argmax(f(x), 1), np.int32)
    with warnings.catch_warnings():  # a net certified on the whole box reaches eps_max = √D: fine here
        warnings.simplefilter("ignore", bounds.CertificateAtLimit)
        radius = bounds.certified_radius(f, x, y, method="crown")
    assert np.all(radius >= 0)
    for z in _pgd(f, x, jnp.asarray(y), jnp.asarray(radius * 0.999, jnp.float32)):
        assert np.all(np.linalg.norm(np.asarray(z - x), axis=1) <= radius * 0.999 + 1e-5)
        assert np.all(np.asarray(jnp.argmax(f(z), 1)) == y), f"{kind}: a point inside a certified ball changes the label"
    # and the certificate is not vacuous: at twice the radius, or at the attack's distance, the search can win
    found = attacks.lbfgs_attack_untargeted(f, np.asarray(x), y, config=attacks.AttackConfig(c_steps=6, maxiter=40),
                                            search="one")  # any search: a success shorter than the radius fails
    ok = np.asarray(found.success) & (np.asarray(found.l2) > 0)
    assert np.all(np.asarray(found.l2)[ok] >= radius[ok] * (1 - 1e-4))


def test_training_refuses_a_bad_split():
    from intriguing_jax import data, models, train
    from tests.conftest import synthetic_mnist
    good = data._to_mnist(synthetic_mnist(n_train=64, n_test=8), "synthetic").train
    model, cfg = models.build("FC10(1e-4)"), train.TrainConfig(epochs=1, batch_size=32)
    for split, match in ((dataclasses.replace(good, images=good.images * 255), "train.images.*box"),
                         (dataclasses.replace(good, labels=good.labels + 10), r"train.labels must lie in \[0, 10\)"),
                         (dataclasses.replace(good, labels=good.labels[:10]), r"train.labels must have shape \[N\] = \[64\]")):
        with pytest.raises(ValueError, match=match):
            train.fit(model, split, jax.random.key(0), cfg)


def test_a_margin_that_does_not_depend_on_the_input_is_certified_to_the_limit():
    """Logits that ignore the input (a constant margin): every radius is proven (was 0 for CROWN: 0/0)."""
    def constant(x):
        return jnp.zeros((x.shape[0], K)) + jnp.array([1.0, 0.0, 0.0]) + 0.0 * x.reshape(x.shape[0], -1)[:, :1]
    x = np.full((2, D), 0.5, np.float32)
    for method in bounds.METHODS:
        with pytest.warns(bounds.CertificateAtLimit):
            r = bounds.certified_radius(constant, x, np.zeros(2, np.int32), eps_max=0.5, method=method)
        assert np.allclose(r, 0.5, rtol=1e-2), (method, r)
