"""Library functions compile once per shape: a repeated call on same-shaped inputs traces nothing again."""

import collections
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from intriguing_jax import adversarial_training, attacks, data, models, train, units
from tests.conftest import synthetic_mnist

_TRACES = collections.Counter()


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_trace_duration":
        _TRACES["traces"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@contextlib.contextmanager
def traces():
    """Counts the jaxpr traces (each compilation starts with one) inside the block."""
    box = {}
    before = _TRACES["traces"]
    yield box
    box["n"] = _TRACES["traces"] - before


def _twice(fn):
    """Runs ``fn`` twice; returns the traces of the first and of the second call."""
    with traces() as first:
        fn()
    with traces() as second:
        fn()
    return first["n"], second["n"]


MNIST = data._to_mnist(synthetic_mnist(n_train=256, n_test=64), "synthetic")
MODEL = models.build("FC100-100-10")
PARAMS = MODEL.init(jax.random.key(0))
SMALL = train.TrainConfig(epochs=1, batch_size=64)


def test_the_counter_sees_a_compilation():
    first, second = _twice(lambda: jax.jit(lambda x: x * 2.0)(jnp.ones(3)))  # a new closure each time
    assert first >= 1 and second >= 1


def test_error_rate_and_layer_activations_compile_once():
    # (a test run earlier in this process may have compiled them already: only the repeat is checked)
    other = MODEL.init(jax.random.key(1))  # new weights, same shapes: no recompilation either
    assert _twice(lambda: train.error_rate(MODEL.apply, PARAMS, MNIST.test))[1] == 0
    assert _twice(lambda: train.error_rate(MODEL.apply, other, MNIST.test)) == (0, 0)
    assert _twice(lambda: units.layer_activations(MODEL, PARAMS, MNIST.test.images, 1))[1] == 0
    assert _twice(lambda: units.layer_activations(models.build("FC100-100-10"), other, MNIST.test.images, 1)) == (0, 0)


def test_the_attack_compiles_once():
    x, y = MNIST.test.images[:8], MNIST.test.labels[:8]
    t = attacks.random_wrong_targets(jax.random.key(0), y)
    cfg = attacks.AttackConfig(c_steps=2, maxiter=5)
    first, second = _twice(lambda: attacks.lbfgs_attack(Partial(MODEL.apply, PARAMS), x, t, config=cfg))
    assert first >= 1 and second == 0


def test_training_compiles_once_per_recipe():
    def fit(seed):
        return train.fit(MODEL, MNIST.train, jax.random.key(seed), SMALL)

    first, second = _twice(lambda: fit(0))
    assert first >= 1 and second == 0
    assert _twice(lambda: fit(1)) == (0, 0)  # another seed, the same program


def test_adversarial_training_compiles_once_per_recipe():
    adv = adversarial_training.AdvTrainConfig(layers=(2,), pool_size=64, refresh_every=2, refresh_count=16,
                                              pool_batch=8, attack=attacks.AttackConfig(c_steps=1, maxiter=3, rescue_steps=0))

    def fit():
        return adversarial_training.fit(MODEL, MNIST.train, jax.random.key(0), SMALL, adv)

    first, second = _twice(fit)
    assert first >= 1 and second == 0
    np.testing.assert_array_equal(*(np.asarray(fit()[0]["params"]["dense_2"]["kernel"]) for _ in range(2)))


def test_interval_bounds_trace_the_model_once_per_call():
    from intriguing_jax import bounds

    def traced(n):
        x = np.asarray(MNIST.test.images[:n])
        y = np.asarray(train.predict(MODEL.apply, PARAMS, x))
        with traces() as t:
            bounds.certified_radius(Partial(MODEL.apply, PARAMS), x, y, method="ibp", tol=1e-2)
        return t["n"]
    traced(2)  # the checks' own programs compile once
    # the bisection takes a dozen steps per image: a per-image or per-step trace would grow with n
    assert traced(2) == traced(8) <= 3
