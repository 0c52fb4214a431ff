"""Refinement of an adversarial example toward the closest point of the target's decision region.

Two refinements: ``walk`` (the attack's default, ``AttackConfig.walk_steps``), long decoupled
direction-and-norm steps along the boundary that keep the shortest adversarial point seen; and ``refine``
(``AttackConfig.refine``), exact projections onto the boundary's linearisation, below.

Given a successful adversarial ``z`` for image ``x`` and target ``t``, each ``refine`` step linearises the margins
``m_j(z) = z_t − z_j`` of the ``classes`` most threatening wrong classes at ``z`` and solves, exactly,

    minimise_r  ½‖r‖²   subject to   m_j(z) + ∇m_j(z)·(x + r − z) ≥ κ  (each j),   x + r ∈ [lo, hi]^D

(the box-constrained projection of ``x`` onto the linearised region; ``project``), then moves ``z``
along the segment toward that point as far as the target is still predicted (bisection). ‖· − x‖ is
convex, so every point of the segment is at most as far from ``x`` as ``z``: a step never lengthens the
perturbation, and on a linear model (softmax regression) the first step lands on the exact minimum.

The projection is solved in its dual: for multipliers μ ≥ 0 (one per constraint) the minimising r is
``clip(Aᵀμ, lo − x, hi − x)``; the dual is concave and piecewise quadratic, maximised by projected
(semismooth) Newton steps with a backtracking choice of the step length.

References: Szegedy et al. 2014, Sec. 4.1 (the attack refined); Croce & Hein 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack" (FAB: box-constrained projections onto
linearised boundaries); Moosavi-Dezfooli et al. 2016 (DeepFool).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NEWTON_STEPS = 8
STEP_LENGTHS = (1.0, 0.5, 0.25, 0.125, 0.0)  # tried at once per Newton step; 0 keeps μ


def project(A: jax.Array, b: jax.Array, lo: jax.Array, hi: jax.Array, iters: int = NEWTON_STEPS,
            mu0: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """argmin ½‖r‖² subject to ``A r ≥ b`` and ``lo ≤ r ≤ hi``, row by row.

    Args:
      A: ``[N, Q, D]`` constraint normals; b: ``[N, Q]`` offsets (a row of A that is all zero with
        b ≤ 0 is an inactive constraint); lo, hi: ``[N, D]`` bounds with lo ≤ 0 ≤ hi.
      iters: dual Newton steps; mu0: ``[N, Q]`` starting multipliers (≥ 0; default zeros).

    Returns:
      ``(r, mu)``: ``[N, D]`` r (feasible for the box always; for ``A r ≥ b`` up to the dual's
      convergence, or as close as the box allows when the constraints cannot be met inside it) and the
      multipliers ``[N, Q]`` (a warm start for a nearby problem).
    """
    q = A.shape[1]
    eye = jnp.eye(q, dtype=A.dtype)

    def primal(mu):
        return jnp.clip(jnp.einsum("nq,nqd->nd", mu, A), lo, hi)

    def dual(mu, r):  # g(μ) = ½‖r‖² − μ·(A r − b) at the minimising r
        return 0.5 * jnp.sum(r ** 2, -1) - jnp.sum(mu * (jnp.einsum("nqd,nd->nq", A, r) - b), -1)

    scale = jnp.mean(jnp.sum(A ** 2, -1), -1, keepdims=True)[..., None] + 1e-30

    def step(_, mu):
        v = jnp.einsum("nq,nqd->nd", mu, A)
        r = jnp.clip(v, lo, hi)
        grad = b - jnp.einsum("nqd,nd->nq", A, r)  # ascent direction of g
        # coordinates on a bound count as free: the curvature is then never underestimated (a pixel at 0
        # that the step pushes inward moves), so a full step cannot overshoot from μ = 0
        free = ((v >= lo) & (v <= hi)).astype(A.dtype)
        hess = jnp.einsum("nqd,nd,npd->nqp", A, free, A) + 1e-6 * scale * eye
        moving = (mu > 0) | (grad > 0)  # multipliers at 0 with a negative gradient stay there
        both = moving[:, :, None] & moving[:, None, :]
        h = jnp.where(both, hess, eye * scale)
        delta = jnp.where(moving, jnp.linalg.solve(h, jnp.where(moving, grad, 0.0)[..., None])[..., 0], 0.0)
        cands = jnp.stack([jnp.maximum(mu + a * delta, 0.0) for a in STEP_LENGTHS])  # [S, N, Q]
        vals = jax.vmap(lambda m: dual(m, primal(m)))(cands)
        return jnp.take_along_axis(cands, jnp.argmax(vals, 0)[None, :, None], 0)[0]

    mu = jax.lax.fori_loop(0, iters, step, jnp.zeros(b.shape, A.dtype) if mu0 is None else mu0)
    return primal(mu), mu


def untargeted(labels):
    """The target code of untargeted rows: ``−1 − label``, "any class but the label" (``effective_targets``)."""
    return -1 - jnp.asarray(labels)


def effective_targets(logits, targets):
    """Each row's target as these logits see it: a class ``t ≥ 0`` as given; an untargeted row (``t =
    −1 − label``, ``untargeted``) the best wrong class at these logits, the class nearest to winning. With
    it every margin, loss and success test serves both kinds of row: an untargeted row succeeds when its
    best wrong class leads, i.e. when the label is no longer predicted."""
    wrong = jnp.where(jax.nn.one_hot(-1 - targets, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.where(targets >= 0, targets, jnp.argmax(wrong, -1)).astype(targets.dtype)


def reached(prediction, targets):
    """Whether each row's prediction is a success: the target (``t ≥ 0``) or any class but the label."""
    return jnp.where(targets >= 0, prediction == targets, prediction != -1 - targets)


def classification_loss(logits, targets):
    """Per-row cross-entropy ``[N]``: toward the target (``−log p_t``), or for an untargeted row away from
    its label, ``−log(1 − p_label)`` (every wrong class weighed by its probability, so the solver can
    drift to whichever class is nearest)."""
    logp = jax.nn.log_softmax(logits)
    label = -1 - targets
    own = jax.nn.one_hot(label, logits.shape[-1], dtype=bool)
    away = -jax.nn.logsumexp(jnp.where(own, -jnp.inf, logp), axis=-1)  # −log Σ_{j≠label} p_j
    toward = -jnp.take_along_axis(logp, jnp.maximum(targets, 0)[:, None], axis=1)[:, 0]
    return jnp.where(targets >= 0, toward, away)


def _margins(logits, targets):
    """``z_t − z_j`` for every class j ``[N, K]`` (+inf at j = t); t as ``effective_targets`` reads it."""
    targets = effective_targets(logits, targets)
    z_t = jnp.take_along_axis(logits, targets[:, None], axis=1)
    own = jax.nn.one_hot(targets, logits.shape[-1], dtype=bool)
    return jnp.where(own, jnp.inf, z_t - logits)


def leads(logits, targets):
    """Whether each row's target leads every other class by a few float32 roundings of the logits' scale,
    1e-5·(1 + max|logit|): the model evaluated another way (another batch size, unjitted) then still
    predicts the target. The attack's final verification asks for the same lead."""
    return jnp.min(_margins(logits, targets), -1) > 1e-5 * (1.0 + jnp.max(jnp.abs(logits), -1))


def refine(flat_logits, x, targets, z, *, steps: int, classes: int, kappa: float, box, search_steps: int = 8,
           rtol: float = 1e-4, newton_steps: int = NEWTON_STEPS):
    """Up to ``steps`` linearise-project-and-walk steps from adversarial ``z`` (rows where ``z`` does not
    reach its target are returned unchanged); stops early once no row's ‖r‖ shrinks by more than ``rtol``.

    Args:
      flat_logits: ``[N, D] -> [N, K]``; x: clean images ``[N, D]``; targets: ``[N]``; z: ``[N, D]``.
      steps: refinement steps at most; classes: wrong classes linearised per step (the smallest margins;
        at most K − 1); kappa: the margin the linearised constraints ask for; box: (lo, hi).
      search_steps: bisection steps of the walk along each segment (forward passes).
      rtol: relative decrease of ‖r‖² below which a step counts as converged.
      newton_steps: dual Newton steps of each projection (``project``).

    Returns:
      ``(z, evals)``: the refined examples ``[N, D]`` (never farther from ``x`` than the input, always
      inside the box and reaching the target where the input did) and the model passes (forward or
      backward) spent per row.
    """
    lo, hi = box
    lo_r, hi_r = lo - x, hi - x
    k = jax.eval_shape(flat_logits, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape[-1]
    q = min(classes, k - 1)
    n = x.shape[0]

    def reaches(p):
        return leads(flat_logits(p), targets)

    def one(state):
        i, z, mu, cls, _ = state
        logits, pullback = jax.vjp(flat_logits, z)
        neg_m, j = jax.lax.top_k(-_margins(logits, targets), q)  # the q smallest margins and their classes
        cot = jax.nn.one_hot(effective_targets(logits, targets), k, dtype=z.dtype)[:, None] - jax.nn.one_hot(j, k, dtype=z.dtype)
        A = jnp.moveaxis(jax.vmap(lambda c: pullback(c)[0], in_axes=1)(cot), 0, 1)  # [N, q, D]
        b = kappa + neg_m + jnp.einsum("nqd,nd->nq", A, z - x)
        r, mu = project(A, b, lo_r, hi_r, newton_steps, mu0=jnp.where(j == cls, mu, 0.0))  # warm: same class, same slot
        p = x + r

        def bisect(t, st):  # s_ok: largest verified step along z → p; s_bad: smallest failing
            s_ok, s_bad = st
            s = jnp.where(t == 0, 1.0, 0.5 * (s_ok + s_bad))
            ok = reaches(z + s[:, None] * (p - z))
            return jnp.where(ok, s, s_ok), jnp.where(ok, s_bad, s)

        s, _ = jax.lax.fori_loop(0, search_steps + 1, bisect, (jnp.zeros((n,), x.dtype), jnp.ones((n,), x.dtype)))
        new = jnp.clip(z + s[:, None] * (p - z), lo, hi)
        before, after = (jnp.sum((v - x) ** 2, -1) for v in (z, new))
        gain = jnp.max(jnp.where(start, 1.0 - after / jnp.maximum(before, 1e-30), 0.0))
        return i + 1, new, mu, j, gain

    start = reaches(z)
    zeros = jnp.zeros((n, q), x.dtype)
    done, out, *_ = jax.lax.while_loop(lambda st: (st[0] < steps) & (st[4] > rtol), one,
                                       (0, z, zeros, jnp.full((n, q), -1, jnp.int32), jnp.inf))
    evals = done * (1 + q + search_steps + 1)
    return jnp.where(start[:, None], out, z), jnp.where(start, evals, 0).astype(jnp.int32)


WALK_STEP = 1.0  # the first step's length, as a fraction of the current perturbation's norm


def walk(flat_logits, x, targets, z, *, steps: int, gamma: float, box):
    """A boundary walk from adversarial ``z``: ``steps`` decoupled direction-and-norm steps (DDN), each
    a normalised descent step of the cross-entropy toward the target (its length ``WALK_STEP`` times the
    current norm bound, decaying to 1% of it by a cosine schedule) followed by the projection onto the
    sphere of radius ε around ``x``, where ε shrinks by ``1 − gamma`` after an adversarial point and grows
    by ``1 + gamma`` after one that is not. Keeps, per row, the shortest point seen that reaches the
    target (rows where ``z`` does not are returned unchanged).

    Where ``refine`` follows the boundary's local linearisation, which stalls on a bumpy boundary (max
    pooling: ``benchmarks/RESULTS.md``), the walk's steps are as long as the perturbation itself at first:
    started from the attack's result it reaches a better local minimum of the distance than the result,
    and than DDN started from the clean image.

    Args:
      flat_logits: ``[N, D] -> [N, K]``; x: clean images ``[N, D]``; targets: ``[N]``; z: ``[N, D]``.
      steps: walk steps (one value-and-gradient each); gamma: the norm bound's relative change per step.
      box: (lo, hi).

    Returns:
      ``(z, evals)``: the examples ``[N, D]`` (never farther from ``x`` than the input, inside the box and
      reaching the target where the input did) and the value-and-gradient evaluations spent per row.

    References:
      Rony et al. 2019, "Decoupling direction and norm for efficient gradient-based L2 adversarial
      attacks and defenses" (DDN).
    """
    state = walk_start(x, z, box)
    state = jax.lax.fori_loop(0, steps + 1, lambda k, st: walk_step(flat_logits, x, targets, k, st, steps=steps,
                                                                    gamma=gamma, box=box), state)
    return walk_end(x, z, state, steps)


class WalkState(NamedTuple):
    """Per-row state of ``walk`` (all ``[N]`` unless noted)."""

    r: jax.Array  # [N, D] the current perturbation
    eps: jax.Array  # the norm bound
    best: jax.Array  # [N, D] the shortest adversarial perturbation seen
    best_norm: jax.Array  # its norm (inf: none yet)
    start: jax.Array  # whether the walk's starting point reaches the target


def _norm(r):
    return jnp.sqrt(jnp.sum(r ** 2, -1))


def walk_start(x, z, box) -> WalkState:
    """``walk``'s state before its first step, from examples ``z`` ``[N, D]``."""
    lo, hi = box
    r0 = jnp.clip(z, lo, hi) - x
    n = x.shape[0]
    return WalkState(r=r0, eps=_norm(r0), best=r0, best_norm=jnp.full((n,), jnp.inf, x.dtype),
                     start=jnp.zeros((n,), bool))


def walk_step(flat_logits, x, targets, k, state: WalkState, *, steps: int, gamma: float, box) -> WalkState:
    """Step ``k`` (of ``steps + 1``: step 0 evaluates the starting point) of ``walk``: one value-and-gradient."""
    lo, hi = box

    def loss(r):
        logits = flat_logits(x + r)
        ce = classification_loss(logits, targets)
        return jnp.sum(ce), logits

    r, eps, best, best_norm, start = state
    (_, logits), g = jax.value_and_grad(loss, has_aux=True)(r)
    adv = leads(logits, targets)
    start = jnp.where(k == 0, adv, start)
    size = _norm(r)
    better = adv & (size < best_norm)
    best = jnp.where(better[:, None], r, best)
    best_norm = jnp.where(better, size, best_norm)
    eps = jnp.where(adv, jnp.minimum(eps, size) * (1.0 - gamma), eps * (1.0 + gamma))
    length = WALK_STEP * eps * (0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * k / steps)))
    r = r - (length / jnp.maximum(_norm(g), 1e-30))[:, None] * g
    r = r * (eps / jnp.maximum(_norm(r), 1e-30))[:, None]
    return WalkState(jnp.clip(x + r, lo, hi) - x, eps, best, best_norm, start)


def walk_end(x, z, state: WalkState, steps: int):
    """``walk``'s result ``(z, evals)`` from its final state: rows whose start reached the target (and is
    not ``x`` itself) take the shortest adversarial point seen."""
    walked = state.start & (state.best_norm > 0)
    return jnp.where(walked[:, None], x + state.best, z), jnp.where(walked, steps + 1, 0).astype(jnp.int32)


def rescue_start(flat_logits, x, targets, z, box) -> WalkState:
    """``rescue``'s state after its first step (one value-and-gradient, at ``x``): a step down the
    normalised gradient to the norm bound ε, the larger of the failed attempt's length ‖z − x‖ and the
    linearised distance to the target's boundary at ``x`` (the loss over its gradient's norm)."""
    lo, hi = box

    def loss(v):
        ce = classification_loss(flat_logits(v), targets)
        return jnp.sum(ce), ce

    (_, ce), g = jax.value_and_grad(loss, has_aux=True)(x)
    gn = jnp.maximum(_norm(g), 1e-30)
    eps = jnp.maximum(_norm(jnp.clip(z, lo, hi) - x), ce / gn)
    r = jnp.clip(x - (eps / gn)[:, None] * g, lo, hi) - x
    n = x.shape[0]
    return WalkState(r=r, eps=eps, best=jnp.zeros_like(x), best_norm=jnp.full((n,), jnp.inf, x.dtype),
                     start=jnp.zeros((n,), bool))


def rescue_end(x, z, state: WalkState, failed, steps: int):
    """``rescue``'s result ``(z, evals)``: the searched rows that found an adversarial point take the
    shortest one seen; the others keep ``z``."""
    found = failed & jnp.isfinite(state.best_norm)
    return jnp.where(found[:, None], x + state.best, z), jnp.where(failed, steps + 1, 0).astype(jnp.int32)


def rescue(flat_logits, x, targets, z, *, steps: int, gamma: float, box):
    """A second search for the rows where the attack's result ``z`` does not reach the target: ``walk``'s
    decoupled direction-and-norm steps started at the clean image ``x`` (DDN), the norm bound growing by
    ``1 + gamma`` after every step that is not adversarial and shrinking by ``1 − gamma`` after one that
    is, the shortest adversarial point seen kept. The bound starts at the larger of the failed attempt's
    length and the linearised distance to the boundary at ``x`` (``rescue_start``).

    Where a penalty method's solves stall (on a certifiably trained ReLU net, cross-entropy toward some
    targets is flat over much of the box, and every c's solve ends short of the boundary), a search whose
    step length is set by the norm bound, not by the loss's curvature, still crosses it. Rows that reach
    the target are returned unchanged, at the cost of one forward pass; a block with none skips the search.

    Args:
      flat_logits: ``[N, D] -> [N, K]``; x: clean images ``[N, D]``; targets: ``[N]``; z: ``[N, D]``.
      steps: search steps (one value-and-gradient each, plus one at the start: ``steps + 1`` per searched
        row); gamma: the norm bound's relative change per step.
      box: (lo, hi).

    Returns:
      ``(z, evals)``: the examples ``[N, D]`` (a searched row that found an adversarial point: the
      shortest; else unchanged) and the value-and-gradient evaluations spent per row.

    References:
      Rony et al. 2019, "Decoupling direction and norm for efficient gradient-based L2 adversarial
      attacks and defenses" (DDN).
    """
    failed = ~leads(flat_logits(jnp.clip(z, *box)), targets)  # the rows searched: one forward pass

    def search(_):
        state = rescue_start(flat_logits, x, targets, z, box)
        state = jax.lax.fori_loop(1, steps + 1, lambda k, st: walk_step(flat_logits, x, targets, k, st, steps=steps,
                                                                        gamma=gamma, box=box), state)
        return rescue_end(x, z, state, failed, steps)

    return jax.lax.cond(jnp.any(failed), search, lambda _: (z, jnp.zeros((x.shape[0],), jnp.int32)), None)
