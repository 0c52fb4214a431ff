"""Unit analysis (Sec. 3): are single units more interpretable than random directions of their layer?

For a layer's activations φ(x) over a held-out set I, each direction v selects the images maximising
⟨φ(x), v⟩ (v = e_i for a unit, a normalised Gaussian for a random direction). All directions are scored
with one matrix product. The paper only shows such image sets; we also score how coherent each set is
(label purity and entropy, mean pairwise cosine similarity in a feature space independent of the
analysed layer) and test units against random directions (permutation test, bootstrap CI, effect size).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from intriguing_jax import validate


def natural_basis(dim: int) -> jax.Array:
    """The unit directions e_i as rows, ``[dim, dim]``."""
    return jnp.eye(dim, dtype=jnp.float32)


def random_directions(key: jax.Array, num: int, dim: int) -> jax.Array:
    """``num`` directions drawn uniformly on the unit sphere of R^dim (normalised Gaussians), as rows."""
    v = jax.random.normal(key, (num, dim), jnp.float32)
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def top_k(activations, directions, k: int) -> jax.Array:
    """``[M, k]`` indices of the held-out images with the largest ⟨φ(x), v⟩ for each of the M directions
    (rows of ``directions``), best first: one ``[N, D] @ [D, M]`` product and a batched top-k."""
    acts, dirs = jnp.asarray(activations), jnp.asarray(directions)
    if acts.ndim != 2 or dirs.ndim != 2 or acts.shape[1] != dirs.shape[1]:
        raise ValueError(f"need activations [N, D] and directions [M, D], got {acts.shape} and {dirs.shape}")
    if not 0 < k <= acts.shape[0]:
        raise ValueError(f"k must be in 1..{acts.shape[0]}, got {k}")
    return jax.lax.top_k((acts @ dirs.T).T, k)[1]


class Coherence(NamedTuple):
    """Per-direction coherence of its top-k set (each ``[M]``)."""

    purity: np.ndarray  # share of the set carrying its most common label
    entropy: np.ndarray  # entropy (bits) of the set's label distribution
    similarity: np.ndarray  # mean pairwise cosine similarity of the set in the reference feature space


def coherence(indices, labels, features, num_classes: int = 10) -> Coherence:
    """Scores each top-k set ``indices [M, k]`` by its ``labels`` and by ``features [N, F]`` (a space
    independent of the analysed layer, e.g. pixels)."""
    idx = np.asarray(indices)
    lab = np.asarray(labels)[idx]  # [M, k]
    counts = np.stack([(lab == c).sum(1) for c in range(num_classes)], 1) / idx.shape[1]
    purity = counts.max(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(counts > 0, counts * np.log2(counts), 0.0), 1)
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sets = f[idx]  # [M, k, F]
    gram = np.einsum("mkf,mlf->mkl", sets, sets)
    k = idx.shape[1]
    similarity = (gram.sum((1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (k * (k - 1))
    return Coherence(purity, entropy, similarity)


class Comparison(NamedTuple):
    """Score of group a minus group b (means), with a permutation p-value (two-sided), a bootstrap CI
    of the difference and Cohen's d."""

    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    cohens_d: float


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def compare(a, b, *, seed: int = 0, permutations: int = 10000, bootstrap: int = 10000,
            level: float = 0.95) -> Comparison:
    """Two-sample comparison of per-direction scores ``a`` (e.g. units) vs ``b`` (e.g. random): the
    difference of means, its two-sided permutation p-value (``scipy.stats.permutation_test``), a
    percentile bootstrap CI resampling each group independently (``scipy.stats.bootstrap``) and Cohen's d
    (pooled standard deviation). Seeded: the same ``seed`` gives the same p-value and interval."""
    import scipy.stats  # only here: importing the library does not load it

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two scores per group")
    diff = a.mean() - b.mean()
    perm = scipy.stats.permutation_test((a, b), _mean_difference, permutation_type="independent",
                                        vectorized=True, n_resamples=permutations, alternative="two-sided",
                                        rng=np.random.default_rng(seed))
    boot = scipy.stats.bootstrap((a, b), _mean_difference, n_resamples=bootstrap, vectorized=True,
                                 confidence_level=level, method="percentile",
                                 rng=np.random.default_rng(seed + 1))
    sd = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    d = diff / sd if sd > 0 else 0.0
    return Comparison(float(a.mean()), float(b.mean()), float(diff), float(boot.confidence_interval.low),
                      float(boot.confidence_interval.high), float(perm.pvalue), float(d))


METRICS = ("purity", "entropy", "similarity")


@functools.partial(jax.jit, static_argnames="layer")
def _layer_output(activations, x, *, layer: int):
    return activations(x)[layer]


def layer_activations(model, params, images, layer: int, batch: int = 2000) -> np.ndarray:
    """``model.activations(params, images)[layer]`` in jitted batches, as numpy (one compilation per model,
    layer and batch shape: the weights are an argument)."""
    fn = Partial(model.activations, params)
    return np.concatenate([np.asarray(_layer_output(fn, images[i:i + batch], layer=layer))
                           for i in range(0, len(images), batch)])


def _describe(v) -> dict:
    v = np.asarray(v, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v))}


def analyse(model, params, images, labels, layer: int, key: jax.Array, *, k: int = 8, seed: int = 0) -> dict:
    """The unit-analysis design: top-``k`` sets of every unit of a layer vs as many random directions,
    scored and compared, with floors that show the score can tell.

    Groups: all units, live units (not constant on ``images``: a dead ReLU ranks images arbitrarily),
    random directions of the layer, the same layer of an untrained network (units and random directions),
    random directions in pixel space, and random image sets.

    Args:
      model, params: a registry model and its trained weights; layer: index into ``model.activations``.
      images, labels: the held-out set (flat images; pixel space is the reference feature space).
      key: PRNG key (untrained weights, random directions, random sets: ``fold_in(key, 0..4)``).
      k: images per direction. seed: of the permutation test and bootstrap.

    Returns:
      dict: ``k``, ``directions``, ``dead_units``, ``live_units``, ``scores`` (mean/std/median per group and
      metric), ``comparisons`` (``compare`` per pair and metric), and ``_sets``/``_scores`` (for figures).
    """
    validate.labels(labels, validate.images(images), None)
    depth = len(jax.eval_shape(lambda h: model.activations(params, h), jnp.asarray(images[:1])))
    if not -depth <= layer < depth:
        raise ValueError(f"layer must index one of model.activations' {depth} outputs, got {layer}")
    x, y = images, labels
    acts = layer_activations(model, params, x, layer)
    d = acts.shape[1]
    live = acts.max(0) > acts.min(0)
    untrained = layer_activations(model, model.init(jax.random.fold_in(key, 0)), x, layer)
    groups = {"units": (acts, natural_basis(d)), "live units": (acts, natural_basis(d)[live]),
              "random": (acts, random_directions(jax.random.fold_in(key, 1), d, d)),
              "untrained units": (untrained, natural_basis(d)),
              "untrained random": (untrained, random_directions(jax.random.fold_in(key, 2), d, d)),
              "pixel random": (x, random_directions(jax.random.fold_in(key, 3), d, x.shape[1]))}
    sets = {name: np.asarray(top_k(a, dirs, k)) for name, (a, dirs) in groups.items()}
    m = len(sets["units"])
    sets["random images"] = np.asarray(jax.random.choice(jax.random.fold_in(key, 4), len(x), (m, k), replace=True))
    scores = {name: coherence(s, y, x) for name, s in sets.items()}
    pairs = {"units vs random": ("units", "random"), "live units vs random": ("live units", "random"),
             "random vs untrained random (floor)": ("random", "untrained random"),
             "random vs pixel random (floor)": ("random", "pixel random"),
             "random vs random images (floor)": ("random", "random images")}
    comparisons = {label: {metric: compare(getattr(scores[a], metric), getattr(scores[b], metric), seed=seed)._asdict()
                           for metric in METRICS} for label, (a, b) in pairs.items()}
    return {"k": k, "directions": m, "dead_units": m - int(live.sum()), "live_units": np.flatnonzero(live).tolist(),
            "scores": {g: {metric: _describe(getattr(s, metric)) for metric in METRICS} for g, s in scores.items()},
            "comparisons": comparisons, "_sets": sets, "_scores": scores}
