"""The search inside the L-BFGS attack: the objective, the per-example search for c, the solver rows
that examples stream through, and the shortening of each result back to the decision boundary.

``attacks.lbfgs_attack`` validates its input and calls ``attack_loop`` or ``attack_stepped`` (or the
``jaxopt`` reference ``attack_lockstep``), jitted with the config static and the model (a
``jax.tree_util.Partial``) traced, so new weights reuse the compiled program; each in two compilation
tiers (``TIERS``).

References: Szegedy et al. 2014, Sec. 4.1; Byrd, Lu, Nocedal & Zhu 1995 (L-BFGS-B, ``lbfgsb``).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from intriguing_jax import lbfgsb, refine, storage

# ``cfg`` below is an ``attacks.AttackConfig`` (hashable, static under jit). The attack's results leave
# this module as ``Outcome``; ``attacks`` wraps them in its public ``AttackResult`` (no import back).


class Outcome(NamedTuple):
    """What the attack returns, field for field ``attacks.AttackResult`` (documented there)."""

    adversarial: jax.Array
    success: jax.Array
    l2: jax.Array
    linf: jax.Array
    distortion: jax.Array
    c: jax.Array
    target: jax.Array
    prediction: jax.Array
    grad_evals: jax.Array


def as_partial(logits_fn) -> Partial:
    """``logits_fn`` as a ``jax.tree_util.Partial`` (unchanged if it is one)."""
    # A tree_util.Partial is a pytree: its bound arrays (e.g. params) stay traced arguments of the
    # jitted core, so a new set of weights does not recompile. Plain callables become static.
    return logits_fn if isinstance(logits_fn, Partial) else Partial(logits_fn)


def default_block_size(backend: str | None = None) -> int:
    """Examples solved at once when ``AttackConfig.block_size`` is None: 32 on CPU (the rows' L-BFGS
    memory stays in cache, ``benchmarks/RESULTS.md``), 8192 on accelerators."""
    return 32 if (backend or jax.default_backend()) == "cpu" else 8192


# ---- objective and solvers -------------------------------------------------------------------


def _loss(logits, targets, cfg):
    """Per-example classification term ``[N]`` toward ``targets`` (an untargeted row's cross-entropy: away
    from its label, ``refine.classification_loss``; its margin: its best wrong class's lead)."""
    if cfg.loss == "ce":
        return refine.classification_loss(logits, targets)
    return jax.nn.relu(-_margin(logits, targets) + cfg.kappa)  # zero once the target leads by kappa


def _margin(logits, targets):
    """How far the target logit leads every other one (> 0: the target is predicted; an untargeted row's
    target is its best wrong class, ``refine.effective_targets``)."""
    targets = refine.effective_targets(logits, targets)
    z_t = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(targets, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return z_t - jnp.max(others, axis=1)


def _objective(logits_fn, x, targets, const, r, cfg):
    """Per-example objective ``[N]`` for flat ``x, r`` ``[N, D]`` (images reshaped by the caller)."""
    sq = jnp.sum(r ** 2, axis=1)
    pen = sq if cfg.penalty == "l2_squared" else jnp.sqrt(sq + 1e-12)
    return const * pen + _loss(logits_fn(x + r), targets, cfg)


def _penalty(r, const, cfg):
    """``const · pen(r)`` and its gradient, per row."""
    sq = jnp.sum(r ** 2, axis=1)
    if cfg.penalty == "l2_squared":
        return const * sq, (2 * const)[:, None] * r
    norm = jnp.sqrt(sq + 1e-12)
    return const * norm, (const / norm)[:, None] * r


def _solve_box_lbfgs(flat_logits, x, targets, const, r0, cfg):
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


def _update_search(s: _Search, done, z, sq, margin, cfg) -> tuple[_Search, jax.Array, jax.Array]:
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


def _first_c(loss, grad, cfg):
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


def _flat(logits_fn, shape):
    """The model on flat rows ``[B, D]`` (images reshaped to ``shape`` for it)."""
    return lambda z: logits_fn(z.reshape((z.shape[0],) + shape))


def _init_carry(images, targets, *, cfg, slots: int):
    """The streaming loop's carry: the first ``slots`` examples loaded, empty outputs, the queue."""
    n = images.shape[0]
    lo, hi = cfg.box
    index = jnp.arange(slots)
    x, t = _load(images, targets, index, n)
    zeros = jnp.zeros((slots,), x.dtype)
    sl = _Slots(index=index, x=x, target=t, fresh=index < n, solving=jnp.zeros((slots,), bool),
                solver=lbfgsb.init_rows(x, zeros, jnp.zeros_like(x), lo, hi, history=cfg.history, tol=jnp.inf),
                search=_new_search(zeros, x), margin=zeros, base=(zeros, jnp.zeros_like(x), zeros),
                best=(zeros, jnp.zeros_like(x), zeros), evals=jnp.zeros((slots,), jnp.int32))
    out = (images, jnp.full((n,), jnp.inf, images.dtype), jnp.zeros((n,), jnp.int32))
    return sl, out, jnp.asarray(slots, jnp.int32)


def _pending(carry):
    """Whether any slot still holds an example."""
    return jnp.any(carry[0].index < carry[1][1].shape[0])


def _tick(logits_fn, images, targets, carry, *, shape, cfg):
    """One iteration of every slot: one batched value-and-grad of the model, then the solver, search and
    queue bookkeeping (finished examples leave, waiting ones take their slots)."""
    sl, out, queued = carry
    n = images.shape[0]
    lo, hi = cfg.box
    opts = lbfgsb.Options(maxiter=cfg.maxiter, tol=cfg.tol, ftol=cfg.ftol)
    solver, zt = lbfgsb.propose(sl.solver, lo, hi)
    loss, grad, margin = _evaluate(_flat(logits_fn, shape), jnp.where(sl.fresh[:, None], sl.x, zt), sl.target, cfg)
    evals = sl.evals + (sl.index < n)
    # the solving rows' trial
    pen, pen_grad = _penalty(zt - sl.x, sl.search.c, cfg)
    solver, took = lbfgsb.accept(solver, zt, loss + pen, grad + pen_grad, lo, hi, opts)
    cur_margin = jnp.where(took, margin, sl.margin)
    done = sl.solving & ~solver.active
    r = solver.x - sl.x
    search, better, finished = _update_search(sl.search, done, solver.x, jnp.sum(r ** 2, axis=1), cur_margin, cfg)
    pen, pen_grad = _penalty(r, sl.search.c, cfg)
    best = tuple(_rows_where(better, v, a) for a, v in zip(sl.best, (solver.f - pen, solver.g - pen_grad, cur_margin)))
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
                search=jax.tree.map(lambda new, old: _rows_where(leave, new, old),
                                    _new_search(jnp.zeros_like(search.c), x_new), search),
                margin=cur_margin, base=base, best=best, evals=jnp.where(leave, 0, evals))
    return sl, out, queued


def _streaming(logits_fn: Partial, images, targets, shape, cfg, slots: int, rescue: bool = True) -> "Outcome":
    """The attack with every example's whole c search in one of ``slots`` solver rows; a finished
    example's slot takes the next waiting example at once, so every batched evaluation serves an
    example still being solved (until the queue runs dry). One while loop: one compilation of one
    evaluation of the model, whatever the number of c steps. ``rescue``: the rescue runs inside the program
    (under an outer jit); the host's caller runs it instead on the failures alone (``rescue_failures``)."""
    carry = _init_carry(images, targets, cfg=cfg, slots=slots)
    step = functools.partial(_tick, logits_fn, images, targets, shape=shape, cfg=cfg)
    _, (z, c, evals), _ = jax.lax.while_loop(_pending, step, carry)
    return finish(_flat(logits_fn, shape), images, targets, z, c, evals, shape, cfg, slots, rescue=rescue)


def _finish_flat(logits_fn, images, targets, z, c, evals, shape, cfg, slots: int, walk: bool = True) -> "Outcome":
    return finish(_flat(logits_fn, shape), images, targets, z, c, evals, shape, cfg, slots, walk, rescue=False)


def _walk_start(logits_fn, images, targets, z, *, shape, cfg):
    return refine.walk_start(images, shorten(_flat(logits_fn, shape), images, targets, z, cfg)[0], cfg.box)


def _walk_step(logits_fn, images, targets, k, state, steps, gamma, *, shape, cfg):
    # steps and gamma traced: one program serves the walk and the rescue
    return refine.walk_step(_flat(logits_fn, shape), images, targets, k, state, steps=steps, gamma=gamma, box=cfg.box)


def _rescue_start(logits_fn, images, targets, z, *, shape, cfg):
    return refine.rescue_start(_flat(logits_fn, shape), images, targets, z, cfg.box)


def _rescue_end(images, z, evals, state, failed, cfg):
    z, more = refine.rescue_end(images, z, state, failed, cfg.rescue_steps)
    return z, evals + more


def _walk_end(images, z, evals, state, cfg):
    z, more = refine.walk_end(images, z, state, cfg.walk_steps)
    return z, evals + more


# ---- compilation tiers -------------------------------------------------------------------------------
# XLA:CPU compiles each of the loop body's ~200 small fusions separately, ~15 ms each with its default
# (MLIR) fusion emitters; its older emitters compile them in about half the time and run the same
# arithmetic (bit-identical results, tested) up to ~15% slower on MLPs, about as fast on CNNs
# (benchmarks/RESULTS.md). So a program starts in the "fast" tier and is compiled once more, "optimized",
# when the images it has attacked in this process reach FAST_ROWS: the rent-or-buy rule, with the slower
# tier's accrued loss at that point about one optimized compilation (~3-5 s at 0.1-0.3 ms lost per image).

FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
FAST_ROWS = 16384
TIERS = ("fast", "optimized")


def _jit_tiers(fn, **kw) -> dict:
    return {"optimized": jax.jit(fn, **kw), "fast": jax.jit(fn, compiler_options=FAST_COMPILE, **kw)}


_STREAMING = _jit_tiers(_streaming, static_argnames=("shape", "cfg", "slots", "rescue"))
attack_streaming = _STREAMING["optimized"]  # the program other jitted code inlines (tiers do not apply)
_INIT = _jit_tiers(_init_carry, static_argnames=("cfg", "slots"))
_PENDING = _jit_tiers(_pending)
_TICK = _jit_tiers(_tick, static_argnames=("shape", "cfg"), donate_argnums=(3,))
_FINISH = _jit_tiers(_finish_flat, static_argnames=("shape", "cfg", "slots", "walk"))
_WALK_START = _jit_tiers(_walk_start, static_argnames=("shape", "cfg"))
_WALK_STEP = _jit_tiers(_walk_step, static_argnames=("shape", "cfg"), donate_argnums=(4,))
_WALK_END = _jit_tiers(_walk_end, static_argnames=("cfg",))
_RESCUE_START = _jit_tiers(_rescue_start, static_argnames=("shape", "cfg"))
_RESCUE_END = _jit_tiers(_rescue_end, static_argnames=("cfg",))
_ATTACKED: dict = {}  # a program's signature -> images attacked with it in this process


@functools.cache
def fast_tier_available() -> bool:
    """Whether this XLA accepts the fast tier's options (``FAST_COMPILE`` names a migration switch that a
    later XLA may drop, rejecting it as unknown). Probed once per process on a trivial program; a
    rejection is said once, as a ``RuntimeWarning``, and every attack then compiles optimized."""
    try:
        jax.jit(lambda v: v + 1, compiler_options=FAST_COMPILE).lower(jnp.float32(0)).compile()
        return True
    except Exception as e:  # XLA raises its runtime error type: "No such compile option"
        warnings.warn(f"XLA rejected the attack's fast compilation tier ({FAST_COMPILE}: {e}); compiling the "
                      "optimized tier only (same results, slower first calls)", RuntimeWarning, stacklevel=3)
        return False


def tier(mode: str, signature, rows: int) -> str:
    """Which compilation serves a call of ``rows`` images: ``mode`` as ``AttackConfig.compile`` says
    (``"auto"``: ``"fast"`` on CPU until the program with this ``signature`` has attacked ``FAST_ROWS``
    images in this process, counting this call's; ``"optimized"`` on other backends), and always
    ``"optimized"`` where XLA rejects the fast tier's options (``fast_tier_available``). The tiers give
    bit-identical results, so the choice changes the time a call takes, never its result."""
    if mode == "optimized" or (mode == "fast" and not fast_tier_available()):
        return "optimized"
    if mode == "fast":
        return "fast"
    if jax.default_backend() != "cpu" or not fast_tier_available():
        return "optimized"
    _ATTACKED[signature] = _ATTACKED.get(signature, 0) + rows
    return "fast" if _ATTACKED[signature] <= FAST_ROWS else "optimized"


def attack_loop(logits_fn: Partial, images, targets, shape, cfg, slots: int, tier: str = "optimized",
                rescue: bool = True) -> "Outcome":
    """``_streaming`` compiled in ``tier`` (``TIERS``); ``rescue``: the rescue inside the program (else the
    caller runs ``rescue_failures``)."""
    return _STREAMING[tier](logits_fn, images, targets, shape, cfg, slots, rescue)


def _host_steps(logits_fn, x, targets, state, count: int, gamma: float, shape, cfg, tier, first: int = 0):
    """Walk steps ``first .. count`` of ``refine.walk_step``, each a jitted call from the host (the walk's and
    the rescue's steps: one program, ``count`` and ``gamma`` traced)."""
    for k in range(first, count + 1):
        state = _WALK_STEP[tier](logits_fn, x, targets, jnp.asarray(k, jnp.int32), state, jnp.float32(count),
                                 jnp.float32(gamma), shape=shape, cfg=cfg)
    return state


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def _blocks(n: int, block: int):
    """Row slices of ``block`` rows covering ``n`` rows padded to a multiple of ``block``."""
    return [slice(start, start + block) for start in range(0, _padded(n, block), block)]


def _host_walk(logits_fn, images, targets, z, evals, shape, cfg, slots: int, tier):
    """``refine.walk`` from each example of ``z``, stepped from the host in blocks of ``slots`` rows."""
    n = images.shape[0]
    size = _padded(n, slots)
    xs, zs, ts, es = (storage.pad_rows(a, size) for a in (images, z, targets, evals))
    walked, spent = [], []
    for rows in _blocks(n, slots):
        x, tb = xs[rows], ts[rows]
        state = _WALK_START[tier](logits_fn, x, tb, zs[rows], shape=shape, cfg=cfg)
        state = _host_steps(logits_fn, x, tb, state, cfg.walk_steps, cfg.walk_gamma, shape, cfg, tier)
        zb, eb = _WALK_END[tier](x, zs[rows], es[rows], state, cfg=cfg)
        walked.append(zb)
        spent.append(eb)
    return jnp.concatenate(walked)[:n], jnp.concatenate(spent)[:n]


def rescue_failures(logits_fn: Partial, images, targets, out: "Outcome", shape, cfg, slots: int,
                    tier: str = "optimized") -> "Outcome":
    """``out`` with the examples it failed on searched again (``refine.rescue``: ``cfg.rescue_steps`` steps
    from the clean image), then walked, shortened and verified like any result, all stepped from the host
    on the failures alone, in blocks of ``slots`` rows: an attack with no failure compiles and runs none of
    it. A rescued example replaces the failure; every searched example's ``grad_evals`` counts the search."""
    failed = np.flatnonzero(~np.asarray(out.success))
    if not cfg.rescue_steps or not len(failed):
        return out
    m = len(failed)
    size = _padded(m, slots)
    x, t = (storage.pad_rows(a[failed], size) for a in (images, targets))
    z0 = storage.pad_rows(out.adversarial.reshape(images.shape[0], -1)[failed], size)
    every = jnp.ones((slots,), bool)
    found, spent = [], []
    for rows in _blocks(m, slots):
        state = _RESCUE_START[tier](logits_fn, x[rows], t[rows], z0[rows], shape=shape, cfg=cfg)
        state = _host_steps(logits_fn, x[rows], t[rows], state, cfg.rescue_steps, cfg.rescue_gamma, shape, cfg,
                            tier, first=1)
        zb, eb = _RESCUE_END[tier](x[rows], z0[rows], jnp.zeros((slots,), jnp.int32), state, every, cfg=cfg)
        found.append(zb)
        spent.append(eb)
    z, evals = jnp.concatenate(found), jnp.concatenate(spent)
    if cfg.walk_steps:
        z, evals = _host_walk(logits_fn, x, t, z, evals, shape, cfg, slots, tier)
    c = storage.pad_rows(out.c[failed], size)
    new = _FINISH[tier](logits_fn, x, t, z, c, evals, shape, cfg, slots, walk=False)
    ok = np.asarray(new.success[:m])
    take = failed[ok]

    def merge(old, fresh):
        return old.at[take].set(fresh[:m][ok].reshape((len(take),) + old.shape[1:]))
    merged = Outcome(*(merge(o, f) if name != "grad_evals" else o for name, o, f in zip(Outcome._fields, out, new)))
    return merged._replace(grad_evals=out.grad_evals.at[failed].add(new.grad_evals[:m]))


def attack_stepped(logits_fn: Partial, images, targets, shape, cfg, slots: int, tier: str = "optimized") -> "Outcome":
    """``attack_loop`` with its loop on the host: the same ``_tick``, jitted alone (in ``tier``) and called
    until no slot holds an example (XLA:CPU runs convolutions slower inside a loop body than in a program
    of their own). The same arithmetic, so the same result."""
    carry = _INIT[tier](images, targets, cfg=cfg, slots=slots)
    while bool(_PENDING[tier](carry)):
        carry = _TICK[tier](logits_fn, images, targets, carry, shape=shape, cfg=cfg)
    z, c, evals = carry[1]
    if cfg.walk_steps:  # the walk stepped from the host too, in blocks of ``slots`` rows (the last padded:
        # one compilation; 128-row blocks measured 13% slower on the flax CNN, benchmarks/RESULTS.md)
        z, evals = _host_walk(logits_fn, images, targets, z, evals, shape, cfg, slots, tier)
    return _FINISH[tier](logits_fn, images, targets, z, c, evals, shape, cfg, slots, walk=False)


def has_convolution(logits_fn: Partial, example) -> bool:
    """Whether the model's program (traced on ``example``, a ``ShapeDtypeStruct``) contains a convolution,
    in any nested sub-program (traced once per model function and input shape)."""
    key = (jax.tree.structure(logits_fn), tuple(example.shape), example.dtype)
    if key not in _CONVOLUTIONAL:
        _CONVOLUTIONAL[key] = _walk(jax.make_jaxpr(logits_fn)(example).jaxpr)
    return _CONVOLUTIONAL[key]


_CONVOLUTIONAL: dict = {}  # (model function's tree structure, input shape, dtype) -> has a convolution


def _walk(jaxpr) -> bool:
    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            for v in eqn.params.values():
                for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns") and walk(inner):
                        return True
        return False
    return walk(jaxpr)


def shorten(flat_logits, x, targets, z, cfg):
    """Each perturbation ``z − x`` shortened to the smallest ``s·(z − x)`` that still reaches the target
    (bisection of s, ``cfg.shrink_steps`` forward passes), verified on the exact image returned.

    Returns:
      ``(z, prediction)``: rows where ``z`` does not reach the target come back as ``z`` (clipped to the
      box), with their prediction.
    """
    lo, hi = cfg.box
    r = jnp.clip(z, lo, hi) - x
    ones = jnp.ones((x.shape[0],), x.dtype)

    def probe(i, state):
        # i = 0 checks the perturbation as found (and gives a failure its prediction); each later
        # step halves the bracket [short, long] of lengths with long always verified to succeed
        short, long, first_ok, first_pred, long_pred = state
        s = jnp.where(i == 0, ones, 0.5 * (short + long))
        logits = flat_logits(jnp.clip(x + s[:, None] * r, lo, hi))
        pred = jnp.argmax(logits, -1).astype(targets.dtype)
        ok = refine.leads(logits, targets)
        first_ok = jnp.where(i == 0, ok, first_ok)
        first_pred = jnp.where(i == 0, pred, first_pred)
        short = jnp.where((i > 0) & ~ok, s, short)
        long = jnp.where((i > 0) & ok, s, long)
        long_pred = jnp.where(ok, pred, long_pred)  # the class reached at the longest verified length
        return short, long, first_ok, first_pred, long_pred

    init = (0.0 * ones, ones, jnp.zeros(ones.shape, bool), targets, targets)
    _, scale, ok, pred, reached = jax.lax.fori_loop(0, cfg.shrink_steps + 1, probe, init)
    # the returned image is exactly the one verified: x + long·r where the check succeeded (its class: the
    # target, or an untargeted row's class reached there)
    return jnp.clip(x + jnp.where(ok, scale, 1.0)[:, None] * r, lo, hi), jnp.where(ok, reached, pred)


def finish(flat_logits, x, targets, z, c, evals, shape, cfg, block, walk: bool = True, rescue: bool = True) -> "Outcome":
    """The result: each example the search left unsuccessful searched again from its clean image
    (``cfg.rescue_steps``, ``refine.rescue``; not when ``rescue`` is False: the caller does it on the
    failures alone), each successful one shortened to the boundary and walked along it (``cfg.walk_steps``;
    not when ``walk`` is False: the caller walked it), refined (``cfg.refine``,
    ``intriguing_jax.refine``), shortened once more (``shorten``), and every example re-verified on the
    exact returned image. Runs in blocks of ``block`` rows (memory bounded by the block)."""
    n, d = x.shape
    lo, hi = cfg.box
    size = -(-n // block) * block
    blocks = lambda a: storage.pad_rows(a, size).reshape((-1, block) + a.shape[1:])  # noqa: E731

    def finish(args):
        xb, zb, tb = args
        extra = jnp.zeros(tb.shape, jnp.int32)
        if cfg.rescue_steps and rescue:  # the rows the c search left unsuccessful, searched again from x
            zb, extra = refine.rescue(flat_logits, xb, tb, zb, steps=cfg.rescue_steps, gamma=cfg.rescue_gamma,
                                      box=cfg.box)
        if cfg.walk_steps and walk:  # from the example shortened to the boundary
            zb, more = refine.walk(flat_logits, xb, tb, shorten(flat_logits, xb, tb, zb, cfg)[0],
                                   steps=cfg.walk_steps, gamma=cfg.walk_gamma, box=cfg.box)
            extra = extra + more
        if cfg.refine:
            zb, more = refine.refine(flat_logits, xb, tb, jnp.clip(zb, lo, hi), steps=cfg.refine_steps,
                                     classes=cfg.refine_classes, kappa=cfg.kappa, box=cfg.box)
            extra = extra + more
        return (*shorten(flat_logits, xb, tb, zb, cfg), extra)

    x_adv, pred, extra = jax.lax.map(finish, (blocks(x), blocks(z), blocks(targets)))
    x_adv, pred, evals = x_adv.reshape(size, d)[:n], pred.reshape(-1)[:n], evals + extra.reshape(-1)[:n]
    r = x_adv - x
    return Outcome(
        adversarial=x_adv.reshape((n,) + shape), success=refine.reached(pred, targets),
        l2=jnp.sqrt(jnp.sum(r ** 2, axis=1)), linf=jnp.max(jnp.abs(r), axis=1),
        distortion=jnp.sqrt(jnp.mean(r ** 2, axis=1)), c=c, target=jnp.where(targets >= 0, targets, pred), prediction=pred,
        grad_evals=evals)


@functools.partial(jax.jit, static_argnames=("shape", "cfg"))
def attack_lockstep(logits_fn: Partial, x, targets, shape, cfg) -> "Outcome":
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
    return finish(flat_logits, x, targets, z, jnp.where(trivial, jnp.inf, s.best_c), evals, shape, cfg, n)
