"""The paper's box-constrained L-BFGS attack, batched and verified.

For a classifier with logits ``logits_fn`` and a target label ``l``, each example solves

    minimise_r   c · pen(r) + CE(logits_fn(x + r), l)    subject to  x + r ∈ [lo, hi]^m

with ``pen(r) = ‖r‖₂²`` (default, smooth) or ``‖r‖₂`` (``penalty="l2"``), and searches ``c`` per example.

Why the *largest* successful c: the paper (Sec. 4.1) asks for the "minimum c > 0" for which the minimiser
reaches ``l``, but a larger ``c`` weighs the distortion more and yields a smaller ``r``; the smallest
distortion therefore comes from the *largest* ``c`` that still reaches the target. We bracket that ``c``
by factors of ``c_factor`` from ``c_init``, then bisect in log space, and keep, per example, the
smallest verified-successful perturbation seen.

References: Szegedy et al. 2014, Sec. 4.1.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import pathlib
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from intriguing_jax import lbfgsb
from intriguing_jax.checkpoint import atomic_write_npz

LogitsFn = Callable[[jax.Array], jax.Array]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Attack hyperparameters (hashable: one compilation per config).

    Attributes:
      box: pixel bounds of valid images.
      penalty: ``"l2_squared"`` (c·‖r‖², smooth, what reimplementations use) or ``"l2"`` (c·‖r‖₂).
      c_init: first c tried; c_factor: bracketing factor; c_steps: total solves per example
        (bracketing, then bisection in log space).
      maxiter: L-BFGS-B iterations per solve; tol: projected-gradient tolerance; ftol: relative
        decrease below which a solve stops (batched solver; 1e-6 gives the same mean distortion as 1e-7
        on every paper model with half the evaluations, ``benchmarks/RESULTS.md``); history: the L-BFGS
        memory size.
      solver: ``"batched"`` (``intriguing_jax.lbfgsb``: the whole batch advances together, finished
        examples frozen by masks) or ``"jaxopt"`` (``jaxopt.LBFGSB`` under ``jax.vmap``, the reference).
      warm_start: start each solve from the best successful perturbation so far (else from r = 0).
      loss: ``"ce"`` (the paper's cross-entropy toward the target) or ``"margin"``
        (max(max_{j≠t} z_j − z_t + kappa, 0), zero once the target leads by ``kappa``: its minimiser lies
        on the decision boundary, so on a linear model the search recovers the exact minimum).
      compact_to: as a solve's examples converge, the batched solver gathers the still-active ones into
        batches of half the size, down to this many rows, so the batch does not keep evaluating finished
        examples while its slowest ones converge (``None``: never; the results are the same).
      block_size: attack a large batch as consecutive blocks of this many examples (one compilation;
        the last block padded). On a CPU, blocks of 32–64 keep each block's L-BFGS memory in cache
        (``benchmarks/RESULTS.md``). ``None``: the whole batch at once (for accelerators).
    """

    box: tuple[float, float] = (0.0, 1.0)
    penalty: Literal["l2_squared", "l2"] = "l2_squared"
    c_init: float = 1.0
    c_factor: float = 10.0
    c_steps: int = 10
    maxiter: int = 100
    tol: float = 1e-5
    ftol: float = 1e-6
    history: int = 10
    solver: Literal["batched", "jaxopt"] = "batched"
    warm_start: bool = True
    block_size: int | None = None
    compact_to: int | None = 8
    loss: Literal["ce", "margin"] = "ce"
    kappa: float = 1e-3

    def __post_init__(self):
        lo, hi = self.box
        if not lo < hi:
            raise ValueError(f"box must satisfy lo < hi, got {self.box}")
        if self.penalty not in ("l2_squared", "l2"):
            raise ValueError(f"penalty must be 'l2_squared' or 'l2', got {self.penalty!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.loss not in ("ce", "margin") or self.kappa < 0:
            raise ValueError(f"loss must be 'ce' or 'margin' and kappa >= 0, got {self.loss!r}, {self.kappa}")
        for name in ("block_size", "compact_to"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.c_init <= 0 or self.c_factor <= 1 or self.c_steps < 1 or self.maxiter < 1:
            raise ValueError("need c_init > 0, c_factor > 1, c_steps >= 1, maxiter >= 1")

    @classmethod
    def smoke(cls) -> "AttackConfig":
        return cls(c_steps=8, maxiter=50)


class AttackResult(NamedTuple):
    """Per-example results (a pytree). Failed examples have ``success=False`` and are never counted as
    successes; their ``adversarial`` is the closest attempt (still inside the box)."""

    adversarial: jax.Array  # [N, ...] inside the box, exactly
    success: jax.Array  # [N] bool: argmax logits_fn(adversarial) == target, re-verified
    l2: jax.Array  # [N] ‖adversarial − x‖₂
    linf: jax.Array  # [N] ‖adversarial − x‖∞
    distortion: jax.Array  # [N] the paper's sqrt(Σ r² / n)
    c: jax.Array  # [N] the c that produced the returned example (inf where x itself reaches the target)
    target: jax.Array  # [N] the target label
    prediction: jax.Array  # [N] argmax logits_fn(adversarial)
    grad_evals: jax.Array  # [N] value-and-grad evaluations spent on each example (its row of every
    #                       batched call it took part in; the sum is the call's work in rows)


def distortion(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """The paper's distortion measure, sqrt(Σ_i (x'_i − x_i)² / n) per example (an RMS per pixel)."""
    r = (jnp.asarray(x_adv) - jnp.asarray(x)).reshape(jnp.shape(x)[0], -1)
    return jnp.sqrt(jnp.mean(r ** 2, axis=1))


def gaussian_noise(key: jax.Array, images: jax.Array, stddev, clip: bool = True,
                   box: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
    """The paper's random-distortion control: ``images + N(0, stddev²)``, clipped to ``box`` if ``clip``
    (the paper does not say whether it clipped; clipping lowers the realised RMS near the box faces).

    ``stddev`` is a scalar or a per-image ``[N]`` array.
    """
    images = jnp.asarray(images)
    std = jnp.asarray(stddev, images.dtype).reshape((-1,) + (1,) * (images.ndim - 1))
    noisy = images + std * jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(noisy, *box) if clip else noisy


def matched_noise(key: jax.Array, images: jax.Array, adversarial: jax.Array, clip: bool = True,
                  box: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
    """Gaussian noise with, per image, the same RMS as the adversarial perturbation of that image."""
    return gaussian_noise(key, images, distortion(images, adversarial), clip=clip, box=box)


# ---- input validation ------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _validate(logits_fn, images, targets, box) -> tuple[int, jax.ShapeDtypeStruct]:
    """Checks shapes, dtypes and values; returns K. Runs no compilation (``eval_shape`` only traces)."""
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
    if jnp.ndim(images) < 2:
        raise ValueError(f"images must be a batch [N, ...] of rank >= 2, got shape {jnp.shape(images)}")
    if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
        raise ValueError(f"images must be floating point, got dtype {jnp.result_type(images)}")
    n = jnp.shape(images)[0]
    if n == 0:
        raise ValueError("images is an empty batch")
    if jnp.ndim(targets) != 1 or jnp.shape(targets)[0] != n:
        raise ValueError(f"targets must have shape [N] = [{n}], got {jnp.shape(targets)}")
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise ValueError(f"targets must be integer labels, got dtype {jnp.result_type(targets)}")
    spec = jax.ShapeDtypeStruct(jnp.shape(images), jnp.float32)
    try:
        out = jax.eval_shape(logits_fn, spec)
    except Exception as e:
        raise ValueError(f"logits_fn failed on a batch of shape {spec.shape}: {e}") from e
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != n:
        raise ValueError(f"logits_fn must map [N, ...] to logits [N, K]; on images {spec.shape} it "
                         f"returned {getattr(out, 'shape', type(out).__name__)}")
    k = out.shape[1]
    if _is_concrete(images):
        x = np.asarray(images)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"images contain {np.size(x) - np.isfinite(x).sum()} NaN/inf pixel(s)")
        lo, hi = box
        if x.min() < lo or x.max() > hi:
            raise ValueError(f"pixels must lie in the box [{lo}, {hi}]; found range [{x.min()}, {x.max()}]")
    if _is_concrete(targets):
        t = np.asarray(targets)
        if t.min() < 0 or t.max() >= k:
            raise ValueError(f"targets must lie in [0, {k}) for {k} classes; found [{t.min()}, {t.max()}]")
    return k


def _as_partial(logits_fn) -> Partial:
    # A tree_util.Partial is a pytree: its bound arrays (e.g. params) stay traced arguments of the
    # jitted core, so a new set of weights does not recompile. Plain callables become static.
    return logits_fn if isinstance(logits_fn, Partial) else Partial(logits_fn)


# ---- objective and solvers -------------------------------------------------------------------


def _objective(logits_fn, x, targets, const, r, cfg: "AttackConfig"):
    """Per-example objective ``[N]`` for flat ``x, r`` ``[N, D]`` (images reshaped by the caller)."""
    logits = logits_fn(x + r)
    if cfg.loss == "ce":
        loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], axis=1)[:, 0]
    else:  # margin: zero once the target leads every other logit by kappa
        z_t = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
        others = jnp.where(jax.nn.one_hot(targets, logits.shape[-1], dtype=bool), -jnp.inf, logits)
        loss = jax.nn.relu(jnp.max(others, axis=1) - z_t + cfg.kappa)
    sq = jnp.sum(r ** 2, axis=1)
    pen = sq if cfg.penalty == "l2_squared" else jnp.sqrt(sq + 1e-12)
    return const * pen + loss


def _solve_box_lbfgs(flat_logits, x, targets, const, r0, cfg: AttackConfig):
    """Reference solver: ``jaxopt.LBFGSB`` run per example under ``jax.vmap``.

    jaxopt is unmaintained (0.8.5 is its last release); it stays behind this one function. Keyword
    arguments avoid the names ``params``, ``state``, ``bounds`` and ``c`` (they clash inside jaxopt).
    """
    import jaxopt  # deferred: it warns on import that it is unmaintained

    def fun(r, image, target, const):
        return _objective(flat_logits, image[None], target[None], const, r[None], cfg)[0]

    solver = jaxopt.LBFGSB(fun=fun, maxiter=cfg.maxiter, tol=cfg.tol, history_size=cfg.history)
    lo, hi = cfg.box

    def one(image, target, const, r_init):
        out = solver.run(r_init, bounds=(lo - image, hi - image), image=image, target=target, const=const)
        return out.params, out.state.num_grad_eval

    r, evals = jax.vmap(one)(x, targets, const, r0)
    # lanes run in lockstep under vmap: every row is evaluated as often as the slowest lane
    return r, jnp.full_like(evals, jnp.max(evals))


def _solve_batched(flat_logits, x, targets, const, r0, cfg: AttackConfig):
    """Batch-native solver: ``intriguing_jax.lbfgsb.minimize`` on the whole batch at once."""

    def value_and_grad(r, aux):
        def total(r):
            f = _objective(flat_logits, *aux, r, cfg)
            return jnp.sum(f), f
        (_, f), g = jax.value_and_grad(total, has_aux=True)(r)
        return f, g

    lo, hi = cfg.box
    sol = lbfgsb.minimize(value_and_grad, r0, lo - x, hi - x, (x, targets, const), maxiter=cfg.maxiter,
                          history=cfg.history, tol=cfg.tol, ftol=cfg.ftol, min_rows=cfg.compact_to)
    return sol.x, sol.row_evaluations


SOLVERS = {"batched": _solve_batched, "jaxopt": _solve_box_lbfgs}


# ---- the attack ------------------------------------------------------------------------------


class _Search(NamedTuple):
    c: jax.Array  # next c to try
    c_ok: jax.Array  # largest successful c (0: none yet)
    c_fail: jax.Array  # smallest failing c (inf: none yet)
    best_r: jax.Array  # smallest successful perturbation (box-clipped), else the smallest-c attempt
    best_l2: jax.Array  # its squared norm (inf until a success)
    best_c: jax.Array
    found: jax.Array  # any verified success
    evals: jax.Array  # [N] value-and-grad evaluations of each example so far


def _next_c(c_ok, c_fail, c, factor):
    return jnp.where(jnp.isinf(c_fail), c * factor,
                     jnp.where(c_ok == 0, c / factor, jnp.sqrt(c_ok * c_fail)))


@functools.partial(jax.jit, static_argnames=("shape", "cfg"))
def _attack_core(logits_fn: Partial, x, targets, shape, cfg: AttackConfig) -> AttackResult:
    n = x.shape[0]
    lo, hi = cfg.box

    def flat_logits(z):
        return logits_fn(z.reshape((z.shape[0],) + shape))

    def predict(z):
        return jnp.argmax(flat_logits(z), axis=-1)

    trivial = predict(x) == targets
    solve = SOLVERS[cfg.solver]

    def step(s: _Search, _):
        r0 = jnp.where(s.found[:, None], s.best_r, 0.0) if cfg.warm_start else jnp.zeros_like(x)
        r, evals = solve(flat_logits, x, targets, s.c, r0, cfg)
        r = jnp.clip(x + r, lo, hi) - x  # solvers may step slightly outside the box
        ok = predict(x + r) == targets
        sq = jnp.sum(r ** 2, axis=1)
        better = ok & (sq < s.best_l2)
        # before any success, keep the attempt with the smallest c (the closest to succeeding)
        replace = better | (~s.found & ~ok & (s.c <= s.best_c))
        c_ok = jnp.where(ok, jnp.maximum(s.c_ok, s.c), s.c_ok)
        c_fail = jnp.where(ok, s.c_fail, jnp.minimum(s.c_fail, s.c))
        return _Search(
            c=_next_c(c_ok, c_fail, s.c, cfg.c_factor), c_ok=c_ok, c_fail=c_fail,
            best_r=jnp.where(replace[:, None], r, s.best_r),
            best_l2=jnp.where(better, sq, s.best_l2),
            best_c=jnp.where(replace, s.c, s.best_c),
            found=s.found | ok, evals=s.evals + evals), None

    init = _Search(c=jnp.full((n,), cfg.c_init, x.dtype), c_ok=jnp.zeros((n,), x.dtype),
                   c_fail=jnp.full((n,), jnp.inf, x.dtype), best_r=jnp.zeros_like(x),
                   best_l2=jnp.full((n,), jnp.inf, x.dtype), best_c=jnp.full((n,), jnp.inf, x.dtype),
                   found=jnp.zeros((n,), bool), evals=jnp.zeros((n,), jnp.int32))
    s, _ = jax.lax.scan(step, init, None, length=cfg.c_steps)
    r = jnp.where(trivial[:, None], 0.0, s.best_r)
    x_adv = jnp.clip(x + r, lo, hi)
    r = x_adv - x
    pred = predict(x_adv)  # final re-verification on the exact returned images
    return AttackResult(
        adversarial=x_adv.reshape((n,) + shape), success=pred == targets,
        l2=jnp.sqrt(jnp.sum(r ** 2, axis=1)), linf=jnp.max(jnp.abs(r), axis=1),
        distortion=jnp.sqrt(jnp.mean(r ** 2, axis=1)),
        c=jnp.where(trivial, jnp.inf, s.best_c), target=targets, prediction=pred,
        grad_evals=s.evals)


def lbfgs_attack(logits_fn: LogitsFn, images: jax.Array, targets: jax.Array, *,
                 config: AttackConfig | None = None) -> AttackResult:
    """Targeted box-constrained L-BFGS attack (Szegedy et al. 2014, Sec. 4.1), batched.

    Each example is solved independently (its result does not depend on its batch-mates).

    Args:
      logits_fn: pure function mapping images ``[N, ...]`` to logits ``[N, K]``; per-example (no
        cross-batch statistics). Pass ``jax.tree_util.Partial(apply, params)`` to reuse compilations
        across weights.
      images: ``[N, ...]`` floats inside ``config.box``.
      targets: ``[N]`` integer target labels in ``[0, K)``.
      config: ``AttackConfig`` (default ``AttackConfig()``).

    Returns:
      ``AttackResult``; where ``targets[i]`` is already the prediction, ``adversarial[i] = images[i]``,
      ``l2 = 0`` and ``success = True`` (D(x, f(x)) = x).

    Example:
      >>> res = lbfgs_attack(Partial(model.apply, params), x, t)  # doctest: +SKIP
      >>> res.success.mean(), res.distortion.mean()                # doctest: +SKIP
    """
    cfg = config or AttackConfig()
    _validate(logits_fn, images, targets, cfg.box)
    images = jnp.asarray(images, jnp.float32)
    shape = tuple(images.shape[1:])
    flat = images.reshape(images.shape[0], -1)
    targets = jnp.asarray(targets, jnp.int32)
    n, b = flat.shape[0], cfg.block_size
    if b is None or n <= b:
        return _attack_core(_as_partial(logits_fn), flat, targets, shape, cfg)
    size = -(-n // b) * b  # every block has the compiled shape
    flat, targets = pad_rows(flat, size), pad_rows(targets, size)
    parts = [_attack_core(_as_partial(logits_fn), flat[i:i + b], targets[i:i + b], shape, cfg)
             for i in range(0, size, b)]
    return AttackResult(*(jnp.concatenate(f)[:n] for f in zip(*parts)))


def lbfgs_attack_untargeted(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *,
                            config: AttackConfig | None = None) -> AttackResult:
    """Closest adversarial example over all wrong labels, per image.

    Runs the targeted attack on every (image, label ≠ ``labels[i]``) pair as one batch of N·(K−1)
    problems and keeps each image's smallest successful perturbation. An image the model already
    misclassifies is its own closest adversarial (l2 = 0).
    """
    cfg = config or AttackConfig()
    k = _validate(logits_fn, images, labels, cfg.box)
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    n = images.shape[0]
    wrong = (labels[:, None] + jnp.arange(1, k)[None, :]) % k  # [N, K-1], never the label
    rep = jnp.repeat(images, k - 1, axis=0)
    res = lbfgs_attack(logits_fn, rep, wrong.reshape(-1), config=cfg)
    res = jax.tree.map(lambda a: a.reshape((n, k - 1) + a.shape[1:]), res)
    score = jnp.where(res.success, res.l2, jnp.inf)
    pick = jnp.argmin(score, axis=1)
    return jax.tree.map(lambda a: jnp.take_along_axis(
        a, pick.reshape((n, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0], res)


# ---- datasets --------------------------------------------------------------------------------


def pad_rows(a, size: int):
    """``a`` (numpy or JAX, rows first) extended to ``size`` rows by repeating its last row, so that
    a ragged last batch has the compiled shape; callers drop the extra rows from the result."""
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.concatenate([a, xp.repeat(a[-1:], size - len(a), axis=0)])


def checksum(arrays: dict) -> str:
    """SHA-256 over named arrays (names, dtypes, shapes and bytes), independent of their order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def save_result(path, res: AttackResult) -> None:
    """An ``AttackResult`` as an atomically written ``.npz`` carrying the checksum of its arrays."""
    arrays = {f: np.asarray(a) for f, a in res._asdict().items()}
    atomic_write_npz(path, checksum=np.asarray(checksum(arrays)), **arrays)


def load_result(path, n: int) -> AttackResult | None:
    """A result written by ``save_result``; None if missing, unreadable, corrupt (checksum) or not of
    ``n`` rows, so that the caller recomputes it."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            arrays = {f: z[f] for f in AttackResult._fields}
            stored = str(z["checksum"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed
        log.warning("unreadable result %s (%s); recomputing", path.name, e)
        return None
    if stored != checksum(arrays) or len(arrays["success"]) != n:
        log.warning("corrupt result %s (checksum or size mismatch); recomputing", path.name)
        return None
    return AttackResult(**arrays)


def random_wrong_targets(key: jax.Array, labels, num_classes: int = 10) -> jax.Array:
    """A uniformly random label ≠ ``labels[i]`` per example (the paper does not say how it chose them)."""
    labels = jnp.asarray(labels, jnp.int32)
    shift = jax.random.randint(key, labels.shape, 1, num_classes)
    return (labels + shift) % num_classes


def summarize(res: AttackResult) -> dict:
    """Success rate and distortion statistics over the successful examples (numpy-friendly)."""
    ok = np.asarray(res.success)
    d, l2, c = (np.asarray(a)[ok] for a in (res.distortion, res.l2, res.c))
    c = c[np.isfinite(c)]
    hist, edges = np.histogram(np.log10(c), bins=10) if len(c) else (np.zeros(0), np.zeros(0))
    return {"n": int(len(ok)), "success_rate": float(ok.mean()), "failures": int((~ok).sum()),
            "mean_distortion": float(d.mean()) if len(d) else None,
            "median_distortion": float(np.median(d)) if len(d) else None,
            "mean_l2": float(l2.mean()) if len(d) else None,
            "log10_c_histogram": {"counts": hist.tolist(), "edges": edges.tolist()}}


def attack_in_chunks(logits_fn: LogitsFn, images, targets, *, config: AttackConfig | None = None,
                     chunk_size: int = 256, cache_dir=None, progress=None) -> AttackResult:
    """``lbfgs_attack`` over a large set in fixed-size chunks (one compilation: the last chunk is padded).

    With ``cache_dir`` each finished chunk is written atomically as ``chunk_<i>.npz`` and reused on the
    next call, so an interrupted run loses at most the chunk in flight. The cache is keyed by the
    caller (use one directory per model, data and config). Returns numpy arrays.
    """
    images, targets = np.asarray(images, np.float32), np.asarray(targets, np.int32)
    n = len(images)
    parts = []
    for i, start in enumerate(range(0, n, chunk_size)):
        path = pathlib.Path(cache_dir) / f"chunk_{i:05d}.npz" if cache_dir is not None else None
        stop = min(start + chunk_size, n)
        part = load_result(path, stop - start) if path is not None else None
        if part is None:
            size = chunk_size if n > chunk_size else stop - start
            res = lbfgs_attack(logits_fn, pad_rows(images[start:stop], size), pad_rows(targets[start:stop], size),
                               config=config)
            part = AttackResult(*(np.asarray(a)[: stop - start] for a in res))
            if path is not None:
                save_result(path, part)
        parts.append(part)
        if progress is not None:
            progress(stop - start)
    return AttackResult(*(np.concatenate(f) for f in zip(*parts)))
