"""Unit analysis (Sec. 3): are single units more interpretable than random directions of their layer?

For a layer's activations φ(x) over a held-out set I, each direction v selects the images maximising
⟨φ(x), v⟩ (v = e_i for a unit, a normalised Gaussian for a random direction). All directions are scored
with one matrix product. The paper only shows such image sets; we also score how coherent each set is
(label purity and entropy, mean pairwise cosine similarity in a feature space independent of the
analysed layer) and test units against random directions (permutation test, bootstrap CI, effect size).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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


def compare(a, b, *, seed: int = 0, permutations: int = 10000, bootstrap: int = 10000,
            level: float = 0.95) -> Comparison:
    """Two-sample comparison of per-direction scores ``a`` (e.g. units) vs ``b`` (e.g. random)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two scores per group")
    rng = np.random.default_rng(seed)
    diff = a.mean() - b.mean()
    pooled = np.concatenate([a, b])
    perm = np.argsort(rng.random((permutations, len(pooled))), axis=1)
    shuffled = pooled[perm]
    null = shuffled[:, :len(a)].mean(1) - shuffled[:, len(a):].mean(1)
    p = (1 + np.sum(np.abs(null) >= abs(diff) - 1e-12)) / (permutations + 1)
    boot = (a[rng.integers(0, len(a), (bootstrap, len(a)))].mean(1)
            - b[rng.integers(0, len(b), (bootstrap, len(b)))].mean(1))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    sd = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    d = diff / sd if sd > 0 else 0.0
    return Comparison(float(a.mean()), float(b.mean()), float(diff), float(lo), float(hi), float(p), float(d))
