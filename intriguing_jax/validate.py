"""Checks on the arguments of every public entry point: one ``ValueError`` that names the argument, what
was expected and what was found, before any compilation; never a silent wrong answer.

Values are checked only where they are concrete (not under ``jax.jit`` tracing, where shapes and dtypes
still are).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from intriguing_jax._attack_engine import as_partial


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _array(x):
    """``x`` itself if it is an array (numpy, jax, a tracer), else ``np.asarray(x)`` (lists, scalars)."""
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


def images(x, *, name: str = "images", box: tuple[float, float] | None = (0.0, 1.0), min_rank: int = 2) -> int:
    """Checks a batch of images: rank ≥ ``min_rank`` (a leading batch axis), floating dtype, not empty,
    every value finite and (``box`` not None) inside ``box``. Returns N.

    Raises:
      ValueError: naming ``name``, the expectation and what was found.
    """
    x = _array(x)
    if jnp.ndim(x) < min_rank:
        raise ValueError(f"{name} must be a batch [N, ...] of rank >= {min_rank}, got shape {jnp.shape(x)}")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point (pixels in [0, 1]), got dtype {dtype}")
    n = jnp.shape(x)[0]
    if n == 0:
        raise ValueError(f"{name} is an empty batch (shape {jnp.shape(x)})")
    if is_concrete(x):
        v = np.asarray(x)
        bad = np.size(v) - np.count_nonzero(np.isfinite(v))
        if bad:
            first = np.argwhere(~np.isfinite(v).reshape(n, -1))[0][0]
            raise ValueError(f"{name} contain {bad} NaN/inf value(s) (first in row {first}); expected finite pixels")
        if box is not None and (v.min() < box[0] or v.max() > box[1]):
            raise ValueError(f"{name}: pixels must lie in the box [{box[0]}, {box[1]}]; found range "
                             f"[{v.min()}, {v.max()}] (images in [0, 255] need dividing by 255)")
    return int(n)


def labels(y, n: int, k: int | None, *, name: str = "labels") -> None:
    """Checks class indices: shape ``[n]``, integer dtype, every value in ``[0, k)`` (``k`` None: ≥ 0).

    Raises:
      ValueError: naming ``name``, the expectation and what was found.
    """
    y = _array(y)
    if jnp.ndim(y) != 1 or jnp.shape(y)[0] != n:
        raise ValueError(f"{name} must have shape [N] = [{n}] (one per image), got {jnp.shape(y)}")
    dtype = jnp.result_type(y)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {dtype}")
    if is_concrete(y) and n:
        v = np.asarray(y)
        if v.min() < 0 or (k is not None and v.max() >= k):
            raise ValueError(f"{name} must lie in [0, {k}) for {k} classes; found [{v.min()}, {v.max()}]"
                             if k is not None else f"{name} must be >= 0; found minimum {v.min()}")


@jax.jit
def _call(logits_fn, x):
    return logits_fn(x)


@functools.partial(jax.jit, static_argnums=0)
def _initial_logits(fns, key, x):
    init, apply = fns
    return apply(init(key), x)


def num_classes(init: Callable, apply: Callable, x) -> int:
    """K, the number of logits a model (``init(key) -> params``, ``apply(params, x)``) gives for the batch
    ``x`` (shapes only; a repeated call with the same functions and shapes traces nothing)."""
    return int(_initial_logits.eval_shape((init, apply), jax.random.key(0), jnp.asarray(x[:1])).shape[-1])


def logits_fn(fn: Callable, x, *, name: str = "logits_fn") -> int:
    """Checks that ``fn`` maps the batch ``x [N, ...]`` to logits ``[N, K]`` (shapes only: ``eval_shape``,
    no compilation). Returns K."""
    if not callable(fn):
        raise ValueError(f"{name} must be callable, got {type(fn).__name__}")
    x = _array(x)
    spec = jax.ShapeDtypeStruct(jnp.shape(x), jnp.float32)
    try:  # jit's trace cache: a repeated call with the same model and shapes traces nothing
        out = _call.eval_shape(as_partial(fn), spec)
    except Exception as e:
        raise ValueError(f"{name} failed on a batch of shape {spec.shape}: {e}") from e
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != spec.shape[0]:
        raise ValueError(f"{name} must map [N, ...] to logits [N, K]; on images {spec.shape} it "
                         f"returned {getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])


def finite_logits(fn: Callable, x, *, name: str = "logits_fn", block: int = 4096) -> None:
    """Checks that the model's logits at the clean images ``x`` are finite (one forward pass, in blocks
    of ``block`` images); a model that outputs NaN/inf would make every attack fail and every bound
    vacuous without a word."""
    if not is_concrete(x):
        return
    x, fn = _array(x), as_partial(fn)
    for s in range(0, int(jnp.shape(x)[0]), block):
        out = np.asarray(_call(fn, jnp.asarray(x[s:s + block], jnp.float32)))
        if not np.all(np.isfinite(out)):
            rows = np.flatnonzero(~np.all(np.isfinite(out), axis=1)) + s
            raise ValueError(f"{name} returned NaN/inf logits for {len(rows)} clean image(s) (first: row "
                             f"{rows[0]}); check the model's weights")
