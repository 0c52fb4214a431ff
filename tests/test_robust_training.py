"""The positive controls' losses: each reduces to the plain loss at strength 0 and trains in a population."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intriguing_jax import data, models, train
from intriguing_jax import robust_training as rt
from tests.conftest import synthetic_mnist

MNIST = data._to_mnist(synthetic_mnist(n_train=256, n_test=64), "synthetic")
MODEL = models.build("FC100-100-10")
PARAMS = MODEL.init(jax.random.key(0))
BATCH = (jnp.asarray(MNIST.train.images[:32]), jnp.asarray(MNIST.train.labels[:32]))


def _member(**kw):
    return {"decay_scale": 1.0, "learning_rate": 1.0, "epsilon": 0.0, "dropout_input": 0.0, "dropout_hidden": 0.0, **kw}


@pytest.mark.parametrize("loss", [rt.FGSMLoss(MODEL), rt.L2AdversarialLoss(MODEL), rt.VATLoss(MODEL), rt.DropoutLoss(MODEL),
                                  rt.IBPLoss(MODEL)])
def test_every_control_is_the_plain_loss_at_strength_zero(loss):
    plain = train.ClassifierLoss(MODEL, train.TrainConfig.decay)(PARAMS, BATCH, None, jax.random.key(1))
    np.testing.assert_allclose(float(loss(PARAMS, BATCH, _member(), jax.random.key(1))), float(plain), rtol=1e-5)


def test_adversarial_examples_raise_the_loss_and_dropout_is_random():
    plain = float(rt.FGSMLoss(MODEL)(PARAMS, BATCH, _member(), jax.random.key(1)))
    assert float(rt.FGSMLoss(MODEL)(PARAMS, BATCH, _member(epsilon=0.25), jax.random.key(1))) > plain
    assert float(rt.L2AdversarialLoss(MODEL)(PARAMS, BATCH, _member(epsilon=2.0), jax.random.key(1))) > plain
    assert float(rt.VATLoss(MODEL)(PARAMS, BATCH, _member(epsilon=2.0), jax.random.key(1))) > plain
    drop = rt.DropoutLoss(MODEL)
    assert float(drop(PARAMS, BATCH, _member(dropout_hidden=0.5), jax.random.key(1))) != float(
        drop(PARAMS, BATCH, _member(dropout_hidden=0.5), jax.random.key(2)))


def test_a_population_of_strengths_trains_each_member_with_its_own():
    keys = jnp.stack([jax.random.key(0)] * 2)
    cfg = train.TrainConfig(epochs=1, batch_size=64)
    pop, hist = train.fit_population(MODEL, MNIST.train, keys, cfg, loss=rt.FGSMLoss(MODEL), settings={"epsilon": [0.0, 0.3]})
    plain, _ = train.fit_population(MODEL, MNIST.train, keys[:1], cfg)
    for a, b in zip(jax.tree.leaves(train.member(pop, 0)), jax.tree.leaves(train.member(plain, 0))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # ε = 0: the plain run
    assert hist[0][1] > hist[0][0]  # the ε = 0.3 member's loss includes its harder examples


@pytest.mark.parametrize("hidden, activation", [((), "sigmoid"), ((16, 12), "sigmoid"), ((16, 12), "relu")])
def test_ibp_worst_logits_bound_every_point_of_the_ball_and_tighten_to_the_margins_at_zero(hidden, activation):
    spec = models.ModelSpec("t", models.MLP(hidden, activation=activation), {})
    model = models.build(spec)
    p = model.init(jax.random.key(3))
    x, y = BATCH[0][:8], BATCH[1][:8]
    logits = model.apply(p, x)
    margins = logits - jnp.take_along_axis(logits, y[:, None], axis=1)
    np.testing.assert_allclose(rt.ibp_worst_logits(model, p, x, y, 0.0), margins, atol=1e-4)
    eps = 0.7
    bound = rt.ibp_worst_logits(model, p, x, y, eps)
    d = jax.random.normal(jax.random.key(4), (128,) + x.shape)  # random points on and inside the sphere
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True) * eps * jax.random.uniform(jax.random.key(5), (128, 1, 1)) ** 0.1
    z = model.apply(p, (x[None] + d).reshape(-1, x.shape[1])).reshape(128, 8, -1)
    seen = z - jnp.take_along_axis(z, jnp.broadcast_to(y[None, :, None], (128, 8, 1)), axis=2)
    assert bool((seen.max(0) <= bound + 1e-4).all())
    grad = jax.grad(lambda q: rt.IBPLoss(model)(q, (x, y), _member(epsilon=eps), jax.random.key(0)))(p)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grad))


def test_epsilon_ramp_warms_up_then_raises_epsilon_and_lowers_kappa_then_holds():
    ramp = rt.EpsilonRamp([0.5, 1.0], warmup=10, ramp=20)
    extra = {"epsilon": jnp.zeros(2), "kappa": jnp.ones(2), "learning_rate": jnp.ones(2)}
    at = lambda step: ramp.before_step(step, None, None, extra)  # noqa: E731
    np.testing.assert_allclose(at(5)["epsilon"], [0.0, 0.0])
    np.testing.assert_allclose(at(20)["epsilon"], [0.25, 0.5])
    np.testing.assert_allclose(at(20)["kappa"], [0.75, 0.75])
    np.testing.assert_allclose(at(100)["epsilon"], [0.5, 1.0])
    np.testing.assert_allclose(at(100)["kappa"], [0.5, 0.5])
    assert set(at(0)) == set(extra)


def test_ibp_training_with_the_ramp_moves_the_members_settings_each_step():
    seen = []

    class Spy(rt.EpsilonRamp):
        def before_step(self, step, key, params, extra):
            out = super().before_step(step, key, params, extra)
            seen.append(float(out["epsilon"][0]))
            return out
    cfg = train.TrainConfig(epochs=2, batch_size=64)
    steps = len(MNIST.train) // 64
    train.fit_population(MODEL, MNIST.train, jnp.stack([jax.random.key(0)]), cfg, loss=rt.IBPLoss(MODEL),
                         settings={"epsilon": [0.0], "kappa": [1.0]}, hook=Spy([0.4], steps, steps))
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.4 * (steps - 1) / steps) and len(seen) == 2 * steps
