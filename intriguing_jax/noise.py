"""The paper's random-noise controls: Gaussian noise of a fixed stddev, and noise as large as each
image's adversarial perturbation.

Clipping to the box matters on MNIST (mostly zero pixels): clipped noise of stddev σ has a realised RMS
well below σ. ``gaussian_noise(clip=False)`` is what the paper's distortion column reports (it equals
the stddev); ``clip=True`` is what a valid image needs. ``noise_with_rms`` matches the *realised* RMS
inside the box instead.

References: Szegedy et al. 2014, Tables 2 and 4 (noise rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from intriguing_jax import transfer
from intriguing_jax.attacks import distortion


def gaussian_noise(key: jax.Array, images: jax.Array, stddev, clip: bool = True,
                   box: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
    """The paper's random-distortion control: ``images + N(0, stddev²)`` per pixel.

    Args:
      key: PRNG key; images: ``[N, ...]``.
      stddev: a scalar or one per image ``[N]``.
      clip: clip to ``box`` (a valid image; lowers the realised RMS near the box faces) or not (the
        realised RMS is the stddev, as in the paper's distortion column).
      box: pixel bounds.

    Returns:
      The noisy images, shaped like ``images``.

    References:
      Szegedy et al. 2014, Tables 2 and 4 (Gaussian noise rows).
    """
    images = jnp.asarray(images)
    std = jnp.asarray(stddev, images.dtype).reshape((-1,) + (1,) * (images.ndim - 1))
    noisy = images + std * jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(noisy, *box) if clip else noisy


def matched_noise(key: jax.Array, images: jax.Array, adversarial: jax.Array, clip: bool = True,
                  box: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
    """Gaussian noise whose stddev, per image, is the RMS of that image's adversarial perturbation.

    Args:
      key: PRNG key; images: clean ``[N, ...]``; adversarial: their adversarial examples.
      clip, box: as for ``gaussian_noise``.

    Returns:
      The noisy images (before clipping, their RMS matches the adversarial one in expectation).
    """
    return gaussian_noise(key, images, distortion(images, adversarial), clip=clip, box=box)


def noise_with_rms(key: jax.Array, images, rms, box=(0.0, 1.0)) -> jax.Array:
    """Noise in a Gaussian direction whose *realised* per-pixel RMS inside ``box`` is ``rms``: the
    control "noise of the same size" with clipping accounted for (``matched_noise`` matches the stddev
    before clipping).

    Args:
      key: PRNG key; images: clean ``[N, ...]``; rms: a scalar or one per image ``[N]``; box: bounds.

    Returns:
      Noisy images inside ``box`` (``transfer.rescale_to_rms`` of a Gaussian perturbation).
    """
    x = jnp.asarray(images)
    return transfer.rescale_to_rms(x, x + jax.random.normal(key, x.shape, x.dtype), rms, box)


def gaussian_rows(key: jax.Array, images, stddev: float) -> dict:
    """Table rows of one Gaussian-noise draw: unclipped (the paper's reading: realised RMS = stddev) and
    the same draw clipped to [0, 1] (row name + ``transfer.CLIPPED``)."""
    return {f"Gaussian noise, stddev {stddev}{tag}": np.asarray(gaussian_noise(key, images, stddev, clip=clip))
            for tag, clip in (("", False), (transfer.CLIPPED, True))}
