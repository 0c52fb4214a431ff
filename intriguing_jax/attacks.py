"""The paper's box-constrained L-BFGS attack, batched and verified.

For a classifier with logits ``logits_fn`` and a target label ``l``, each example solves

    minimise_r   c · pen(r) + CE(logits_fn(x + r), l)    subject to  x + r ∈ [lo, hi]^m

with ``pen(r) = ‖r‖₂²`` (default, smooth) or ``‖r‖₂`` (``penalty="l2"``), and searches ``c`` per example.

Why the *largest* successful c: the paper (Sec. 4.1) asks for the "minimum c > 0" for which the minimiser
reaches ``l``, but a larger ``c`` weighs the distortion more and yields a smaller ``r``; the smallest
distortion therefore comes from the *largest* ``c`` that still reaches the target. We bracket that ``c``
by factors of ``c_factor``, narrow the bracket by secant steps in log c, and keep, per example, the
smallest verified-successful perturbation seen (``_attack_engine`` holds the search).

This module is the attack's interface: its config and result types, input validation, the targeted and
untargeted attacks, chunked attacks over large sets, and the summaries the experiments report.

References: Szegedy et al. 2014, Sec. 4.1.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from intriguing_jax import _attack_engine as _engine
from intriguing_jax import refine, storage, validate

LogitsFn = Callable[[jax.Array], jax.Array]
SOLVERS = ("batched", "jaxopt")  # AttackConfig.solver's choices
EXECUTIONS = ("auto", "loop", "stepped")  # AttackConfig.execution's choices
COMPILES = ("auto",) + _engine.TIERS  # AttackConfig.compile's choices


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
        decrease below which a solve stops; history: the L-BFGS memory size. ``ftol``, ``c_rtol`` and
        ``walk_steps`` by the recorded study ``benchmarks/attack_settings.py`` (``RESULTS.md``): the fewest
        evaluations as successful as ``ftol=1e-5, c_rtol=0.03`` (the reproduction's settings,
        ``AttackConfig.reproduction()``) with a per-image ‖r‖₂ no larger than foolbox's DDN on four models,
        MLPs and CNNs. ``c_rtol=2`` ends an example's search as soon as its bracket is one ``c_factor``
        wide: the walk, not a finer c, then shortens the perturbation.
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
      refine: after the search, move each successful example toward the closest point of the target's
        region (``intriguing_jax.refine``: ``refine_steps`` exact box-constrained projections onto the
        boundary linearised over the ``refine_classes`` nearest wrong classes, each followed by a walk
        that keeps the target); never lengthens a perturbation. Off by default: the paper's attack is
        the cross-entropy minimiser. On: the smallest perturbations this library finds.
      walk_steps: after the search (and ``refine``), this many steps of a boundary walk from each
        successful example (``refine.walk``: decoupled direction and norm steps, the norm bound changing
        by ``walk_gamma`` per step, the shortest adversarial point kept; one value-and-gradient per step,
        plus one at the start). It finds a better local minimum of the distance where the boundary is
        bumpy (max pooling), where the c search's minimiser and ``refine`` stall. 0: off (the paper's
        cross-entropy minimiser, shortened to the boundary).
      rescue_steps: after the search, the examples it left unsuccessful are searched again from the clean
        image by this many decoupled direction-and-norm steps (``refine.rescue``: DDN's, the norm bound
        starting at the failed attempt's length and changing by ``rescue_gamma`` per step), then shortened
        and walked like any success. Where the c search's solves stall short of the boundary (a certifiably
        trained ReLU net, targeted: ``benchmarks/RESULTS.md``) it still crosses it. It runs on the failures
        alone, in programs compiled only when there is one (under an outer jit: inside the program, where
        blocks of ``block_size`` rows with no failure skip it); the untargeted search rescues an image once,
        when none of its candidates succeeded. 0: off (the paper's attack: a failure is reported as one).
      block_size: how many examples are solved at once (one batched evaluation of the model serves them
        all); the others wait and take the place of a finished example at once. ``None``: the backend's
        default (32 on CPU, where each row's L-BFGS memory stays in cache;
        8192 on accelerators). Memory is bounded by it, not by the number of examples.
      execution: where the batched solver's loop runs: ``"loop"`` (one XLA while loop: one dispatch),
        ``"stepped"`` (each iteration a jitted call from the host: XLA:CPU runs convolutions ~1.4× slower
        inside a loop body: 1.4× on a small CNN's value-and-grad, measured here), ``"auto"`` (stepped on CPU for a model with a convolution, else the
        loop; always the loop under an outer ``jit``). The same arithmetic either way.
      compile: how XLA compiles the attack's programs: ``"fast"`` (on CPU, XLA's older fusion emitters:
        about half the compile time of the first call; up to ~15% slower per call on MLPs, about as fast
        on CNNs), ``"optimized"`` (the backend's defaults), ``"auto"`` (on CPU, fast until a program has
        attacked ``_attack_engine.FAST_ROWS`` images in this process, then optimized; elsewhere optimized).
        Results are bit-identical across tiers; under an outer ``jit`` the outer program's compilation
        applies.
    """

    box: tuple[float, float] = (0.0, 1.0)
    penalty: Literal["l2_squared", "l2"] = "l2_squared"
    c_init: float | None = None
    c_init_scale: float = 1.0
    c_factor: float = 3.0
    c_search: Literal["secant", "bisect"] = "secant"
    c_steps: int = 10
    c_rtol: float = 2.0
    maxiter: int = 100
    tol: float = 1e-5
    ftol: float = 1e-3
    history: int = 5
    solver: Literal["batched", "jaxopt"] = "batched"
    warm_start: bool = True
    block_size: int | None = None
    loss: Literal["ce", "margin"] = "ce"
    kappa: float = 1e-3
    shrink_steps: int = 12
    refine: bool = False
    refine_steps: int = 8
    refine_classes: int = 4
    walk_steps: int = 25
    walk_gamma: float = 0.005
    rescue_steps: int = 100
    rescue_gamma: float = 0.05
    execution: Literal["auto", "loop", "stepped"] = "auto"
    compile: Literal["auto", "fast", "optimized"] = "auto"
    # the compilation tier never changes a result (bit-identical), so cached attacks serve every tier
    NOT_IN_CACHE_KEY: ClassVar[tuple[str, ...]] = ("compile",)

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
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {self.execution!r}")
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {COMPILES}, got {self.compile!r}")
        if self.walk_steps < 0 or not 0 < self.walk_gamma < 1:
            raise ValueError(f"need walk_steps >= 0 and 0 < walk_gamma < 1, got {self.walk_steps}, {self.walk_gamma}")
        if self.rescue_steps < 0 or not 0 < self.rescue_gamma < 1:
            raise ValueError(f"need rescue_steps >= 0 and 0 < rescue_gamma < 1, got {self.rescue_steps}, "
                             f"{self.rescue_gamma}")
        if self.refine_steps < 1 or self.refine_classes < 1:
            raise ValueError(f"need refine_steps >= 1 and refine_classes >= 1, got {self.refine_steps}, "
                             f"{self.refine_classes}")

    @classmethod
    def reproduction(cls) -> "AttackConfig":
        """The attack that made the committed results (``results/``): the defaults before the settings
        study, solves finished to ``ftol=1e-5`` and the c bracket to 3%, no boundary walk (the paper's
        cross-entropy minimiser, shortened to the boundary; a failure reported as one, no rescue)."""
        return cls(ftol=1e-5, c_rtol=3e-2, walk_steps=0, rescue_steps=0)

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
    c: jax.Array  # [N] the c that produced the returned example (inf where x itself reaches the target; an
    #               example only ``rescue_steps`` solved: the smallest c its search tried)
    target: jax.Array  # [N] the target label
    prediction: jax.Array  # [N] argmax logits_fn(adversarial)
    grad_evals: jax.Array  # [N] value-and-grad evaluations spent on each example (its row of every
    #                       batched call it took part in; the sum is the call's work in rows)


def distortion(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """The paper's distortion measure: the RMS per pixel of the perturbation.

    Args:
      x: clean images ``[N, ...]``; x_adv: perturbed images of the same shape.

    Returns:
      ``[N]`` sqrt(Σ_i (x'_i − x_i)² / n), n the number of pixels.

    References:
      Szegedy et al. 2014, Table 1 ("Av. min. distortion").
    """
    r = (jnp.asarray(x_adv) - jnp.asarray(x)).reshape(jnp.shape(x)[0], -1)
    return jnp.sqrt(jnp.mean(r ** 2, axis=1))


# ---- input validation ------------------------------------------------------------------------


def _validate(logits_fn, images, targets, box, *, targets_name: str = "targets") -> int:
    """Checks shapes, dtypes and values (``validate``), and that the model's logits at the clean images are
    finite; returns K. Compiles nothing but the model's forward pass."""
    n = validate.images(images, box=box)
    k = validate.logits_fn(logits_fn, images)
    validate.labels(targets, n, k, name=targets_name)
    validate.finite_logits(logits_fn, images)
    return k


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
    return _attack(logits_fn, images, targets, cfg)


def _attack(logits_fn, images, targets, cfg: AttackConfig, rescue: bool = True) -> AttackResult:
    """``lbfgs_attack`` on validated arguments; ``targets`` may hold untargeted rows (``refine.untargeted``).
    ``rescue=False``: no rescue on concrete input (the caller rescues what its candidates together fail
    on, ``_rescue``); under an outer jit the rescue always runs inside the program."""
    images = jnp.asarray(images, jnp.float32)
    shape = tuple(images.shape[1:])
    flat = images.reshape(images.shape[0], -1)
    targets = jnp.asarray(targets, jnp.int32)
    if cfg.solver == "jaxopt":
        return AttackResult(*_engine.attack_lockstep(_engine.as_partial(logits_fn), flat, targets, shape, cfg))
    slots, fn = _slots(flat, cfg), _engine.as_partial(logits_fn)
    if not validate.is_concrete(images):  # inlined into the caller's program, compiled as the caller's
        return AttackResult(*_engine.attack_loop(fn, flat, targets, shape, cfg, slots, "optimized", rescue=True))
    stepped = _stepped(fn, images, cfg)
    tier = _tier(fn, flat, shape, cfg, slots, stepped)
    out = AttackResult(*(_engine.attack_stepped(fn, flat, targets, shape, cfg, slots, tier) if stepped
                         else _engine.attack_loop(fn, flat, targets, shape, cfg, slots, tier, rescue=False)))
    return _rescue(logits_fn, images, targets, out, cfg) if rescue else out


def _slots(flat, cfg: AttackConfig) -> int:
    return min(cfg.block_size or _engine.default_block_size(), flat.shape[0])


def _tier(fn, flat, shape, cfg: AttackConfig, slots: int, stepped: bool, count: bool = True) -> str:
    """The compilation tier for this call; ``count=False``: without counting its images toward the fast tier's
    budget again (the rescue re-attacks images a call already counted)."""
    return _engine.tier(cfg.compile, (stepped, jax.tree.structure(fn), flat.shape, shape, cfg, slots),
                        flat.shape[0] if count else 0)


def _rescue(logits_fn, images, targets, out: AttackResult, cfg: AttackConfig) -> AttackResult:
    """``out`` with its failures searched again (``cfg.rescue_steps``; ``_engine.rescue_failures``: programs
    compiled and run only where there is a failure). Concrete input only."""
    if not cfg.rescue_steps or cfg.solver == "jaxopt" or bool(np.all(np.asarray(out.success))):
        return out
    images = jnp.asarray(images, jnp.float32)
    flat = images.reshape(images.shape[0], -1)
    fn, slots = _engine.as_partial(logits_fn), _slots(flat, cfg)
    tier = _tier(fn, flat, tuple(images.shape[1:]), cfg, slots, _stepped(fn, images, cfg), count=False)
    return AttackResult(*_engine.rescue_failures(fn, flat, jnp.asarray(targets, jnp.int32), _engine.Outcome(*out),
                                                 tuple(images.shape[1:]), cfg, slots, tier))


def _stepped(fn, images, cfg: AttackConfig) -> bool:
    """``cfg.execution`` resolved: the host-stepped loop, or one XLA loop (always under an outer jit)."""
    if not (validate.is_concrete(images) and cfg.execution != "loop"):
        return False
    if cfg.execution == "stepped":
        return True
    example = jax.ShapeDtypeStruct(images.shape, images.dtype)
    return jax.default_backend() == "cpu" and _engine.has_convolution(fn, example)


def lbfgs_attack_untargeted(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *,
                            config: AttackConfig | None = None, max_rows: int = 8192,
                            search: str | int = "one+2") -> AttackResult:
    """Closest adversarial example over all wrong labels, per image.

    ``search="one+2"`` (the default, chosen by the printed rule of ``benchmarks.untargeted_search``: the
    fastest search within 1.01× of the exhaustive one's per-image ‖r‖₂ on five models, among them an
    adversarially trained MLP): the shorter success of one untargeted solve and of the 2 nearest
    classes' targeted solves (below), 3 solves per image instead of K − 1.

    ``search="all"``: the targeted attack on every (image, label ≠ ``labels[i]``) pair — K − 1 problems
    per image, streaming through ``block_size`` solver rows — keeping each image's smallest successful
    perturbation. Images go through in blocks of ``max_rows // (K − 1)`` (the last one padded: one
    compilation), so memory is bounded by ``max_rows`` whatever N; the result does not depend on the
    blocking. ``search="one"``: one problem per image, the paper's penalty with the cross-entropy (or
    ``config.loss``'s margin) toward the image's best wrong class wherever the solver is
    (``refine.effective_targets``): the same c search, shortening and walk, succeeding once the label is
    no longer predicted. ``search=m`` (an int): the targeted attack toward the m wrong classes whose
    decision boundary is nearest at the clean image by the linearised estimate ``(z_label − z_j) /
    ‖∇(z_label − z_j)‖`` (DeepFool's), keeping the smallest success: m solves per image.
    ``search="one+M"``: both, the shorter success of the untargeted solve and the M nearest classes'.

    Args:
      logits_fn: as for ``lbfgs_attack``.
      images: ``[N, ...]`` floats inside ``config.box``; labels: ``[N]`` their true labels.
      config: ``AttackConfig`` (default ``AttackConfig()``).
      max_rows: (image, target) problems held at once by ``search="all"`` (8192 MNIST problems: ~25 MB
        per array).
      search: ``"one+2"`` (default), ``"all"`` (K − 1 targeted solves per image), ``"one"`` (one
        untargeted solve), an int m (the m nearest classes' targeted solves) or ``"one+M"`` (1 + M solves).

    Returns:
      ``AttackResult`` per image: the successful example with the smallest ‖r‖₂ found (``target``: the
      class it reaches; ``grad_evals``: every solve's evaluations for the image together, plus K gradients
      for the nearest-class estimate where it is used, plus the rescue's where no candidate succeeded:
      ``config.rescue_steps`` runs once per image, untargeted, after the candidates, not per candidate). An image the model already misclassifies is its
      own closest adversarial (l2 = 0).
    """
    cfg = config or AttackConfig()
    nearest = _nearest_count(search)
    k = _validate(logits_fn, images, labels, cfg.box, targets_name="labels")
    away = refine.untargeted(jnp.asarray(labels, jnp.int32))
    if isinstance(search, str) and search.startswith("one"):
        best = _attack(logits_fn, images, away, cfg, rescue=False)
        if nearest:
            near = _over_targets(logits_fn, images, labels, k, min(nearest, k - 1), cfg, max_rows)
            best = _shortest(jax.tree.map(lambda *a: jnp.stack(a, axis=1), best, near))
    else:
        best = _over_targets(logits_fn, images, labels, k, k - 1 if search == "all" else min(search, k - 1), cfg,
                             max_rows)
    # an image no candidate reached a wrong class on is searched again, untargeted
    return _rescue(logits_fn, images, away, best, cfg) if validate.is_concrete(images) else best


def _over_targets(logits_fn, images, labels, k: int, m: int, cfg: AttackConfig, max_rows: int) -> AttackResult:
    """The shortest success over m targeted solves per image (all K − 1 wrong classes, or the m nearest),
    in blocks of ``max_rows // m`` images."""
    if max_rows < m:
        raise ValueError(f"max_rows must hold one image's {m} targets, got {max_rows}")
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    n, per = images.shape[0], max_rows // m
    if n <= per:
        return _closest_over_targets(logits_fn, images, labels, k, m, cfg)
    parts = []
    for start in range(0, n, per):
        stop = min(start + per, n)
        res = _closest_over_targets(logits_fn, storage.pad_rows(images[start:stop], per),
                                    storage.pad_rows(labels[start:stop], per), k, m, cfg)
        parts.append(jax.tree.map(lambda a: a[: stop - start], res))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _nearest_count(search) -> int:
    """The nearest classes a ``search`` value solves toward besides any untargeted solve (0: none; also
    checks the value)."""
    if search in ("all", "one"):
        return 0
    if isinstance(search, int) and not isinstance(search, bool) and search >= 1:
        return search
    if isinstance(search, str) and search.startswith("one+") and search[4:].isdigit() and int(search[4:]) >= 1:
        return int(search[4:])
    raise ValueError(f"search must be 'all', 'one', 'one+M' or a number of classes M >= 1, got {search!r}")


def _shortest(stacked: AttackResult) -> AttackResult:
    """Per image, the successful candidate with the smallest ‖r‖₂ (``stacked``: candidates on axis 1; the
    first if none succeeded); its ``grad_evals`` is every candidate's together, the image's whole work."""
    pick = jnp.argmin(jnp.where(stacked.success, stacked.l2, jnp.inf), axis=1)
    best = jax.tree.map(lambda a: jnp.take_along_axis(a, pick.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0],
                        stacked)
    return best._replace(grad_evals=stacked.grad_evals.sum(axis=1))


@jax.jit
def _boundary_estimates(logits_fn, images, labels):
    """``[N, K]`` the linearised distance to each class's decision boundary at the clean images,
    ``(z_label − z_j) / ‖∇(z_label − z_j)‖`` (DeepFool's estimate; +inf at the label)."""
    def one(x, y):
        z = logits_fn(x[None])[0]
        jac = jax.jacrev(lambda v: logits_fn(v[None])[0])(x).reshape(z.shape[0], -1)  # [K, D]
        gap = z[y] - z
        norm = jnp.linalg.norm(jac[y][None] - jac, axis=1)
        return jnp.where(jnp.arange(z.shape[0]) == y, jnp.inf, gap / jnp.maximum(norm, 1e-12))
    return jax.vmap(one)(images, labels)


def _closest_over_targets(logits_fn, images, labels, k: int, m: int, cfg: AttackConfig) -> AttackResult:
    n = images.shape[0]
    if m == k - 1:
        wrong = (labels[:, None] + jnp.arange(1, k)[None, :]) % k  # [N, K-1], never the label
    else:  # the m nearest by the linearised estimate
        wrong = jnp.argsort(_boundary_estimates(_engine.as_partial(logits_fn), images, labels), axis=1)[:, :m]
    res = _attack(logits_fn, jnp.repeat(images, m, axis=0), wrong.reshape(-1), cfg, rescue=False)
    best = _shortest(jax.tree.map(lambda a: a.reshape((n, m) + a.shape[1:]), res))
    return best if m == k - 1 else best._replace(grad_evals=best.grad_evals + k)  # the estimate's K gradients


# ---- datasets --------------------------------------------------------------------------------


def random_wrong_targets(key: jax.Array, labels, num_classes: int = 10) -> jax.Array:
    """A uniformly random wrong label per example (the paper does not say how it chose its targets).

    Args:
      key: PRNG key; labels: ``[N]`` true labels; num_classes: K.

    Returns:
      ``[N]`` int32 targets, each ≠ ``labels[i]``, uniform over the other K − 1 labels.
    """
    labels = jnp.asarray(labels, jnp.int32)
    shift = jax.random.randint(key, labels.shape, 1, num_classes)
    return (labels + shift) % num_classes


def summarize(res: AttackResult) -> dict:
    """Summary statistics of an attack, as JSON-able numbers.

    Args:
      res: an ``AttackResult``.

    Returns:
      dict: ``n``, ``success_rate``, ``failures``, and over the successful examples ``mean_distortion``,
      ``median_distortion``, ``mean_l2`` (None if none succeeded) and a histogram of log10 c.
    """
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

    Args:
      logits_fn, images, targets, config: as for ``lbfgs_attack``.
      chunk_size: examples per call (memory is bounded by it and ``config.block_size``).
      cache_dir: if given, each finished chunk is written atomically there and reused by the next call,
        so an interrupted run loses at most the chunk in flight (``storage.cached_chunks``). The caller
        keys the directory (one per model, data and config: ``storage.cache_key``).
      progress: called with the number of examples of each finished chunk.

    Returns:
      ``AttackResult`` of numpy arrays, in the order of ``images``.
    """
    images, targets = np.asarray(images, np.float32), np.asarray(targets, np.int32)
    n = len(images)
    size = min(chunk_size, n)

    def compute(start, stop):
        res = lbfgs_attack(logits_fn, storage.pad_rows(images[start:stop], size),
                           storage.pad_rows(targets[start:stop], size), config=config)
        return AttackResult(*(np.asarray(a)[: stop - start] for a in res))

    return storage.cached_chunks(compute, n, chunk_size, AttackResult, cache_dir, progress)
