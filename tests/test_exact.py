import numpy as np
import pytest

from intriguing_jax import exact


def _problem(seed, d=30, k=5):
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(d, k)) * 0.3, rng.normal(size=k) * 0.3
    x = rng.uniform(size=d) * (rng.uniform(size=d) > 0.5)  # many pixels at the lower bound, like MNIST
    target = (int(np.argmax(x @ W + b)) + 1 + seed % (k - 1)) % k  # a class that does not win at x
    return W, b, x, target


@pytest.mark.parametrize("seed", range(6))
def test_dual_oracle_equals_slsqp_and_certifies_itself(seed):
    W, b, x, t = _problem(seed)
    m = exact.linear_minimum(W, b, x, t)
    assert m.violation < 1e-9 and m.lower_bound <= m.distance + 1e-12
    assert m.distance - m.lower_bound < 1e-7 * m.distance
    assert np.all(x + m.perturbation >= -1e-12) and np.all(x + m.perturbation <= 1 + 1e-12)
    logits = (x + m.perturbation) @ W + b
    assert logits[t] >= logits.max() - 1e-9  # on the target's boundary (ties allowed)
    assert m.distance == pytest.approx(exact.linear_min_l2(W, b, x, t, method="slsqp"), rel=1e-6)


def test_oracle_rejects_unreachable_target_and_bad_shapes():
    W = np.zeros((4, 3))
    W[:, 0] = 1.0  # class 0 beats class 2 by Σx + 1 ≥ 1 everywhere in the box: 2 can never win
    b = np.array([1.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="cannot be reached"):
        exact.linear_minimum(W, b, np.full(4, 0.5), 2)
    with pytest.raises(ValueError, match="W \\[D, K\\]"):
        exact.linear_minimum(W, b, np.zeros(5), 1)
    with pytest.raises(ValueError, match="not a class"):
        exact.linear_minimum(W, b, np.zeros(4), 3)
    with pytest.raises(ValueError, match="method"):
        exact.linear_min_l2(W, b, np.zeros(4), 1, method="newton")
