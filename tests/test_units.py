import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intriguing_jax import units


def test_top_k_is_one_matrix_product_and_matches_brute_force(key):
    acts = jax.random.normal(key, (50, 6))
    dirs = units.random_directions(jax.random.key(1), 4, 6)
    idx = np.asarray(units.top_k(acts, dirs, 5))
    for m in range(4):
        want = np.argsort(-np.asarray(acts @ dirs[m]))[:5]
        np.testing.assert_array_equal(idx[m], want)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(dirs), axis=1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="directions"):
        units.top_k(acts, jnp.ones((3, 7)), 5)
    with pytest.raises(ValueError, match="k must be"):
        units.top_k(acts, dirs, 51)


def _planted(rotate: bool, seed=0, n=2000, d=10):
    """Each label c has a large value on axis c (axis-aligned planted structure); optionally rotated."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, d, n)
    acts = rng.normal(0, 1.0, (n, d))
    acts[np.arange(n), y] += 3.0
    if rotate:
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        acts = acts @ q
    return acts.astype(np.float32), y


def test_purity_detects_axis_aligned_units_and_not_rotated_ones():
    acts, y = _planted(rotate=False)
    pixels = np.eye(10)[y] + 0.1  # a stand-in feature space
    unit = units.coherence(units.top_k(acts, units.natural_basis(10), 20), y, pixels)
    rand = units.coherence(units.top_k(acts, units.random_directions(jax.random.key(0), 10, 10), 20), y, pixels)
    assert unit.purity.mean() > 0.95
    c = units.compare(unit.purity, rand.purity, permutations=2000, bootstrap=2000)
    assert c.difference > 0.2 and c.ci_low > 0 and c.p_value < 0.01
    # after a random rotation the units lose their privileged status
    acts_r, _ = _planted(rotate=True)
    unit_r = units.coherence(units.top_k(acts_r, units.natural_basis(10), 20), y, pixels)
    assert unit_r.purity.mean() < unit.purity.mean() - 0.2


def test_compare_finds_nothing_between_samples_of_one_distribution():
    rng = np.random.default_rng(3)
    c = units.compare(rng.normal(size=100), rng.normal(size=100), permutations=2000, bootstrap=2000)
    assert c.ci_low < 0 < c.ci_high and c.p_value > 0.05
    with pytest.raises(ValueError):
        units.compare([1.0], [1.0, 2.0])


def test_coherence_scores_known_sets():
    labels = np.array([0, 0, 0, 1, 2, 3])
    feats = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1], [1, -1]], float)
    c = units.coherence(np.array([[0, 1, 2], [3, 4, 5]]), labels, feats)
    np.testing.assert_allclose(c.purity, [1, 1 / 3])
    np.testing.assert_allclose(c.entropy, [0, np.log2(3)])
    np.testing.assert_allclose(c.similarity[0], 1.0)
    np.testing.assert_allclose(c.similarity[1], (np.sqrt(0.5) - np.sqrt(0.5) + 0) / 3, atol=1e-12)


def _hand_written_compare(a, b, rng, permutations, bootstrap, level=0.95):
    """The test and interval as the library computed them before scipy.stats (the reference)."""
    diff, pooled = a.mean() - b.mean(), np.concatenate([a, b])
    shuffled = pooled[np.argsort(rng.random((permutations, len(pooled))), axis=1)]
    null = shuffled[:, :len(a)].mean(1) - shuffled[:, len(a):].mean(1)
    p = (1 + np.sum(np.abs(null) >= abs(diff) - 1e-12)) / (permutations + 1)
    boot = (a[rng.integers(0, len(a), (bootstrap, len(a)))].mean(1) - b[rng.integers(0, len(b), (bootstrap, len(b)))].mean(1))
    return p, np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])


def test_compare_matches_the_hand_written_tests_within_monte_carlo_error():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 1, 60), rng.normal(0, 1, 80)  # a p-value near 0.1: both tails matter
    c = units.compare(a, b, seed=1, permutations=20000, bootstrap=20000)
    p, (lo, hi) = _hand_written_compare(a, b, np.random.default_rng(1), 20000, 20000)
    assert abs(c.p_value - p) < 0.01  # Monte-Carlo error of a p ~ 0.1 over 20,000 draws: ~0.002
    assert abs(c.ci_low - lo) < 0.02 and abs(c.ci_high - hi) < 0.02
    assert c == units.compare(a, b, seed=1, permutations=20000, bootstrap=20000)  # seeded
    assert c.ci_low < c.difference < c.ci_high
