import numpy as np
import pytest

from intriguing_jax import attacks, transfer


def test_error_matrix_counts_mismatches_against_labels():
    labels = np.array([0, 1, 2, 3])
    classifiers = {"right": lambda im: labels, "always0": lambda im: np.zeros(len(im), int)}
    m = transfer.error_matrix(classifiers, {"row": np.zeros((4, 784))}, labels)
    assert m == {"row": {"right": 0.0, "always0": 0.75}}
    with pytest.raises(ValueError, match="labels"):
        transfer.error_rates(classifiers, np.zeros((3, 784)), labels)


def test_rescale_to_rms_reaches_the_rms_inside_the_box(key):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 784)).astype(np.float32)
    x[:8, :400] = 0.0  # many pixels on the box face: clipping must be compensated
    adv = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1).astype(np.float32)
    out = np.asarray(transfer.rescale_to_rms(x, adv, 0.1))
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(np.asarray(attacks.distortion(x, out)), 0.1, rtol=1e-4)
    # the direction is kept where nothing clips
    r, s = (adv - x)[8:], (out - x)[8:]
    inside = (out[8:] > 0) & (out[8:] < 1)
    ratio = s[inside & (np.abs(r) > 1e-3)] / r[inside & (np.abs(r) > 1e-3)]
    assert ratio.min() > 0


def test_rescale_keeps_zero_perturbation_and_literal_formula_is_tiny():
    x = np.full((2, 784), 0.5, np.float32)
    adv = x.copy()
    adv[1, :10] += 0.1
    out = np.asarray(transfer.rescale_to_rms(x, adv, 0.1))
    np.testing.assert_array_equal(out[0], x[0])
    literal = np.asarray(transfer.paper_magnify_literal(x, adv, 0.1))
    np.testing.assert_allclose(np.asarray(attacks.distortion(x, literal))[1], 0.1 / 28, rtol=1e-5)
