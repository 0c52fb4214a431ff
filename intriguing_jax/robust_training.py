"""Known-good training recipes that make a net harder to fool: the positive controls of adversarial training.

Each is a training loss for ``train.fit_population`` (hashable, so a population compiles once), with its
strength a per-member number read from the member's settings, so that several strengths and seeds
train as one population:

- ``FGSMLoss``: α·CE(x) + (1 − α)·CE(x + ε·sign ∇ₓCE(x)), examples made fresh for every minibatch (member
  setting ``epsilon``; Goodfellow, Shlens & Szegedy 2015, "Explaining and harnessing adversarial
  examples", Sec. 6: α = 0.5, ε = 0.25 on MNIST).
- ``L2AdversarialLoss``: the same with the L2 step x + ε·∇ₓCE/‖∇ₓCE‖₂ (``epsilon`` in L2 over 784 pixels).
- ``L2PGDLoss``: CE at the worst point of the L2 ball found by projected gradient steps (Madry et al. 2018);
  the benchmarks' defended models.
- ``VATLoss``: CE(x) + α·KL(p(·|x) ‖ p(·|x + r_adv)), r_adv of L2 norm ε found by one power iteration from a
  random direction (``epsilon``; Miyato et al. 2018, "Virtual adversarial training", ε ≈ 2 on MNIST).
- ``IBPLoss``: κ·CE(x) + (1 − κ)·CE of the worst-case logits that interval bound propagation proves over
  the L2 ball of radius ε (Gowal et al. 2018, "On the effectiveness of interval bound propagation for
  training verifiably robust models"; the first layer's bound exact for the L2 ball, then intervals; the
  last layer's margins bounded directly, their correlations kept): certified training, for registry-style
  MLPs (member setting ``epsilon``).
- ``DropoutLoss``: the MLP's cross-entropy with inverted dropout on its input and hidden units (member
  settings ``dropout_input``, ``dropout_hidden``; Hinton et al. 2012, Srivastava et al. 2014: 0.2 / 0.5).

Perturbed images are clipped to [0, 1] (valid images; the papers did not clip). Every loss adds the
model spec's per-layer weight decay, as ``train.ClassifierLoss`` does, so a control differs from the
baseline only in what it adds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from intriguing_jax import train
from intriguing_jax.models import Model


def _ce(model: Model, p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()


def _decay(model: Model, p, decay: str, member) -> jax.Array:
    return member["decay_scale"] * train.weight_decay(p, model.spec.weight_decay, decay)


def _input_gradient(model: Model, p, x, y):
    """∇ₓ of the summed cross-entropy (per example), held constant for the training gradient."""
    return jax.lax.stop_gradient(jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, z), y).sum())(x))


@dataclasses.dataclass(frozen=True)
class FGSMLoss:
    """α·CE(x) + (1 − α)·CE(clip(x + ε·sign ∇ₓCE)) + weight decay; ε = the member's ``epsilon``."""

    model: Model
    decay: str = train.TrainConfig.decay
    alpha: float = 0.5

    def step(self, g):
        return jnp.sign(g)

    def __call__(self, p, batch, member, key):
        x, y = batch
        x_adv = jnp.clip(x + member["epsilon"] * self.step(_input_gradient(self.model, p, x, y)), 0.0, 1.0)
        return (self.alpha * _ce(self.model, p, x, y) + (1 - self.alpha) * _ce(self.model, p, x_adv, y)
                + _decay(self.model, p, self.decay, member))


@dataclasses.dataclass(frozen=True)
class L2AdversarialLoss(FGSMLoss):
    """α·CE(x) + (1 − α)·CE(clip(x + ε·g/‖g‖₂)) + weight decay, g = ∇ₓCE; ε = the member's ``epsilon``."""

    def step(self, g):
        return _unit(g)


@dataclasses.dataclass(frozen=True)
class L2PGDLoss:
    """CE(x_adv) + weight decay: x_adv maximises the cross-entropy over ‖x_adv − x‖₂ ≤ ε ∩ [0, 1] by
    ``steps`` projected steps of length ``step_scale``·ε along the normalised gradient, from a random point
    of the ball (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks";
    ε = the member's ``epsilon``, in L2 over all pixels). The defended models of the attack benchmarks."""

    model: Model
    decay: str = train.TrainConfig.decay
    steps: int = 7
    step_scale: float = 0.25

    def __call__(self, p, batch, member, key):
        x, y = batch
        eps = member["epsilon"]

        def project(z):
            d = z - x
            norm = jnp.linalg.norm(d.reshape(len(d), -1), axis=1).reshape((-1,) + (1,) * (d.ndim - 1))
            return jnp.clip(x + d * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-12)), 0.0, 1.0)

        start = project(x + eps * _unit(jax.random.normal(key, x.shape)) * jax.random.uniform(key, (len(x),) + (1,) * (x.ndim - 1)))
        x_adv = jax.lax.fori_loop(0, self.steps, lambda _, z: project(
            z + self.step_scale * eps * _unit(_input_gradient(self.model, p, z, y))), start)
        return _ce(self.model, p, jax.lax.stop_gradient(x_adv), y) + _decay(self.model, p, self.decay, member)


def _kl(logits_p, logits_q):
    """Mean KL(p ‖ q) of two batches of logits."""
    lp, lq = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1).mean()


def _unit(v):
    flat = v.reshape(len(v), -1)
    return v / jnp.maximum(jnp.linalg.norm(flat, axis=1), 1e-12).reshape((-1,) + (1,) * (v.ndim - 1))


@dataclasses.dataclass(frozen=True)
class VATLoss:
    """CE(x) + α·KL(p(x) ‖ p(x + r_adv)) + weight decay, ‖r_adv‖₂ = ε (the member's ``epsilon``), r_adv by
    ``power_iterations`` steps from a random direction (finite difference ξ)."""

    model: Model
    decay: str = train.TrainConfig.decay
    alpha: float = 1.0
    xi: float = 1e-6
    power_iterations: int = 1

    def __call__(self, p, batch, member, key):
        x, y = batch
        logits = self.model.apply(p, x)
        target = jax.lax.stop_gradient(logits)
        d = _unit(jax.random.normal(key, x.shape, x.dtype))
        for _ in range(self.power_iterations):
            d = _unit(jax.grad(lambda r: _kl(target, self.model.apply(p, x + r)))(self.xi * d))
        r_adv = jax.lax.stop_gradient(member["epsilon"] * d)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + self.alpha * _kl(target, self.model.apply(p, jnp.clip(x + r_adv, 0.0, 1.0))) + _decay(
            self.model, p, self.decay, member)


def _dense_layers(p) -> list[str]:
    return sorted((k for k in p["params"] if k.startswith("dense_")), key=lambda k: int(k.split("_")[1]))


def _activation(model: Model):
    return {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}[getattr(model.spec.module, "activation", "sigmoid")]


def _safe_norm(a, axis):
    """‖a‖₂ along ``axis``, with a finite gradient where a column is zero (the label's own margin row)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=axis), 1e-30))


def ibp_worst_logits(model: Model, p, x, y, epsilon) -> jax.Array:
    """Logits no point of the L2 ball ‖δ‖₂ ≤ ε around ``x`` can beat, by interval bound propagation through a
    registry-style MLP (``dense_0 .. dense_L`` with a monotone activation): entry j ≠ y is an upper bound of
    z_j − z_y over the ball, entry y is 0. Differentiable in ``p`` (certified training). Sound: the bounds
    hold for every image in the ball, the pixel box ignored (a larger set).

    Args:
      model, p: the MLP and its parameters. x: ``[B, 784]``. y: ``[B]`` labels. epsilon: the L2 radius.
    """
    layers, act = _dense_layers(p), _activation(model)
    w0, b0 = p["params"][layers[0]]["kernel"], p["params"][layers[0]]["bias"]
    x = x.reshape(len(x), -1)
    if len(layers) == 1:  # softmax regression: the margins' bound is exact over the ball
        lo = hi = None
        h_c, h_r, w_last, b_last = x, None, w0, b0
    else:
        c, r = x @ w0 + b0, epsilon * _safe_norm(w0, axis=0)  # exact for the L2 ball
        for name in layers[1:-1]:
            lo, hi = act(c - r), act(c + r)
            w, b = p["params"][name]["kernel"], p["params"][name]["bias"]
            c, r = (lo + hi) / 2 @ w + b, (hi - lo) / 2 @ jnp.abs(w)
        lo, hi = act(c - r), act(c + r)
        h_c, h_r = (lo + hi) / 2, (hi - lo) / 2
        w_last, b_last = p["params"][layers[-1]]["kernel"], p["params"][layers[-1]]["bias"]
    # margins z_j − z_y = (w_j − w_y)·h + (b_j − b_y), bounded as one linear map (elision of the last layer)
    w_diff = w_last[None, :, :] - jnp.take(w_last, y, axis=1).T[:, :, None]  # [B, H, K]
    b_diff = b_last[None, :] - jnp.take(b_last, y)[:, None]
    centre = jnp.einsum("bh,bhk->bk", h_c, w_diff) + b_diff
    radius = (epsilon * _safe_norm(w_diff, axis=1) if h_r is None
              else jnp.einsum("bh,bhk->bk", h_r, jnp.abs(w_diff)))
    return centre + radius  # 0 at j = y: w_diff and b_diff vanish there


@dataclasses.dataclass(frozen=True)
class IBPLoss:
    """κ·CE(x) + (1 − κ)·CE(worst-case logits over the L2 ball, ``ibp_worst_logits``) + weight decay; ε = the
    member's ``epsilon``, κ its ``kappa`` where the member has one (``EpsilonRamp`` moves both), else
    ``kappa``. Certified training (Gowal et al. 2018) for registry-style MLPs: from the start at full ε it
    does not train (FC 784-100-100-10 ReLU at ε = 0.5 on MNIST, 20 epochs: 88.7% test error), so ramp ε."""

    model: Model
    decay: str = train.TrainConfig.decay
    kappa: float = 0.5

    def __call__(self, p, batch, member, key):
        x, y = batch
        kappa = member.get("kappa", self.kappa)
        worst = ibp_worst_logits(self.model, p, x, y, member["epsilon"])
        robust = optax.softmax_cross_entropy_with_integer_labels(worst, y).mean()
        return kappa * _ce(self.model, p, x, y) + (1 - kappa) * robust + _decay(self.model, p, self.decay, member)


class EpsilonRamp(train.Hook):
    """Certified training's schedule (Gowal et al. 2018, Sec. 4): ``warmup`` steps of plain training (ε = 0,
    κ = 1), then ε rising linearly to each member's target and κ falling to ``kappa`` over ``ramp`` steps,
    then both held. A ``train.Hook`` for ``train.fit_population(..., hook=...)``; the members' settings
    must hold ``epsilon`` and ``kappa``."""

    def __init__(self, target, warmup: int, ramp: int, kappa: float = 0.5):
        self.target, self.warmup, self.ramp, self.kappa = jnp.asarray(target, jnp.float32), warmup, ramp, kappa

    def fraction(self, step: int) -> float:
        return min(1.0, max(0.0, (step - self.warmup) / max(self.ramp, 1)))

    def before_step(self, step, key, params, extra):
        f = self.fraction(step)
        return {**extra, "epsilon": self.target * f, "kappa": jnp.full_like(self.target, 1.0 - (1.0 - self.kappa) * f)}


@dataclasses.dataclass(frozen=True)
class DropoutLoss:
    """Cross-entropy of the MLP with inverted dropout (keep-probability 1 − rate) on its input
    (``dropout_input``) and on each hidden layer's output (``dropout_hidden``) + weight decay. Registry MLPs
    only (dense layers ``dense_0 .. dense_L``); evaluation uses the plain model, as trained weights need no
    rescaling."""

    model: Model
    decay: str = train.TrainConfig.decay

    def __call__(self, p, batch, member, key):
        x, y = batch
        act, layers = _activation(self.model), _dense_layers(p)

        def drop(h, rate, k):
            keep = jax.random.bernoulli(k, 1.0 - rate, h.shape)
            return jnp.where(keep, h / (1.0 - rate), 0.0)
        h = drop(x.reshape(len(x), -1), member["dropout_input"], jax.random.fold_in(key, 0))
        for i, name in enumerate(layers):
            h = h @ p["params"][name]["kernel"] + p["params"][name]["bias"]
            if i < len(layers) - 1:
                h = drop(act(h), member["dropout_hidden"], jax.random.fold_in(key, i + 1))
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean() + _decay(self.model, p, self.decay, member)
