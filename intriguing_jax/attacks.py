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
      c_init: first c tried; ``None``: per example, from the loss and its gradient at the clean image
        (``c_init_scale`` times ‖g‖²/(4·loss), where a linearised model puts the minimiser on the
        boundary).
      c_factor: bracketing factor (c is multiplied or divided by it until one success and one failure
        are seen).
      c_search: how the bracket is then narrowed: ``"secant"`` (the root of the target's lead,
        interpolated in log c) or ``"bisect"`` (the log-midpoint).
      c_steps: solves per example at most; c_rtol: stop an example's search once its bracket satisfies
        c_fail ≤ c_ok·(1 + c_rtol) (its distortion then changes by about c_rtol at most).
      maxiter: L-BFGS-B iterations per solve; tol: projected-gradient tolerance; ftol: relative
        decrease below which a solve stops; history: the L-BFGS memory size.
      solver: ``"batched"`` (``intriguing_jax.lbfgsb`` with examples streaming through ``block_size``
        solver rows) or ``"jaxopt"`` (``jaxopt.LBFGSB`` under ``jax.vmap``, the reference).
      warm_start: start each solve from the best successful example so far (else from the clean image).
      loss: ``"ce"`` (the paper's cross-entropy toward the target) or ``"margin"``
        (max(max_{j≠t} z_j − z_t + kappa, 0), zero once the target leads by ``kappa``: its minimiser lies
        on the decision boundary, so on a linear model the search recovers the exact minimum).
      shrink_steps: after the search, each successful perturbation r is shortened to the smallest
        s·r (s ∈ (0, 1]) that still reaches the target, by this many bisection steps of s (forward passes
        only; 12 leave s within 0.025% of the boundary). The cross-entropy minimiser lies past the
        boundary; this moves it back along the same direction. 0: off (the paper's minimiser as found).
      block_size: how many examples are solved at once (one batched evaluation of the model serves them
        all); the others wait and take the place of a finished example at once. ``None``: the backend's
        default (``default_block_size``: 32 on CPU, where each row's L-BFGS memory stays in cache;
        8192 on accelerators). Memory is bounded by it, not by the number of examples.
    """

    box: tuple[float, float] = (0.0, 1.0)
    penalty: Literal["l2_squared", "l2"] = "l2_squared"
    c_init: float | None = None
    c_init_scale: float = 1.0
    c_factor: float = 3.0
    c_search: Literal["secant", "bisect"] = "secant"
    c_steps: int = 10
    c_rtol: float = 3e-2
    maxiter: int = 100
    tol: float = 1e-5
    ftol: float = 1e-5
    history: int = 5
    solver: Literal["batched", "jaxopt"] = "batched"
    warm_start: bool = True
    block_size: int | None = None
    loss: Literal["ce", "margin"] = "ce"
    kappa: float = 1e-3
    shrink_steps: int = 12

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
        if self.c_search not in ("secant", "bisect"):
            raise ValueError(f"c_search must be 'secant' or 'bisect', got {self.c_search!r}")
        v = self.block_size
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"block_size must be a positive integer or None, got {v!r}")
        if (self.c_init is not None and self.c_init <= 0) or self.c_init_scale <= 0:
            raise ValueError(f"need c_init > 0 (or None) and c_init_scale > 0, got {self.c_init}, "
                             f"{self.c_init_scale}")
        if self.c_factor <= 1 or self.c_steps < 1 or self.maxiter < 1 or self.c_rtol < 0 or self.shrink_steps < 0:
            raise ValueError("need c_factor > 1, c_steps >= 1, maxiter >= 1, c_rtol >= 0, shrink_steps >= 0")

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


def _loss(logits, targets, cfg: "AttackConfig"):
    """Per-example classification term ``[N]`` toward ``targets``."""
    if cfg.loss == "ce":
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], axis=1)[:, 0]
    return jax.nn.relu(-_margin(logits, targets) + cfg.kappa)  # zero once the target leads by kappa


def _margin(logits, targets):
    """How far the target logit leads every other one (> 0: the target is predicted)."""
    z_t = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(targets, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return z_t - jnp.max(others, axis=1)


def _objective(logits_fn, x, targets, const, r, cfg: "AttackConfig"):
    """Per-example objective ``[N]`` for flat ``x, r`` ``[N, D]`` (images reshaped by the caller)."""
    sq = jnp.sum(r ** 2, axis=1)
    pen = sq if cfg.penalty == "l2_squared" else jnp.sqrt(sq + 1e-12)
    return const * pen + _loss(logits_fn(x + r), targets, cfg)


def _penalty(r, const, cfg: "AttackConfig"):
    """``const · pen(r)`` and its gradient, per row."""
    sq = jnp.sum(r ** 2, axis=1)
    if cfg.penalty == "l2_squared":
        return const * sq, (2 * const)[:, None] * r
    norm = jnp.sqrt(sq + 1e-12)
    return const * norm, (const / norm)[:, None] * r


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


SOLVERS = ("batched", "jaxopt")


# ---- the c search ------------------------------------------------------------------------------


class _Search(NamedTuple):
    """Per-example state of the search for the largest successful c (all ``[N]`` unless noted)."""

    c: jax.Array  # the c being solved for (then: the next c to try)
    c_ok: jax.Array  # largest successful c (0: none yet)
    c_fail: jax.Array  # smallest failing c (inf: none yet)
    m_ok: jax.Array  # the target's lead at c_ok's solution (> 0)
    m_fail: jax.Array  # ... at c_fail's (<= 0)
    steps: jax.Array  # solves done
    best_z: jax.Array  # [N, D] smallest successful example, else the smallest-c attempt
    best_sq: jax.Array  # its squared distance (inf until a success)
    best_c: jax.Array
    found: jax.Array  # any success


def _new_search(c, x) -> _Search:
    n = x.shape[0]
    return _Search(c=c, c_ok=jnp.zeros((n,), x.dtype), c_fail=jnp.full((n,), jnp.inf, x.dtype),
                   m_ok=jnp.zeros((n,), x.dtype), m_fail=jnp.zeros((n,), x.dtype),
                   steps=jnp.zeros((n,), jnp.int32), best_z=x, best_sq=jnp.full((n,), jnp.inf, x.dtype),
                   best_c=jnp.full((n,), jnp.inf, x.dtype), found=jnp.zeros((n,), bool))


def _update_search(s: _Search, done, z, sq, margin, cfg: "AttackConfig") -> tuple[_Search, jax.Array, jax.Array]:
    """Records the solves that ended (``done``) at examples ``z`` (squared distance ``sq``, target lead
    ``margin``) and picks each one's next c. Returns the new state, which examples improved their best,
    and which are finished (``c_steps`` solves, or a bracket tight enough: ``c_fail ≤ c_ok·(1 + c_rtol)``).

    Bracketing multiplies (divides) c by ``c_factor`` until one success and one failure are seen; then
    the next c is the secant root of the target's lead in log c between the two (``c_search="secant"``,
    kept inside the middle 80% of the bracket), or the log-midpoint (``"bisect"``).
    """
    ok = done & (margin > 0)
    fail = done & ~(margin > 0)
    better = ok & (sq < s.best_sq)
    replace = better | (fail & ~s.found & (s.c <= s.best_c))  # before a success: the smallest c tried
    c_ok = jnp.where(ok, jnp.maximum(s.c_ok, s.c), s.c_ok)
    c_fail = jnp.where(fail, jnp.minimum(s.c_fail, s.c), s.c_fail)
    m_ok = jnp.where(ok & (s.c >= s.c_ok), margin, s.m_ok)
    m_fail = jnp.where(fail & (s.c <= s.c_fail), margin, s.m_fail)
    lo_c, hi_c = jnp.log(jnp.maximum(c_ok, 1e-30)), jnp.log(jnp.minimum(c_fail, 1e30))
    if cfg.c_search == "secant":
        frac = jnp.clip(m_ok / jnp.maximum(m_ok - m_fail, 1e-30), 0.1, 0.9)
    else:
        frac = 0.5
    inner = jnp.exp(lo_c + frac * (hi_c - lo_c))
    c_next = jnp.where(jnp.isinf(c_fail), s.c * cfg.c_factor, jnp.where(c_ok == 0, s.c / cfg.c_factor, inner))
    steps = s.steps + done.astype(jnp.int32)
    tight = c_fail <= c_ok * (1 + cfg.c_rtol)
    finished = done & ((steps >= cfg.c_steps) | tight)
    new = _Search(c=jnp.where(done, c_next, s.c), c_ok=c_ok, c_fail=c_fail, m_ok=m_ok, m_fail=m_fail,
                  steps=steps, best_z=jnp.where(replace[:, None], z, s.best_z),
                  best_sq=jnp.where(better, sq, s.best_sq), best_c=jnp.where(replace, s.c, s.best_c),
                  found=s.found | ok)
    return new, better, finished


def _first_c(loss, grad, cfg: "AttackConfig"):
    """Each example's first c. With ``c_init=None``, from the loss and its gradient at the clean image:
    linearising the classifier, the boundary is ≈ loss/‖g‖ away and the minimiser of c‖r‖² + loss sits
    there when c ≈ ‖g‖²/(4·loss) (the gradient halves on the way for cross-entropy); ``c_init_scale``
    multiplies that estimate (measured, ``benchmarks/RESULTS.md``)."""
    if cfg.c_init is not None:
        return jnp.full_like(loss, cfg.c_init)
    est = jnp.sum(grad ** 2, axis=1) / (4 * jnp.maximum(loss, 1e-6))
    return jnp.clip(cfg.c_init_scale * est, 1e-6, 1e6)


# ---- the attack: examples streaming through a fixed set of solver slots -----------------------------


class _Slots(NamedTuple):
    index: jax.Array  # [B] the example in each slot (N: empty)
    x: jax.Array  # [B, D] its clean image
    target: jax.Array  # [B]
    fresh: jax.Array  # [B] just loaded: the next evaluation is at the clean image
    solving: jax.Array  # [B] a solve for the current c is under way (or just ended)
    solver: lbfgsb.State  # over the adversarial image z itself (bounds: the box)
    search: _Search
    margin: jax.Array  # [B] the target's lead at the solver's current point
    base: tuple  # (loss [B], grad [B, D], margin [B]) at the clean image
    best: tuple  # (loss, grad, margin) at search.best_z, for warm starts without an evaluation
    evals: jax.Array  # [B] evaluations spent on the example so far


def _evaluate(flat_logits, z, targets, cfg):
    """(loss [B], its gradient [B, D], the target's lead [B]) at ``z``: one batched value-and-grad."""
    def total(z):
        logits = flat_logits(z)
        loss = _loss(logits, targets, cfg)
        return jnp.sum(loss), (loss, _margin(logits, targets))
    (_, (loss, margin)), grad = jax.value_and_grad(total, has_aux=True)(z)
    return loss, grad, margin


def _rows_where(mask, new, old):
    """``new`` in the rows where ``mask`` [B] holds, else ``old`` (arrays of any rank, rows first)."""
    return jnp.where(mask.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)


def _load(images, targets, index, n):
    """The clean images and targets of slots ``index`` (empty slots get a copy of example 0)."""
    safe = jnp.minimum(index, n - 1)
    return images[safe], targets[safe]


@functools.partial(jax.jit, static_argnames=("shape", "cfg", "slots"))
def _attack_streaming(logits_fn: Partial, images, targets, shape, cfg: AttackConfig, slots: int) -> AttackResult:
    """The attack with every example's whole c search in one of ``slots`` solver rows; a finished
    example's slot takes the next waiting example at once, so every batched evaluation serves an
    example still being solved (until the queue runs dry). One while loop: one compilation of one
    evaluation of the model, whatever the number of c steps."""
    n, d = images.shape
    lo, hi = cfg.box
    opts = lbfgsb.Options(maxiter=cfg.maxiter, tol=cfg.tol, ftol=cfg.ftol)

    def flat_logits(z):
        return logits_fn(z.reshape((z.shape[0],) + shape))

    def empty_slots(index):
        x, t = _load(images, targets, index, n)
        zeros = jnp.zeros((slots,), x.dtype)
        return _Slots(index=index, x=x, target=t, fresh=index < n, solving=jnp.zeros((slots,), bool),
                      solver=lbfgsb.init_rows(x, zeros, jnp.zeros_like(x), lo, hi, history=cfg.history,
                                              tol=jnp.inf),
                      search=_new_search(zeros, x), margin=zeros, base=(zeros, jnp.zeros_like(x), zeros),
                      best=(zeros, jnp.zeros_like(x), zeros), evals=jnp.zeros((slots,), jnp.int32))

    def tick(carry):
        sl, out, queued = carry
        solver, zt = lbfgsb.propose(sl.solver, lo, hi)
        loss, grad, margin = _evaluate(flat_logits, jnp.where(sl.fresh[:, None], sl.x, zt), sl.target, cfg)
        evals = sl.evals + (sl.index < n)
        # the solving rows' trial
        pen, pen_grad = _penalty(zt - sl.x, sl.search.c, cfg)
        solver, took = lbfgsb.accept(solver, zt, loss + pen, grad + pen_grad, lo, hi, opts)
        cur_margin = jnp.where(took, margin, sl.margin)
        done = sl.solving & ~solver.active
        r = solver.x - sl.x
        search, better, finished = _update_search(sl.search, done, solver.x, jnp.sum(r ** 2, axis=1),
                                                  cur_margin, cfg)
        pen, pen_grad = _penalty(r, sl.search.c, cfg)
        best = tuple(_rows_where(better, v, a) for a, v in zip(sl.best, (solver.f - pen, solver.g - pen_grad,
                                                                          cur_margin)))
        # freshly loaded rows: their clean image was evaluated; start their first solve (or finish)
        trivial = sl.fresh & (margin > 0)
        start = sl.fresh & ~trivial
        base = tuple(_rows_where(start, v, a) for a, v in zip(sl.base, (loss, grad, margin)))
        c = jnp.where(start, _first_c(loss, grad, cfg), search.c)
        search = search._replace(c=c)
        # rows starting a solve: from the best success so far (warm) or the clean image; their value
        # and gradient there follow from the stored loss terms, no evaluation needed
        again = done & ~finished
        warm = again & search.found if cfg.warm_start else jnp.zeros_like(again)
        z0 = _rows_where(warm, search.best_z, sl.x)
        l0, g0, m0 = (_rows_where(warm, b, a) for a, b in zip(base, best))
        pen, pen_grad = _penalty(z0 - sl.x, c, cfg)
        restart = again | start
        solver = lbfgsb.restart_rows(solver, restart, z0, l0 + pen, g0 + pen_grad, lo, hi, tol=cfg.tol)
        cur_margin = jnp.where(restart, m0, cur_margin)
        solving = (sl.solving & ~finished) | start
        # finished examples leave their results and make room for the next ones
        leave = finished | trivial
        dest = jnp.where(leave, sl.index, n)
        out_z, out_c, out_evals = out
        out = (out_z.at[dest].set(jnp.where(trivial[:, None], sl.x, search.best_z), mode="drop"),
               out_c.at[dest].set(jnp.where(trivial, jnp.inf, search.best_c), mode="drop"),
               out_evals.at[dest].set(evals, mode="drop"))
        rank = jnp.cumsum(leave) - 1
        index = jnp.where(leave, jnp.minimum(queued + rank, n), sl.index)
        queued = queued + jnp.sum(leave)
        x_new, t_new = _load(images, targets, index, n)
        sl = _Slots(index=index, x=_rows_where(leave, x_new, sl.x), target=_rows_where(leave, t_new, sl.target),
                    fresh=leave & (index < n), solving=solving & ~leave, solver=solver,
                    search=jax.tree.map(lambda new, old: _rows_where(leave, new, old), _new_search(
                        jnp.zeros_like(search.c), x_new), search),
                    margin=cur_margin, base=base, best=best, evals=jnp.where(leave, 0, evals))
        return sl, out, queued

    out = (images, jnp.full((n,), jnp.inf, images.dtype), jnp.zeros((n,), jnp.int32))
    carry = (empty_slots(jnp.arange(slots)), out, jnp.asarray(slots, jnp.int32))
    _, (z, c, evals), _ = jax.lax.while_loop(lambda cr: jnp.any(cr[0].index < n), tick, carry)
    return _result(flat_logits, images, targets, z, c, evals, shape, cfg, slots)


def _result(flat_logits, x, targets, z, c, evals, shape, cfg, block) -> AttackResult:
    """The result, with each successful perturbation shortened back to the decision boundary (bisection
    of its length, ``shrink_steps`` forward passes) and every example re-verified on the exact returned
    image. Forward passes run in blocks of ``block`` rows (memory bounded by the block)."""
    n, d = x.shape
    lo, hi = cfg.box
    size = -(-n // block) * block
    pad = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], size - n, axis=0)])  # noqa: E731
    blocks = lambda a: pad(a).reshape((-1, block) + a.shape[1:])  # noqa: E731

    def finish(args):
        xb, zb, tb = args
        r = jnp.clip(zb, lo, hi) - xb
        ones = jnp.ones((xb.shape[0],), xb.dtype)

        def probe(i, state):
            # i = 0 checks the perturbation as found (and gives a failure its prediction); each later
            # step halves the bracket [short, long] of lengths with long always verified to succeed
            short, long, first_ok, first_pred = state
            s = jnp.where(i == 0, ones, 0.5 * (short + long))
            pred = jnp.argmax(flat_logits(jnp.clip(xb + s[:, None] * r, lo, hi)), -1)
            ok = pred == tb
            first_ok = jnp.where(i == 0, ok, first_ok)
            first_pred = jnp.where(i == 0, pred, first_pred)
            short = jnp.where((i > 0) & ~ok, s, short)
            long = jnp.where((i > 0) & ok, s, long)
            return short, long, first_ok, first_pred

        init = (0.0 * ones, ones, jnp.zeros(ones.shape, bool), tb)
        _, scale, ok, pred = jax.lax.fori_loop(0, cfg.shrink_steps + 1, probe, init)
        # the returned image is exactly the one verified: x + long·r where the check succeeded
        return jnp.clip(xb + jnp.where(ok, scale, 1.0)[:, None] * r, lo, hi), jnp.where(ok, tb, pred)

    x_adv, pred = jax.lax.map(finish, (blocks(x), blocks(z), blocks(targets)))
    x_adv, pred = x_adv.reshape(size, d)[:n], pred.reshape(-1)[:n]
    r = x_adv - x
    return AttackResult(
        adversarial=x_adv.reshape((n,) + shape), success=pred == targets,
        l2=jnp.sqrt(jnp.sum(r ** 2, axis=1)), linf=jnp.max(jnp.abs(r), axis=1),
        distortion=jnp.sqrt(jnp.mean(r ** 2, axis=1)), c=c, target=targets, prediction=pred,
        grad_evals=evals)


@functools.partial(jax.jit, static_argnames=("shape", "cfg"))
def _attack_lockstep(logits_fn: Partial, x, targets, shape, cfg: AttackConfig) -> AttackResult:
    """The reference: every c step solves the whole batch with ``jaxopt.LBFGSB`` under ``vmap``."""
    n = x.shape[0]
    lo, hi = cfg.box

    def flat_logits(z):
        return logits_fn(z.reshape((z.shape[0],) + shape))

    logits0 = flat_logits(x)
    trivial = _margin(logits0, targets) > 0
    c0 = _first_c(_loss(logits0, targets, cfg),
                  jax.grad(lambda z: jnp.sum(_loss(flat_logits(z), targets, cfg)))(x), cfg)

    def step(carry, _):
        s, evals = carry
        r0 = jnp.where(s.found[:, None], s.best_z - x, 0.0) if cfg.warm_start else jnp.zeros_like(x)
        r, e = _solve_box_lbfgs(flat_logits, x, targets, s.c, r0, cfg)
        z = jnp.clip(x + r, lo, hi)  # solvers may step slightly outside the box
        s, _, _ = _update_search(s, jnp.ones((n,), bool), z, jnp.sum((z - x) ** 2, axis=1),
                                 _margin(flat_logits(z), targets), cfg)
        return (s, evals + e), None

    (s, evals), _ = jax.lax.scan(step, (_new_search(c0, x), jnp.zeros((n,), jnp.int32)), None,
                                 length=cfg.c_steps)
    z = jnp.where(trivial[:, None], x, s.best_z)
    return _result(flat_logits, x, targets, z, jnp.where(trivial, jnp.inf, s.best_c), evals, shape, cfg, n)


def default_block_size(backend: str | None = None) -> int:
    """Examples solved at once when ``AttackConfig.block_size`` is None: 32 on CPU (the rows' L-BFGS
    memory stays in cache, ``benchmarks/RESULTS.md``), 8192 on accelerators."""
    return 32 if (backend or jax.default_backend()) == "cpu" else 8192


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
    if cfg.solver == "jaxopt":
        return _attack_lockstep(_as_partial(logits_fn), flat, targets, shape, cfg)
    slots = min(cfg.block_size or default_block_size(), flat.shape[0])
    return _attack_streaming(_as_partial(logits_fn), flat, targets, shape, cfg, slots)


def lbfgs_attack_untargeted(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *,
                            config: AttackConfig | None = None) -> AttackResult:
    """Closest adversarial example over all wrong labels, per image.

    Runs the targeted attack on every (image, label ≠ ``labels[i]``) pair — N·(K−1) problems streaming
    through ``block_size`` solver rows — and keeps each image's smallest successful perturbation. An image the model already
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
