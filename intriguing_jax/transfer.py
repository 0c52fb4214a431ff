"""Transfer of perturbed images between models: error-rate matrices and the paper's controls.

The paper's Tables 2 and 4 feed images perturbed for one model (a "row") to every model (a "column") and
report each column model's error rate against the *original* labels. The controls are Gaussian noise of a
fixed stddev, noise matched to each image's adversarial RMS (ours), and adversarial perturbations
rescaled ("magnified") to a fixed RMS.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from intriguing_jax import validate
from intriguing_jax.attacks import distortion


CLIPPED = ", clipped"  # suffix of a noise row whose images were clipped to the box


def error_rates(classifiers: Mapping[str, Callable[[np.ndarray], np.ndarray]], images, labels) -> dict:
    """Error rate of each classifier (images -> predicted labels) on ``images`` against ``labels``."""
    # perturbed rows (unclipped noise) may leave the pixel box, but never hold NaN/inf
    validate.labels(labels, validate.images(images, box=None), None)
    labels = np.asarray(labels)
    return {name: float(np.mean(np.asarray(predict(images)) != labels)) for name, predict in classifiers.items()}


def error_matrix(classifiers: Mapping[str, Callable], rows: Mapping[str, np.ndarray], labels) -> dict:
    """``{row: {column: error rate}}``: each row's images fed to every classifier."""
    return {row: error_rates(classifiers, images, labels) for row, images in rows.items()}


def rescale_to_rms(images, perturbed, rms, box=(0.0, 1.0), iters: int = 40) -> jax.Array:
    """``clip(x + s·r)`` with r = perturbed − x and, per image, the s ≥ 0 whose realised per-pixel RMS
    (after clipping to ``box``) equals ``rms`` (a scalar or one per image); found by bisection (the
    RMS is monotone in s).

    Images whose perturbation cannot reach ``rms`` inside the box get the largest reachable RMS; a zero
    perturbation stays zero. This is the paper's "magnified" row (Table 4) taken as its stated intent.
    """
    validate.images(images, box=box)
    validate.images(perturbed, name="perturbed", box=None)
    if jnp.shape(perturbed) != jnp.shape(images):
        raise ValueError(f"perturbed must have the shape of images {jnp.shape(images)}, got {jnp.shape(perturbed)}")
    x = jnp.asarray(images)
    r = jnp.asarray(perturbed) - x
    n = x.shape[0]

    def realised(s):
        return distortion(x, jnp.clip(x + s.reshape((n,) + (1,) * (x.ndim - 1)) * r, *box))

    rms = jnp.broadcast_to(jnp.asarray(rms, jnp.float32), (n,))
    base = jnp.maximum(distortion(x, x + r), 1e-12)
    lo = jnp.zeros(n)
    hi = rms / base
    for _ in range(8):  # grow hi until it overshoots (clipping can make the unclipped guess too small)
        hi = jnp.where(realised(hi) < rms, hi * 4.0, hi)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        low = realised(mid) < rms
        return jnp.where(low, mid, lo), jnp.where(low, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    s = 0.5 * (lo + hi)
    return jnp.clip(x + s.reshape((n,) + (1,) * (x.ndim - 1)) * r, *box)


def paper_magnify_literal(images, perturbed, scale: float = 0.1, box=(0.0, 1.0)) -> jax.Array:
    """The paper's formula read literally: ``x + scale · r / ‖r‖₂`` (an RMS of scale/√n, far below 0.1
    for MNIST's n = 784). Kept to record the discrepancy; ``rescale_to_rms`` is what the tables use."""
    x = jnp.asarray(images)
    r = (jnp.asarray(perturbed) - x).reshape(x.shape[0], -1)
    norm = jnp.maximum(jnp.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    return jnp.clip(x + (scale * r / norm).reshape(x.shape), *box)


def mean_rms(images, perturbed) -> float:
    """Mean over images of the realised per-pixel RMS of ``perturbed − images`` (the tables' distortion)."""
    return float(jnp.mean(distortion(images, perturbed)))


def cross_model_summary(matrix: dict, adversarial_rows, columns) -> dict:
    """Mean off-diagonal error of the adversarial rows vs the matched-noise rows (same columns): Table 2's
    transfer claim. Row ``r``'s matched-noise row is named ``"Noise matched to RMS of r"``."""
    adv = [matrix[r][c] for r in adversarial_rows for c in columns if c != r]
    noise = [matrix[f"Noise matched to RMS of {r}"][c] for r in adversarial_rows for c in columns if c != r]
    return {"adversarial_off_diagonal": float(np.mean(adv)) if adv else None,
            "matched_noise_off_diagonal": float(np.mean(noise)) if noise else None}


def trained_on_other_half(a: str, b: str) -> bool:
    """Were two Table 4 models trained on different halves? (A trailing ' marks the P2 model.)"""
    return a.endswith("'") != b.endswith("'")


def cross_training_summary(matrix: dict, columns, magnified_suffix: str) -> dict:
    """Table 4's means: error of models trained on the other half (adversarial, magnified, matched noise)
    and of other architectures on the same half, and the Gaussian controls."""
    def mean(suffix, pick):
        v = [matrix[f"Distorted for {r}{suffix}"][c] for r in columns for c in columns if pick(r, c)]
        return float(np.mean(v)) if v else None

    other = trained_on_other_half
    return {"adv_other_set": mean("", other),
            "adv_same_set_other_model": mean("", lambda r, c: r != c and not other(r, c)),
            "magnified_other_set": mean(magnified_suffix, other),
            "gaussian_006": float(np.mean([matrix["Gaussian noise, stddev 0.06"][c] for c in columns])),
            "gaussian_01": float(np.mean([matrix["Gaussian noise, stddev 0.1"][c] for c in columns])),
            **{f"gaussian_{tag}_clipped": float(np.mean([matrix[f"Gaussian noise, stddev {s}{CLIPPED}"][c]
                                                        for c in columns]))
               for tag, s in (("006", 0.06), ("01", 0.1)) if f"Gaussian noise, stddev {s}{CLIPPED}" in matrix},
            "matched_other_set": float(np.mean([matrix[f"Noise matched to RMS of {r}"][c]
                                                for r in columns for c in columns if other(r, c)]))}
