import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from intriguing_jax import _attack_engine as _engine
from intriguing_jax import attacks, data, exact, lbfgsb, models, noise, train
from tests.conftest import synthetic_mnist

CFG = attacks.AttackConfig(c_steps=14, maxiter=200)

@pytest.fixture(scope="module")
def mnist():
    return data._to_mnist(synthetic_mnist(), "synthetic")


@pytest.fixture(scope="module")
def linear(mnist):
    model = models.build("FC10(1e-4)")
    params, _ = train.fit(model, mnist.train, jax.random.key(1), train.TrainConfig(epochs=10, batch_size=50))
    return model, params


@pytest.fixture(scope="module")
def mlp(mnist):
    model = models.build("FC100-100-10")
    params, _ = train.fit(model, mnist.train, jax.random.key(2),
                          train.TrainConfig(epochs=10, batch_size=50, learning_rate=3e-3))
    return model, params


def correctly_classified(model, params, split, n):
    ok = np.flatnonzero(train.predict(model.apply, params, split.images) == split.labels)[:n]
    x, y = split.images[ok], split.labels[ok]
    t = (y + 1 + np.random.default_rng(0).integers(0, 9, len(y))) % 10  # random wrong targets
    return x, y, t.astype(np.int32)


@pytest.mark.parametrize("loss,refine,bound", [("ce", False, 1.05), ("margin", False, 1.02), ("ce", True, 1.005)])
def test_softmax_regression_near_exact_qp_minimum(linear, mnist, loss, refine, bound):
    model, params = linear
    x, _, t = correctly_classified(model, params, mnist.test, 6)
    res = attacks.lbfgs_attack(Partial(model.apply, params), x, t,
                               config=dataclasses.replace(CFG, loss=loss, refine=refine))
    assert bool(res.success.all())
    W = np.asarray(params["params"]["dense_0"]["kernel"], np.float64)
    b = np.asarray(params["params"]["dense_0"]["bias"], np.float64)
    minimum = np.array([exact.linear_min_l2(W, b, x[i], t[i]) for i in range(len(t))])
    ratio = np.asarray(res.l2) / minimum
    assert ratio.min() >= 1 - 1e-3, ratio  # never below the true minimum (that would be a bug)
    assert ratio.mean() <= bound, ratio


def test_mlp_all_targets_reached_inside_box(mlp, mnist):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 16)
    fn = Partial(model.apply, params)
    res = attacks.lbfgs_attack(fn, x, t, config=CFG)
    assert bool(res.success.all())
    adv = np.asarray(res.adversarial)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # success flags are honest: re-check with the model on the returned images
    np.testing.assert_array_equal(np.argmax(model.apply(params, adv), -1), t)
    np.testing.assert_allclose(res.distortion, attacks.distortion(x, adv), rtol=1e-6)
    np.testing.assert_allclose(res.l2, np.linalg.norm(adv - x, axis=1), rtol=1e-5)
    again = attacks.lbfgs_attack(fn, x, t, config=CFG)
    jax.tree.map(np.testing.assert_array_equal, res, again)  # deterministic


def test_refinement_never_lengthens_and_keeps_every_success(mlp, mnist):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 16)
    fn = Partial(model.apply, params)
    plain = attacks.lbfgs_attack(fn, x, t, config=CFG)
    refined = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(CFG, refine=True))
    np.testing.assert_array_equal(refined.success, plain.success)
    adv = np.asarray(refined.adversarial)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    np.testing.assert_array_equal(np.argmax(model.apply(params, adv), -1)[np.asarray(refined.success)],
                                  t[np.asarray(refined.success)])
    assert np.all(np.asarray(refined.l2) <= np.asarray(plain.l2) * (1 + 1e-5))
    assert float(refined.l2.mean()) < float(plain.l2.mean())  # the cross-entropy minimiser is not the closest
    ok = np.asarray(refined.success)  # only successful examples are refined
    assert ok.sum() >= 12 and np.all(np.asarray(refined.grad_evals)[ok] > np.asarray(plain.grad_evals)[ok])  # counted
    np.testing.assert_array_equal(np.asarray(refined.grad_evals)[~ok], np.asarray(plain.grad_evals)[~ok])


def test_boundary_walk_never_lengthens_and_keeps_every_success(mlp, mnist):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 16)
    fn = Partial(model.apply, params)
    cfg = dataclasses.replace(CFG, c_steps=4, maxiter=40)
    plain = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, walk_steps=0))
    walked = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, walk_steps=15))
    ok = np.asarray(walked.success)
    np.testing.assert_array_equal(ok, np.asarray(plain.success))
    np.testing.assert_array_equal(np.argmax(model.apply(params, np.asarray(walked.adversarial)), -1)[ok], t[ok])
    assert np.all(np.asarray(walked.l2) <= np.asarray(plain.l2) * (1 + 1e-5))
    assert float(walked.l2[ok].mean()) < float(plain.l2[ok].mean())
    extra = np.asarray(walked.grad_evals) - np.asarray(plain.grad_evals)
    assert ok.sum() >= 12 and np.all(extra[ok] == 16) and np.all(extra[~ok] == 0)


def test_per_example_independence_and_permutation(mlp, mnist):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 6)
    fn = Partial(model.apply, params)
    full = attacks.lbfgs_attack(fn, x, t, config=CFG)
    for i in (0, 3):
        one = attacks.lbfgs_attack(fn, x[i:i + 1], t[i:i + 1], config=CFG)
        np.testing.assert_allclose(one.l2[0], full.l2[i], rtol=1e-3)
    perm = np.random.default_rng(0).permutation(len(t))
    shuffled = attacks.lbfgs_attack(fn, x[perm], t[perm], config=CFG)
    np.testing.assert_allclose(shuffled.l2, np.asarray(full.l2)[perm], rtol=1e-3)


def test_target_equal_to_prediction_returns_x(mlp, mnist):
    model, params = mlp
    x, y, t = correctly_classified(model, params, mnist.test, 3)
    t = t.copy()
    t[1] = y[1]
    res = attacks.lbfgs_attack(Partial(model.apply, params), x, t, config=attacks.AttackConfig.smoke())
    np.testing.assert_array_equal(res.adversarial[1], x[1])
    assert float(res.l2[1]) == 0.0 and bool(res.success[1]) and np.isinf(res.c[1])


def test_image_shapes_preserved(mlp, mnist):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 2)
    fn = Partial(lambda p, z: model.apply(p, z.reshape(z.shape[0], -1)), params)
    res = attacks.lbfgs_attack(fn, x.reshape(-1, 28, 28, 1), t, config=attacks.AttackConfig.smoke())
    assert res.adversarial.shape == (2, 28, 28, 1) and res.success.shape == (2,)


def test_batched_solver_no_worse_than_jaxopt(linear, mnist):
    """One solve at a fixed c: ``lbfgsb.minimize`` reaches an objective no worse than jaxopt's."""
    model, params = linear
    x, _, t = correctly_classified(model, params, mnist.test, 4)
    fn = Partial(model.apply, params)
    const = jnp.full((len(t),), 0.05)
    flat, tt = jnp.asarray(x), jnp.asarray(t)
    cfg = attacks.AttackConfig(maxiter=200, ftol=1e-5)  # solved to convergence: the default stops early
    objective = lambda r: _engine._objective(fn, flat, tt, const, r, cfg)

    def vg(r, aux):
        (_, f), g = jax.value_and_grad(lambda r: (jnp.sum(objective(r)), objective(r)), has_aux=True)(r)
        return f, g

    r_ours = lbfgsb.minimize(vg, jnp.zeros_like(flat), -flat, 1 - flat, maxiter=200, ftol=cfg.ftol).x
    ref_cfg = attacks.AttackConfig(maxiter=200, solver="jaxopt")
    r_ref, _ = jax.jit(lambda *a: _engine._solve_box_lbfgs(fn, *a, ref_cfg))(flat, tt, const, jnp.zeros_like(flat))
    r_ref = jnp.clip(flat + r_ref, 0, 1) - flat  # jaxopt may leave the box (jaxopt issues #439, #590)
    assert np.all(np.asarray(objective(r_ours)) <= np.asarray(objective(r_ref)) + 1e-4)
    assert float(jnp.min(flat + r_ours)) >= 0 and float(jnp.max(flat + r_ours)) <= 1


def test_jaxopt_reference_attack_agrees(mlp, mnist):
    """The reference path (jaxopt under vmap, the whole batch per c step) finds the same examples."""
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 2)
    fn = Partial(model.apply, params)
    cfg = attacks.AttackConfig.smoke()
    ours = attacks.lbfgs_attack(fn, x, t, config=cfg)
    ref = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, solver="jaxopt"))
    assert bool(ours.success.all()) and bool(ref.success.all())
    assert np.all(np.asarray(ours.l2) <= np.asarray(ref.l2) * 1.05)


def test_untargeted_closest_over_wrong_labels(mlp, mnist):
    model, params = mlp
    x, y, _ = correctly_classified(model, params, mnist.test, 2)
    fn = Partial(model.apply, params)
    cfg = attacks.AttackConfig.smoke()
    res = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg)
    assert bool(res.success.all()) and np.all(np.asarray(res.target) != y)
    every = attacks.lbfgs_attack(fn, np.repeat(x[:1], 9, 0), np.array([l for l in range(10) if l != y[0]],
                                                                       np.int32), config=cfg)
    # rtol: a batch of another size rounds the model's matrix products differently
    np.testing.assert_allclose(res.l2[0], np.min(np.where(every.success, every.l2, np.inf)), rtol=1e-3)


def test_untargeted_in_blocks_equals_one_batch(mlp, mnist):
    """max_rows bounds memory: images go through in blocks (the last padded); same examples as one batch."""
    model, params = mlp
    x, y, _ = correctly_classified(model, params, mnist.test, 5)
    fn = Partial(model.apply, params)
    cfg = dataclasses.replace(attacks.AttackConfig.smoke(), block_size=9, c_steps=3, maxiter=20)
    whole = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search="all")
    blocked = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, max_rows=18, search="all")  # 2 images per block
    np.testing.assert_array_equal(np.asarray(blocked.target), np.asarray(whole.target))
    np.testing.assert_array_equal(np.asarray(blocked.success), np.asarray(whole.success))
    np.testing.assert_allclose(np.asarray(blocked.adversarial), np.asarray(whole.adversarial), atol=1e-6)
    with pytest.raises(ValueError, match="max_rows"):
        attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, max_rows=5, search="all")


@pytest.mark.parametrize("images, targets, match", [
    (np.zeros((784,), np.float32), np.zeros((1,), np.int32), "rank"),
    (np.zeros((2, 784), np.int32), np.zeros((2,), np.int32), "floating"),
    (np.full((2, 784), np.nan, np.float32), np.zeros((2,), np.int32), "NaN"),
    (np.full((2, 784), 1.5, np.float32), np.zeros((2,), np.int32), "box"),
    (np.zeros((2, 784), np.float32), np.zeros((3,), np.int32), r"shape \[N\]"),
    (np.zeros((2, 784), np.float32), np.array([0, 10], np.int32), r"\[0, 10\)"),
    (np.zeros((2, 784), np.float32), np.array([0.0, 1.0]), "integer"),
    (np.zeros((0, 784), np.float32), np.zeros((0,), np.int32), "empty"),
])
def test_bad_input_is_a_clear_error(images, targets, match, mlp):
    model, params = mlp
    with pytest.raises(ValueError, match=match):
        attacks.lbfgs_attack(Partial(model.apply, params), images, targets)


def test_bad_logits_fn_is_a_clear_error():
    x, t = np.zeros((2, 784), np.float32), np.zeros((2,), np.int32)
    with pytest.raises(ValueError, match=r"logits \[N, K\]"):
        attacks.lbfgs_attack(lambda z: z.sum(-1), x, t)
    with pytest.raises(ValueError, match="failed"):
        attacks.lbfgs_attack(lambda z: z @ jnp.ones((5, 10)), x, t)


def test_noise_controls(key):
    x = jnp.full((4, 784), 0.5)
    noisy = noise.gaussian_noise(key, x, 0.1)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    np.testing.assert_allclose(attacks.distortion(x, noisy), 0.1, rtol=0.1)
    adv = x + jnp.array([0.01, 0.02, 0.05, 0.1])[:, None] * jnp.sign(jax.random.normal(key, (4, 784)))
    matched = noise.matched_noise(key, x, adv)
    np.testing.assert_allclose(attacks.distortion(x, matched), attacks.distortion(x, adv), rtol=0.1)
    assert noise.gaussian_noise(key, x, 3.0, clip=False).max() > 1


def test_c_search_stops_when_the_bracket_is_tight(mlp, mnist):
    """A looser c_rtol ends searches earlier (fewer evaluations) at nearly the same distortion."""
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 8)
    fn = Partial(model.apply, params)
    tight = attacks.lbfgs_attack(fn, x, t, config=attacks.AttackConfig(c_steps=20, c_rtol=1e-4))
    loose = attacks.lbfgs_attack(fn, x, t, config=attacks.AttackConfig(c_steps=20, c_rtol=0.1))
    assert bool(tight.success.all()) and bool(loose.success.all())
    assert int(loose.grad_evals.sum()) < int(tight.grad_evals.sum())
    assert float(loose.l2.mean()) <= float(tight.l2.mean()) * 1.02


def test_untargeted_searches(mlp, mnist):
    """``search``: "all" (K − 1 targeted solves), m nearest classes (a subset of the same independent solves,
    equal to float precision: never shorter; the "all" path itself when m = K − 1), "one" (one untargeted solve: verified, label no longer
    predicted); bad values refused."""
    model, params = mlp
    fn = Partial(model.apply, params)
    x = mnist.test.images[:6]
    y = np.asarray(train.predict(model.apply, params, x))
    cfg = attacks.AttackConfig(c_steps=4, maxiter=20)
    full = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search="all")
    assert np.array_equal(np.asarray(attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search=9).l2), np.asarray(full.l2))
    two = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search=2)
    ok = np.asarray(two.success)
    assert np.all(np.asarray(two.l2)[ok] >= np.asarray(full.l2)[ok] * (1 - 1e-5))  # batch-mates: float precision
    one = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search="one")
    ok = np.asarray(one.success)
    assert ok.mean() >= 5 / 6
    pred = np.asarray(train.predict(model.apply, params, np.asarray(one.adversarial)))
    assert np.all(pred[ok] != y[ok]) and np.array_equal(np.asarray(one.target)[ok], pred[ok])
    both = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search="one+2")  # the shorter success of each
    expect = np.where(np.asarray(one.success) & (~np.asarray(two.success) | (np.asarray(one.l2) < np.asarray(two.l2))),
                      np.asarray(one.l2), np.asarray(two.l2))
    np.testing.assert_allclose(np.asarray(both.l2), expect, rtol=1e-5)
    # evaluations: an image's whole work, every solve's together (+ K gradients for the nearest estimate)
    np.testing.assert_array_equal(np.asarray(both.grad_evals), np.asarray(one.grad_evals) + np.asarray(two.grad_evals))
    solves = attacks.lbfgs_attack(fn, np.repeat(x, 9, axis=0), ((np.repeat(y, 9) + np.tile(np.arange(1, 10), 6)) % 10), config=cfg)
    np.testing.assert_array_equal(np.asarray(full.grad_evals), np.asarray(solves.grad_evals).reshape(6, 9).sum(1))
    assert np.all(np.asarray(two.grad_evals) > 10)
    for bad in ("some", 0, "one+", "one+0", True):
        with pytest.raises(ValueError, match="search"):
            attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search=bad)


def test_untargeted_rows_read_their_best_wrong_class():
    from intriguing_jax import refine
    logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    codes = jnp.array([refine.untargeted(0), 2])  # row 0: anything but class 0; row 1: class 2
    assert refine.effective_targets(logits, codes).tolist() == [2, 2]
    p = jax.nn.softmax(logits)
    np.testing.assert_allclose(refine.classification_loss(logits, codes),
                               [-np.log(1 - p[0, 0]), -np.log(p[1, 2])], rtol=1e-5)
    assert refine.reached(jnp.array([1, 2]), codes).tolist() == [True, True]
    assert refine.reached(jnp.array([0, 1]), codes).tolist() == [False, False]
