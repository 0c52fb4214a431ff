"""Spectral analysis (Sec. 4.3): per-layer upper Lipschitz bounds, exact operator norms, certified radii.

Each layer φ_k has ‖φ_k(x) − φ_k(x + r)‖ ≤ L_k ‖r‖; the network is bounded by Π L_k.
- Dense: L = ‖W‖₂ (largest singular value).
- Convolution (C → D maps, stride Δ): in Fourier space the operator is block diagonal. For each output
  frequency ξ the D × (C·Δ²) matrix B(ξ) stacks the kernels' DFT at ξ's Δ² aliases, and
  ‖conv‖ = max_ξ σ_max(B(ξ)) / Δ — exact for circular padding on a grid divisible by Δ. Zero ("SAME" or
  "VALID") padding is a restriction of a circular convolution on a grid at least kernel − 1 larger, so
  the same formula on that grid is an upper bound.
- Max-pooling: 1 for non-overlapping windows (the paper's value); with overlapping windows an input
  can feed up to m windows and the honest bound is √m (``maxpool_bound``). ReLU: 1. Sigmoid: 1/4.
  Contrast normalisation x / (ε + ‖x‖²)^γ: ε^(−γ) (the paper's bound).
The exact norm of any linear layer comes from power iteration on the map and its transpose
(``jax.linear_transpose``), used to check the Fourier bound.
"""

from __future__ import annotations

import functools

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from intriguing_jax import validate


def dense_bound(kernel) -> float:
    """Largest singular value of a dense kernel ``[in, out]`` (exact: the largest eigenvalue of the
    smaller Gram matrix, which is much cheaper than an SVD for AlexNet's 9216×4096 layer)."""
    w = np.asarray(kernel, np.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return float(np.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0)))


def _fft_grid(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "CIRCULAR":
        if size % stride:
            raise ValueError(f"circular stride-{stride} bound needs an input size divisible by it, got {size}")
        return size
    n = size + kernel - 1  # big enough that no wrap-around reaches the kept outputs
    return -(-n // stride) * stride


def conv_bound(kernel, input_hw: tuple[int, int], stride: int = 1, padding: str = "CIRCULAR") -> float:
    """Upper bound on the operator norm of a 2-D convolution with ``kernel [kh, kw, C, D]`` (Flax HWIO)
    on ``input_hw`` inputs, by the paper's Fourier formula (exact for ``padding="CIRCULAR"``)."""
    k = np.asarray(kernel, np.float64)
    kh, kw, c, d = k.shape
    h = _fft_grid(input_hw[0], kh, stride, padding)
    w = _fft_grid(input_hw[1], kw, stride, padding)
    if kh > h or kw > w:
        raise ValueError(f"kernel {kh}x{kw} larger than the grid {h}x{w}")
    spec = np.fft.fft2(k, s=(h, w), axes=(0, 1)).astype(np.complex64)  # [h, w, C, D]
    hs, ws = h // stride, w // stride
    # alias blocks: frequency (i + a·hs, j + b·ws) for a, b < stride folds onto output frequency (i, j)
    blocks = spec.reshape(stride, hs, stride, ws, c, d).transpose(1, 3, 5, 0, 2, 4).reshape(hs, ws, d, -1)
    sigma = np.linalg.svd(blocks, compute_uv=False)[..., 0]
    return float(sigma.max() / stride)


def conv_apply(kernel, x, stride: int = 1, padding: str = "CIRCULAR"):
    """The linear part of a Flax-style convolution (cross-correlation), NHWC input, HWIO kernel;
    ``padding`` is ``"CIRCULAR"``, ``"SAME"`` or ``"VALID"``."""
    kernel = jnp.asarray(kernel)
    kh, kw = kernel.shape[:2]
    if padding == "CIRCULAR":
        # wrap so that output (i, j) sees inputs (i + u − kh//2, j + v − kw//2) modulo the size
        x = jnp.pad(x, ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)), mode="wrap")
        padding = "VALID"
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def operator_norm(linear_fn: Callable, input_shape, key: jax.Array, iters: int = 500) -> float:
    """‖A‖₂ of a linear map by power iteration on AᵀA (the transpose from ``jax.linear_transpose``)."""
    x0 = jax.random.normal(key, tuple(input_shape), jnp.float32)
    v = _power_iteration(x0 / jnp.linalg.norm(x0), linear_fn=linear_fn, iters=iters)
    return float(jnp.linalg.norm(linear_fn(v)))


@functools.partial(jax.jit, static_argnames=("linear_fn", "iters"))
def _power_iteration(v0, *, linear_fn, iters: int):
    """The top right singular vector of ``linear_fn`` (compiled once per linear map and shape)."""
    transpose = jax.linear_transpose(linear_fn, v0)

    def body(_, v):
        w = transpose(linear_fn(v))[0]
        return w / jnp.linalg.norm(w)
    return jax.lax.fori_loop(0, iters, body, v0)


def contrast_norm_bound(eps: float, gamma: float) -> float:
    """The paper's bound ε^(−γ) for x / (ε + ‖x‖²)^γ, γ ∈ [0.5, 1]."""
    if not (eps > 0 and 0.5 <= gamma <= 1):
        raise ValueError("need eps > 0 and gamma in [0.5, 1]")
    return float(eps ** -gamma)


def maxpool_bound(window: int, stride: int) -> float:
    """√(max number of windows one input belongs to): 1 when windows do not overlap."""
    return float(np.ceil(window / stride))


ACTIVATION_BOUND = {"relu": 1.0, "sigmoid": 0.25, "identity": 1.0, "maxpool": 1.0}


def certified_radius(logits, tail_lipschitz, last_kernel, targets=None):
    """Certified L2 radii from logit margins.

    For predicted class p and another class j, z_p − z_j = (w_p − w_j)ᵀ h(x) + const is Lipschitz in x
    with constant ‖w_p − w_j‖₂ · L_tail (L_tail: product bound of every layer before the last), so no
    x + r with ‖r‖₂ < (z_p − z_j) / (‖w_p − w_j‖ L_tail) is classified j. Returns ``(untargeted,
    targeted)``: the minimum over j ≠ p, and the radius for ``targets`` (None if not given).
    For a linear model (L_tail = 1) the targeted radius is the exact unconstrained minimum.
    """
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or not len(z) or not np.all(np.isfinite(z)):
        raise ValueError(f"logits must be a finite [N, K] array, got shape {z.shape}"
                         + ("" if z.ndim != 2 or not len(z) else f" with {np.size(z) - np.isfinite(z).sum()} NaN/inf"))
    if not np.isfinite(tail_lipschitz) or tail_lipschitz <= 0:
        raise ValueError(f"tail_lipschitz must be a positive finite number, got {tail_lipschitz!r}")
    if targets is not None:
        validate.labels(targets, len(z), z.shape[1], name="targets")
    w = np.asarray(last_kernel, np.float64)  # [hidden, K]
    if w.ndim != 2 or w.shape[1] != z.shape[1]:
        raise ValueError(f"last_kernel must be [hidden, K = {z.shape[1]}], got shape {w.shape}")
    p = z.argmax(1)
    diff = w[:, :, None] - w[:, None, :]  # [hidden, K, K]: column p minus column j
    lip = np.linalg.norm(diff, axis=0) * tail_lipschitz  # [K, K]
    margin = z[np.arange(len(z)), p][:, None] - z  # [N, K]
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(np.arange(z.shape[1])[None] == p[:, None], np.inf, margin / lip[p])
    targeted = None if targets is None else radius[np.arange(len(z)), np.asarray(targets)]
    return radius.min(1), targeted


def model_layers(model, params, *, iters: int = 300, key=None) -> list[dict]:
    """Per-layer bounds of a registry model, in order (its module's ``layer_bounds``): dicts with
    ``layer``, ``kind``, ``shape``, ``bound`` and ``exact`` (power iteration for convolutions; a dense
    layer's bound is exact). Activations and pooling appear as their own rows."""
    module = model.spec.module
    if not hasattr(module, "layer_bounds"):
        raise TypeError(f"no layer bounds for {type(module).__name__}: give it a layer_bounds method")
    return module.layer_bounds(params, key=jax.random.key(0) if key is None else key, iters=iters)


def dense_row(name: str, kernel) -> dict:
    """A dense layer's row for ``model_layers`` (its bound is exact)."""
    b = dense_bound(kernel)
    return {"layer": name, "kind": "dense", "shape": list(np.shape(kernel)), "bound": b, "exact": b}


def activation_row(kind: str, bound: float | None = None) -> dict:
    """An activation or pooling row for ``model_layers`` (bound from ``ACTIVATION_BOUND`` by default)."""
    return {"layer": kind, "kind": kind, "shape": None, "bound": ACTIVATION_BOUND[kind] if bound is None else bound,
            "exact": None}


def conv_row(name: str, kernel, size: int, key, iters: int) -> dict:
    """A stride-1 SAME convolution's row on ``size``×``size`` inputs: Fourier bound and power iteration."""
    exact = operator_norm(lambda x: conv_apply(kernel, x, 1, "SAME"), (1, size, size, kernel.shape[2]), key, iters)
    return {"layer": name, "kind": "conv (SAME, stride 1)", "shape": list(kernel.shape),
            "bound": conv_bound(kernel, (size, size), 1, "SAME"), "exact": exact}


def tail_bound(rows: list[dict]) -> float:
    """Product bound of every row before the last (dense) layer."""
    return float(np.prod([r["bound"] for r in rows[:-1]]))


def sandwich(rows: list[dict], params, logits, result) -> dict:
    """Certified radius vs distortion found, per attacked image: the statistics of found / certified.

    Args:
      rows: the model's ``model_layers``; params: its parameters (the last row's kernel is read).
      logits: ``[N, K]`` clean logits of the attacked images; result: their targeted ``AttackResult``.

    Returns:
      dict with the number compared (successful, not already the target), violations (a certified radius
      above a found distortion: must be 0), the ratio's median, 10%/90% quantiles and minimum, the share
      within 2×, the mean found and certified L2, and ``_ratio`` (the per-image ratios, for a figure).
    """
    last = params["params"][rows[-1]["layer"]]["kernel"]
    untargeted, targeted = certified_radius(logits, tail_bound(rows), last, result.target)
    ok = np.asarray(result.success) & (np.asarray(logits).argmax(1) != np.asarray(result.target))
    found = np.asarray(result.l2)[ok]
    ratio = found / targeted[ok]
    return {"layers": rows, "global_bound": float(np.prod([r["bound"] for r in rows])),
            "images": len(ok), "compared": int(ok.sum()),
            "violations": int(np.sum(found < targeted[ok] * (1 - 1e-4))),
            "ratio_median": float(np.median(ratio)), "ratio_p10": float(np.quantile(ratio, 0.1)),
            "ratio_p90": float(np.quantile(ratio, 0.9)), "ratio_min": float(ratio.min()),
            "share_within_2x": float(np.mean(ratio <= 2)),
            "mean_found_l2": float(found.mean()), "mean_certified_l2": float(targeted[ok].mean()),
            "mean_untargeted_certified_l2": float(untargeted[ok].mean()), "_ratio": ratio}
