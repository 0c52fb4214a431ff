"""A study of a refinement for max-pooling nets: ALMA's steps (Rony et al. 2021) started from our attack's
result instead of from the clean image.

On the L2-PGD-trained max-pooling ConvNet adv-lib's ALMA (1,000 steps from the clean image) finds
perturbations ~0.8% shorter than ``lbfgs_attack_untargeted``'s (``RESULTS.md``), and our boundary walk (DDN's
globally normalised steps) does not close the gap at 100 steps. ALMA's step differs in two ways: the
objective is ‖r‖₂ plus an augmented-Lagrangian penalty of the difference-of-logits ratio, and the step is
RMSProp's, normalised per pixel (max pooling passes gradient to one pixel of each window, so a globally
normalised step moves few pixels). ``alma_polish`` runs those steps from a given adversarial example, keeping
the shortest adversarial point seen — a candidate for the library's refinement, measured here first
(``benchmarks.attackbench``'s "polish" configurations).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _p2(y, rho, mu):
    """ALMA's penalty-Lagrangian P2 of the constraint value ``y`` (≤ 0: satisfied)."""
    sup = mu * y + mu * rho * y ** 2 + rho ** 2 * y ** 3 / 6
    inf = mu * y / (1 - rho * jnp.minimum(y, 0.0))
    return jnp.where(y >= 0, sup, inf)


def _dlr(logits, labels, tolerance, targeted):
    """The difference-of-logits ratio (Croce & Hein 2020, adv-lib's form), < 0 once the point is adversarial:
    untargeted (``labels``: the true labels) once the label trails the best other class by ``tolerance``;
    targeted (``labels``: the targets) once the target leads every other class by ``tolerance`` (adv-lib adds
    its tolerance the other way there; here both are strict, so < 0 is the attack's own success test)."""
    own = jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]
    other = jnp.max(jnp.where(jax.nn.one_hot(labels, logits.shape[1], dtype=bool), -jnp.inf, logits), 1)
    if targeted:
        top = jax.lax.top_k(logits, 4)[0]
        return (other - own + tolerance) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-8)
    top = jax.lax.top_k(logits, 3)[0]
    return (own - other + tolerance) / (top[:, 0] - top[:, 2] + 1e-8)


_HYPER = ("steps", "lr_init", "lr_reduction", "alpha", "tolerance", "targeted")


def _norm(r):
    return jnp.sqrt(jnp.sum(r.reshape(r.shape[0], -1) ** 2, 1))


class PolishState(NamedTuple):
    """Per-row state of ``alma_polish``."""

    delta: jax.Array  # [N, ...] the current perturbation
    square_avg: jax.Array  # [N, ...] RMSProp's running mean of the squared gradient
    momentum: jax.Array  # [N, ...]
    mu: jax.Array  # [N] the penalty's multiplier
    best: jax.Array  # [N, ...] the shortest adversarial example seen
    best_l2: jax.Array  # [N] its ‖r‖₂ (inf: none yet)


def _start(logits_fn, x, labels, start, targeted) -> PolishState:
    """The polish's state before its first step."""
    prediction = jnp.argmax(logits_fn(start), 1)
    ok = prediction == labels if targeted else prediction != labels
    return PolishState(start - x, jnp.ones_like(x), jnp.zeros_like(x), jnp.ones((x.shape[0],), x.dtype), start,
                       jnp.where(ok, _norm(start - x), jnp.inf))


def _step(logits_fn, x, labels, i, state: PolishState, *, steps, lr_init, lr_reduction, alpha, tolerance,
          targeted) -> PolishState:
    """Step ``i`` of ``alma_polish``: one value-and-gradient."""
    delta, sq, mom, mu, best, best_l2 = state

    def objective(d):  # ALMA's order: μ moves toward P2'(dlr) at this point, then the loss uses it
        dlr = _dlr(logits_fn(x + d), labels, tolerance, targeted)
        new_mu = jax.vmap(jax.grad(_p2))(jax.lax.stop_gradient(dlr), jnp.ones_like(dlr), mu)
        new_mu = jnp.clip(alpha * mu + (1 - alpha) * new_mu, 1e-6, 1e12)
        distance = jnp.sqrt(jnp.sum(d.reshape(d.shape[0], -1) ** 2, 1) + 1e-30)  # differentiable at 0
        return jnp.sum(distance + _p2(dlr, 1.0, new_mu)), (dlr, new_mu)

    (_, (dlr, mu)), g = jax.value_and_grad(objective, has_aux=True)(delta)
    l2 = _norm(delta)
    better = (dlr < 0) & (l2 < best_l2)
    best = jnp.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), x + delta, best)
    best_l2 = jnp.where(better, l2, best_l2)
    lr = lr_init * lr_reduction ** (i / steps)
    sq = alpha * sq + (1 - alpha) * g ** 2
    mom = alpha * mom + g / (jnp.sqrt(sq) + 1e-8)
    delta = jnp.clip(x + delta - lr * mom, 0.0, 1.0) - x
    return PolishState(delta, sq, mom, mu, best, best_l2)


@functools.partial(jax.jit, static_argnames=_HYPER)
def _loop(logits_fn, x, labels, start, **hyper):
    state = jax.lax.fori_loop(0, hyper["steps"], lambda i, st: _step(logits_fn, x, labels, i, st, **hyper),
                              _start(logits_fn, x, labels, start, hyper["targeted"]))
    return state.best, state.best_l2


_jit_start = jax.jit(_start, static_argnames="targeted")
_jit_step = jax.jit(_step, static_argnames=_HYPER)


def alma_polish(logits_fn, x, labels, start, *, steps: int, lr_init: float, lr_reduction: float = 0.01,
                alpha: float = 0.9, tolerance: float = 1e-4, targeted: bool = False, execution: str = "loop"):
    """``steps`` of ALMA's L2 update started at ``start`` (adversarial examples of ``x``), the
    learning rate decaying exponentially from ``lr_init`` to ``lr_init * lr_reduction``; per row the
    shortest adversarial point seen (``start`` where none is shorter).

    Args:
      logits_fn: ``[N, ...] -> [N, K]`` (a ``jax.tree_util.Partial``); x: clean images in [0, 1]; labels:
        ``[N]`` the true labels, or with ``targeted`` the targets; start: ``[N, ...]`` the examples to polish.
      steps: value-and-gradient evaluations; lr_init: the first step's per-pixel RMSProp step.
      execution: ``"loop"`` (one XLA program) or ``"stepped"`` (one jitted step per Python iteration: on
        XLA:CPU convolutions can run slower inside a loop body, PITFALLS). The same steps; XLA may compile them
        differently (‖r‖₂ within 0.004 of each other on the flax CNN, identical on the others: RESULTS.md).

    Returns:
      ``(adversarial [N, ...], l2 [N])`` (l2 inf where neither ``start`` nor any step is adversarial).

    References:
      Rony et al. 2021, "Augmented Lagrangian adversarial attacks" (ALMA; adv-lib's defaults: P2, μ = ρ = 1,
      α = 0.9, ρ never grows once an adversarial point was found, as here from the start).
    """
    hyper = dict(steps=steps, lr_init=lr_init, lr_reduction=lr_reduction, alpha=alpha, tolerance=tolerance,
                 targeted=targeted)
    if execution == "loop":
        return _loop(logits_fn, x, labels, start, **hyper)
    if execution != "stepped":
        raise ValueError(f"execution must be 'loop' or 'stepped', got {execution!r}")
    state = _jit_start(logits_fn, x, labels, start, targeted)
    for i in range(steps):
        state = _jit_step(logits_fn, x, labels, jnp.asarray(i, jnp.float32), state, **hyper)
    return state.best, state.best_l2


def main(argv=None):
    """Times ``alma_polish``'s two executions side by side (alternating repeats, one pinned core) from
    ``lbfgs_attack_untargeted``'s result on matrix models; prints each model's times, the ratio stepped /
    loop and the largest difference of their ‖r‖₂; writes ``--out``."""
    import argparse
    import time

    import numpy as np
    from jax.tree_util import Partial

    from benchmarks import matrix
    from benchmarks.attack_speed import _pin
    from intriguing_jax import attacks, data, provenance, storage, train
    p = argparse.ArgumentParser(description="alma_polish: one XLA loop vs host-stepped, side by side")
    p.add_argument("--models", nargs="+", default=["pgd-convnet", "flax-cnn", "relu-mlp"], choices=list(matrix.MATRIX))
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--out", default="benchmarks/polish_execution.json")
    args = p.parse_args(argv)
    _pin(1)
    t_start = time.time()
    mnist = data.load_mnist()
    rows = []
    for name in args.models:
        model, params, x, _ = matrix.problem(name, mnist, args.workdir, args.images)
        y = np.asarray(train.predict(model.apply, params, x))
        fn = Partial(jax.jit(model.apply), params)
        start = attacks.lbfgs_attack_untargeted(fn, x, y).adversarial
        walls, l2 = {"loop": [], "stepped": []}, {}
        for _ in range(args.repeats):
            for ex in walls:
                t0 = time.perf_counter()
                _, l2[ex] = jax.block_until_ready(alma_polish(fn, jnp.asarray(x), jnp.asarray(y, jnp.int32), start,
                                                              steps=args.steps, lr_init=args.lr, execution=ex))
                walls[ex].append(time.perf_counter() - t0)
        steady = {ex: float(np.median(w[1:])) for ex, w in walls.items()}
        rows.append({"model": name, "walls_s": walls, "steady_median_s": steady,
                     "stepped_over_loop": steady["stepped"] / steady["loop"],
                     "max_l2_difference": float(np.abs(np.asarray(l2["loop"]) - np.asarray(l2["stepped"])).max())})
        print(f"{name}: loop {walls['loop']}, stepped {walls['stepped']} s; steady stepped / loop "
              f"{rows[-1]['stepped_over_loop']:.2f}; max |Δ‖r‖₂| {rows[-1]['max_l2_difference']:.2g}", flush=True)
    storage.write_json(args.out, {"rows": rows, "images": args.images, "steps": args.steps, "lr": args.lr,
                                  "provenance": provenance.record(0, time.time() - t_start, threads=1)})


if __name__ == "__main__":
    main()
