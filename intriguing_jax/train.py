"""Training with optax: one training loop (``run_epochs``: a jitted step per minibatch, a ``Hook`` for
extra data such as adversarial pools), the paper's per-layer weight decay under a stated convention,
explicit PRNG keys, and autoencoder pre-training for AE400-10.

Our choices where the paper is silent (Sec. 2 gives no optimiser, epochs or initialisation), chosen by the
recorded study in ``experiments/training_study.py`` (results/training_study.md): Adam with a
cosine-decayed learning rate from 1e-2 (MLPs; 1e-3 for the ConvNet), batch 128, Flax's default
(LeCun-normal) initialisation, the epoch count in each ``ModelSpec`` (passes over the full training set); the paper's λ applied as λ/2·Σw² beside the mean cross-entropy (the one
convention that matches all three FC10 rows of Table 1 best); AE400-10's sparse autoencoder trained by
full-batch L-BFGS (ρ = 0.1, β = 3, λ = 3e-3).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from intriguing_jax import checkpoint, models, validate
from intriguing_jax.data import Split
from intriguing_jax.models import Model

log = logging.getLogger(__name__)


DECAY_CONVENTIONS = ("per_unit", "sum", "half_sum")
SCHEDULES = ("cosine", "constant", "step")
INITIALISATIONS = ("lecun_normal", "glorot_uniform", "he_normal")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (the paper gives no optimiser, schedule or epochs).

    Attributes:
      epochs, learning_rate: None: the model spec's default (``ModelSpec.epochs``, ``.learning_rate``).
        batch_size: minibatch size.
      optimizer: ``"adam"`` or ``"momentum"`` (SGD with Nesterov momentum 0.9).
      schedule: the learning rate over the run: ``"cosine"`` (decayed from the peak to 0), ``"constant"``,
        ``"step"`` (×0.1 after half and after three quarters of the steps).
      init: the weight matrices' initialisation: ``"lecun_normal"`` (Flax's default), ``"glorot_uniform"``,
        ``"he_normal"``; biases start at 0.
      decay: how the spec's per-layer λ is applied to a layer with k units, beside the *mean*
        cross-entropy: ``"per_unit"`` λ·Σw²/k (the paper's formula as written), ``"sum"`` λ·Σw²,
        ``"half_sum"`` λ/2·Σw² (the classic weight-decay convention).
      ae_*: AE400-10's sparse autoencoder: ``ae_solver`` ``"adam"`` (``ae_epochs`` of minibatches) or
        ``"lbfgs"`` (full-batch L-BFGS, ``ae_iterations`` on the first ``ae_images`` training images);
        target mean activation ρ (``ae_sparsity``), β on Σ KL(ρ ‖ ρ̂_j) (``ae_sparsity_weight``), λ on
        both layers' weights (``ae_weight_decay``, applied by ``decay``).
    """

    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float | None = None
    optimizer: str = "adam"
    decay: str = "half_sum"
    ae_epochs: int = 15
    ae_sparsity: float = 0.1
    ae_sparsity_weight: float = 3.0
    ae_weight_decay: float = 3e-3
    ae_solver: str = "lbfgs"
    ae_iterations: int = 400
    ae_images: int = 10000
    schedule: str = "cosine"
    init: str = "lecun_normal"

    def __post_init__(self):
        if self.optimizer not in ("adam", "momentum"):
            raise ValueError(f"optimizer must be 'adam' or 'momentum', got {self.optimizer!r}")
        if self.decay not in DECAY_CONVENTIONS:
            raise ValueError(f"decay must be one of {DECAY_CONVENTIONS}, got {self.decay!r}")
        if self.ae_solver not in ("adam", "lbfgs"):
            raise ValueError(f"ae_solver must be 'adam' or 'lbfgs', got {self.ae_solver!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.init not in INITIALISATIONS:
            raise ValueError(f"init must be one of {INITIALISATIONS}, got {self.init!r}")

    def for_model(self, spec, share: float = 1.0, dataset: str = "mnist") -> "TrainConfig":
        """This config with the model spec's defaults filled in (``epochs``, ``learning_rate``; on a dataset
        other than MNIST its recipe's, ``models.recipe``): what a run of ``spec`` uses, and what caches of
        such runs are keyed by (``zoo.config_key``).

        Args:
          spec: the model's ``ModelSpec``.
          share: the fraction of the full training set the run trains on (``data.TRAINING_SHARE``). The
            spec's epochs count passes over the full set, so a run on half of it (the paper's P1, P2) takes
            twice as many passes: the same number of optimiser steps (training study fc6). An explicit
            ``epochs`` is taken as given.
          dataset: the dataset the run trains on (``Split.dataset``).
        """
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        spec = models.recipe(spec, dataset)
        epochs = self.epochs if self.epochs is not None else max(1, round(spec.epochs / share))
        return dataclasses.replace(self, epochs=epochs, learning_rate=self.learning_rate or spec.learning_rate)

    @classmethod
    def smoke(cls) -> "TrainConfig":
        return cls(epochs=2, batch_size=64, ae_epochs=1, ae_iterations=10)


def weight_decay(params, decay: dict[str, float], convention: str = "per_unit") -> jax.Array:
    """Σ_layers λ_layer · Σ w² / k (``"per_unit"``, k = the layer's number of units), λ·Σw² (``"sum"``) or
    λ/2·Σw² (``"half_sum"``); kernels only."""
    total = jnp.zeros((), jnp.float32)
    for layer, lam in decay.items():
        kernel = params["params"][layer]["kernel"]
        scale = {"per_unit": 1 / kernel.shape[-1], "sum": 1.0, "half_sum": 0.5}[convention]
        total = total + lam * scale * jnp.sum(kernel ** 2)
    return total


def learning_rate_schedule(schedule: str, steps: int, peak: float) -> optax.Schedule:
    """The rate at each step of a run of ``steps`` steps (``TrainConfig.schedule``)."""
    steps = max(steps, 1)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(peak, steps)
    if schedule == "constant":
        return optax.constant_schedule(peak)
    if schedule == "step":
        return optax.piecewise_constant_schedule(peak, {steps // 2: 0.1, 3 * steps // 4: 0.1})
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


@functools.lru_cache(maxsize=64)
def optimizer(cfg: TrainConfig, steps: int, learning_rate: float,
              frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """``cfg.optimizer`` with peak rate ``learning_rate`` on ``cfg.schedule`` over ``steps`` steps; the
    top-level layers named in ``frozen`` get no updates. The same arguments give the same object, so a
    jitted step over it compiles once per process."""
    lr = learning_rate_schedule(cfg.schedule, steps, learning_rate)
    tx = optax.adam(lr) if cfg.optimizer == "adam" else optax.sgd(lr, momentum=0.9, nesterov=True)
    if not frozen:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                 functools.partial(_freeze_labels, frozen))


def initial_params(model: Model, key: jax.Array, cfg: TrainConfig):
    """``model``'s initial weights: Flax's (LeCun-normal kernels, zero biases), or with every kernel drawn
    again by ``cfg.init`` (fan-in and fan-out of dense and convolution kernels alike)."""
    params = model.init(key)
    if cfg.init == "lecun_normal":
        return params
    draw = {"glorot_uniform": jax.nn.initializers.glorot_uniform(),
            "he_normal": jax.nn.initializers.he_normal()}[cfg.init]
    layers = params["params"]
    keys = jax.random.split(jax.random.fold_in(key, 1), len(layers))
    return {**params, "params": {name: {**layer, "kernel": draw(k, layer["kernel"].shape, layer["kernel"].dtype)}
                                 for k, (name, layer) in zip(keys, layers.items())}}


def cross_entropy(logits, labels) -> jax.Array:
    """Mean softmax cross-entropy of ``logits [N, K]`` against integer ``labels [N]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _freeze_labels(frozen: tuple[str, ...], params):
    return {"params": {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "train", v)
                       for k, v in params["params"].items()}}


class TrainState(NamedTuple):
    """What the training loop carries: weights, optimiser state and the hook's extra data (or None)."""

    params: Any
    opt_state: Any
    extra: Any = None


def same_epoch_keys(key: jax.Array, epoch: int) -> tuple[jax.Array, jax.Array]:
    """``(shuffle key, step key)`` of an epoch, both ``fold_in(key, epoch)``; each step's key is
    ``fold_in(step key, step)``."""
    k = jax.random.fold_in(key, epoch)
    return k, k


class Hook:
    """Extra training data beside each clean minibatch (e.g. adversarial pools). The base class adds none.

    ``extra`` (any pytree) is an argument of the jitted step, passed to the loss; ``before_step`` may
    replace it between steps on the host (e.g. refresh a pool against the current weights).
    """

    epoch_keys = staticmethod(same_epoch_keys)  # (key, epoch) -> (shuffle key, step key); a plain function

    def before_step(self, step: int, key: jax.Array, params, extra):
        """Called before global step ``step`` (from 0) with its key; returns the extra data to use. In a
        population, ``key`` holds the members' step keys and ``params`` and ``extra`` their member axis."""
        return extra

    def refreshes(self) -> bool:
        """Whether ``before_step`` does anything (a population then gets its members' step keys each step)."""
        return type(self).before_step is not Hook.before_step


def run_epochs(loss_fn: Callable, state: TrainState, tx: optax.GradientTransformation, data: tuple, key,
               epochs: int, batch_size: int, *, hook: Hook | None = None, start_epoch: int = 0,
               on_epoch: Callable[[int, TrainState, float], None] | None = None,
               population: bool = False, on_device: bool = False) -> tuple[TrainState, list]:
    """The training loop: epochs ``start_epoch .. epochs − 1`` of shuffled minibatches, one jitted
    (buffer-donating) step each.

    Args:
      loss_fn: ``(params, batch, extra, key) -> scalar``; ``batch`` is the tuple of ``data`` rows of one
        minibatch, ``extra`` the hook's data, ``key`` the step's PRNG key.
      state: initial ``TrainState`` (``opt_state=None``: ``tx.init(params)``).
      tx: the optax optimiser. data: arrays with the same number of rows (e.g. images, labels).
      key: PRNG key of the whole run (shuffling and step keys, by ``hook.epoch_keys``).
      epochs, batch_size: the schedule (the last partial minibatch of an epoch is dropped).
      hook: extra data and its refresh (``Hook``); None: plain training.
      start_epoch: resume from this epoch (``state`` as saved after the previous one).
      on_epoch: called after each epoch with ``(epoch, state, mean loss)`` (progress, evaluation,
        checkpoints).
      population: train M members at once: ``key`` holds M keys, every leaf of ``state.params`` and
        ``state.opt_state`` a leading member axis, ``state.extra`` each member's settings (a dict of
        ``[M]``-leading arrays: ``learning_rate`` multiplies the member's updates, the loss reads the
        others, e.g. a member's pools). One jitted step advances every member on its own minibatch (its
        own shuffle and keys, as if trained alone). A hook sees all members at once.
      on_device: a population's epoch as one ``lax.scan`` of the same step (one dispatch per epoch: for
        accelerators and MLPs; XLA:CPU runs convolutions slower inside a loop body). Not with a hook
        that refreshes its data between steps.

    Returns:
      ``(final state, mean loss of each epoch run)`` (a population: a list of M losses per epoch).

    ``loss_fn`` and ``tx`` are static arguments of the jitted step (hashed): pass the same objects (e.g.
    ``optimizer``'s memoised ones, a frozen dataclass as the loss) and a second run compiles nothing.

    Not one ``lax.scan`` per epoch: XLA:CPU runs convolutions inside a loop body ~13x slower than the
    same step jitted on its own (measured here: ConvNet 1.9 s vs 0.15 s per step of 128).
    """
    hook = hook or Hook()
    if on_device and hook.refreshes():
        raise ValueError("on_device runs a whole epoch on the device: a hook that refreshes between steps needs "
                         "the host-stepped loop")
    n = len(data[0])
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the number of training examples {n}")
    data = tuple(jnp.asarray(d) for d in data)
    params = jax.tree.map(jnp.array, state.params)  # our own copy: the step donates its buffers
    init = jax.vmap(tx.init) if population else tx.init
    opt_state = init(params) if state.opt_state is None else jax.tree.map(jnp.array, state.opt_state)
    extra = state.extra
    history = []
    for e in range(start_epoch, epochs):
        if population:
            step_keys, perm = _population_order(key, e, n, steps, batch_size, epoch_keys=hook.epoch_keys)
            if on_device:
                params, opt_state, losses = _population_epoch(params, opt_state, extra, data, perm, step_keys,
                                                              loss_fn=loss_fn, tx=tx)
            else:
                losses = []
                for i in range(steps):
                    if hook.refreshes():
                        extra = hook.before_step(e * steps + i, _fold_each(step_keys, i), params, extra)
                    params, opt_state, loss = _population_step(params, opt_state, extra, data, perm[:, i], step_keys,
                                                               i, loss_fn=loss_fn, tx=tx)
                    losses.append(loss)
            history.append([float(v) for v in jnp.mean(jnp.stack(list(losses)), axis=0)])
            if on_epoch is not None:
                on_epoch(e, TrainState(params, opt_state, extra), history[-1])
            continue
        shuffle_key, step_key = hook.epoch_keys(key, e)
        perm = _epoch_order(shuffle_key, n, steps, batch_size)
        losses = []
        for i in range(steps):
            skey = jax.random.fold_in(step_key, i)
            extra = hook.before_step(e * steps + i, skey, params, extra)
            params, opt_state, loss = _train_step(params, opt_state, extra, data, perm[i], skey,
                                                  loss_fn=loss_fn, tx=tx)
            losses.append(loss)
        history.append(float(jnp.mean(jnp.stack(losses))))
        if on_epoch is not None:
            on_epoch(e, TrainState(params, opt_state, extra), history[-1])
    return TrainState(params, opt_state, extra), history


# the data is an argument, not a closed-over constant: a constant of the training set's size makes every
# compilation seconds slower
@functools.partial(jax.jit, donate_argnums=(0, 1), static_argnames=("loss_fn", "tx"))
def _train_step(params, opt_state, extra, data, idx, key, *, loss_fn, tx):
    loss, grads = jax.value_and_grad(loss_fn)(params, tuple(d[idx] for d in data), extra, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _epoch_order(key, n: int, steps: int, batch_size: int):
    """An epoch's minibatch indices ``[steps, batch_size]`` (a shuffle; the last partial batch dropped)."""
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


@functools.partial(jax.jit, static_argnums=(2, 3, 4), static_argnames=("epoch_keys",))
def _population_order(keys, epoch, n: int, steps: int, batch_size: int, *, epoch_keys=same_epoch_keys):
    """Each member's step key and minibatch indices ``[M, steps, batch_size]`` of an epoch, drawn by
    ``epoch_keys`` (the hook's) as ``run_epochs`` draws them for one model."""
    shuffle_keys, step_keys = jax.vmap(epoch_keys, (0, None))(keys, epoch)
    return step_keys, jax.vmap(lambda k: _epoch_order(k, n, steps, batch_size))(shuffle_keys)


@jax.jit
def _fold_each(keys, i):
    """Each member's key of step ``i`` (``fold_in(step key, i)``, as the step draws it)."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, i)


def _members_step(params, opt_state, settings, data, idx, epoch_keys, step, loss_fn, tx):
    """One optimiser step of every member (vmapped), each on its own minibatch ``idx [M, B]``."""
    def one(p, s, member, i, k):
        loss, grads = jax.value_and_grad(loss_fn)(p, tuple(d[i] for d in data), member, jax.random.fold_in(k, step))
        updates, s = tx.update(grads, s, p)
        updates = jax.tree.map(lambda u: member["learning_rate"] * u, updates)
        return optax.apply_updates(p, updates), s, loss
    return jax.vmap(one)(params, opt_state, settings, idx, epoch_keys)


_population_step = jax.jit(_members_step, donate_argnums=(0, 1), static_argnames=("loss_fn", "tx"))


@functools.partial(jax.jit, donate_argnums=(0, 1), static_argnames=("loss_fn", "tx"))
def _population_epoch(params, opt_state, settings, data, perm, epoch_keys, *, loss_fn, tx):
    """A whole epoch of ``_members_step`` as one ``lax.scan`` on the device (``perm [M, steps, B]``)."""
    def body(carry, step):
        p, s = carry
        p, s, loss = _members_step(p, s, settings, data, perm[:, step], epoch_keys, step, loss_fn, tx)
        return (p, s), loss
    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(perm.shape[1]))
    return params, opt_state, losses


def pretrain_autoencoder(model: Model, train: Split, key, cfg: TrainConfig, on_epoch=None):
    """Sparse autoencoder: squared error + β·KL sparsity + weight decay, by Adam minibatches or full-batch
    L-BFGS (``cfg.ae_solver``). Returns ``(encoder params, loss history)``.

    References:
      Ng, "Sparse autoencoder" (CS294A lecture notes, 2011): the objective and the L-BFGS recipe.
    """
    ae = model.spec.autoencoder
    init_key, loop_key = jax.random.split(key)
    params = ae.init(init_key, jnp.zeros((1, train.images.shape[1]), jnp.float32))
    objective = _SparseAutoencoderLoss(ae, cfg.ae_sparsity, cfg.ae_sparsity_weight, cfg.ae_weight_decay, cfg.decay)
    if cfg.ae_solver == "lbfgs":
        params, hist = _lbfgs(objective, params, jnp.asarray(train.images[: cfg.ae_images]), cfg.ae_iterations)
        return params["params"]["dense_0"], hist
    steps = cfg.ae_epochs * (len(train) // cfg.batch_size)
    tx = _autoencoder_adam(cfg.learning_rate or 1e-3, steps)
    state, hist = run_epochs(_OnImages(objective), TrainState(params, None), tx, (train.images,), loop_key,
                             cfg.ae_epochs, cfg.batch_size, on_epoch=_progress(on_epoch))
    return state.params["params"]["dense_0"], hist


@dataclasses.dataclass(frozen=True)
class _SparseAutoencoderLoss:
    """``(params, x) -> scalar``: squared reconstruction error + β·Σ KL(ρ ‖ ρ̂_j) + weight decay (hashable:
    a static argument of the jitted solvers)."""

    ae: Any
    rho: float
    beta: float
    lam: float
    decay: str

    def __call__(self, p, x):
        code, recon = self.ae.apply(p, x)
        rho, rho_hat = self.rho, jnp.clip(code.mean(0), 1e-6, 1 - 1e-6)
        kl = jnp.sum(rho * jnp.log(rho / rho_hat) + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat)))
        mse = 0.5 * jnp.sum((recon - x) ** 2, axis=1).mean()
        return mse + self.beta * kl + weight_decay(p, {"dense_0": self.lam, "decoder": self.lam}, self.decay)


@dataclasses.dataclass(frozen=True)
class _OnImages:
    """A ``run_epochs`` loss from an ``(params, images) -> scalar`` objective."""

    objective: Callable

    def __call__(self, p, batch, extra, key):
        return self.objective(p, batch[0])


@functools.lru_cache(maxsize=16)
def _autoencoder_adam(peak: float, steps: int) -> optax.GradientTransformation:
    return optax.adam(optax.cosine_decay_schedule(peak, steps))


_LBFGS = optax.lbfgs()


@functools.partial(jax.jit, static_argnames=("objective", "length"))
def _lbfgs_chunk(params, opt_state, x, *, objective, length: int):
    value_and_grad = optax.value_and_grad_from_state(lambda p: objective(p, x))

    def step(carry, _):
        params, opt_state = carry
        value, grad = value_and_grad(params, state=opt_state)
        updates, opt_state = _LBFGS.update(grad, opt_state, params, value=value, grad=grad,
                                           value_fn=lambda p: objective(p, x))
        return (optax.apply_updates(params, updates), opt_state), value
    return jax.lax.scan(step, (params, opt_state), None, length=length)


def _lbfgs(objective, params, x, iterations: int, chunk: int = 50):
    """Full-batch ``optax.lbfgs`` (zoom line search) on ``objective(params, x)`` for exactly ``iterations``
    steps, scanned ``chunk`` at a time (the last chunk shorter); the loss after each chunk."""
    opt_state, hist = _LBFGS.init(params), []
    for start in range(0, iterations, chunk):
        (params, opt_state), values = _lbfgs_chunk(params, opt_state, x, objective=objective,
                                                   length=min(chunk, iterations - start))
        hist.append(float(values[-1]))
    return params, hist


@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
    """``(params, (x, y), extra, key) -> scalar``: mean cross-entropy of ``model`` plus its spec's
    per-layer weight decay under convention ``decay`` (hashable: the jitted step's static loss)."""

    model: Model
    decay: str

    def __call__(self, p, batch, extra, key):
        x, y = batch
        decay = weight_decay(p, self.model.spec.weight_decay, self.decay)
        scale = 1.0 if extra is None else extra["decay_scale"]  # a population member's λ multiplier
        return cross_entropy(self.model.apply(p, x), y) + scale * decay


def fit(model: Model, train: Split, key: jax.Array, cfg: TrainConfig = TrainConfig(),
        on_epoch: Callable[[int, float], None] | None = None, *, checkpoint_path=None):
    """Trains a registry model: mean cross-entropy plus the spec's per-layer weight decay, Adam with a
    cosine-decayed learning rate (``run_epochs``). AE400-10's encoder is pre-trained as a sparse
    autoencoder and then held fixed by the optimiser.

    Args:
      model: a ``models.Model``; train: the training ``Split``; key: PRNG key (init, shuffling).
      cfg: ``TrainConfig``; epochs and learning rate None: the spec's defaults, the epochs scaled to
        ``train.share`` (``TrainConfig.for_model``: a run on P1 takes twice the passes, the same steps) —
        the one resolution the zoo's caches and the adversarial ``fit`` use too.
      on_epoch: called with ``(epoch, mean loss)`` after each epoch.
      checkpoint_path: if given, the state (weights, optimiser, epoch, losses) is saved atomically after
        every epoch and a restarted call resumes after the last finished epoch (delete it once done).

    Returns:
      ``(params, loss_history)``: the trained parameter pytree and each epoch's mean loss.

    References:
      Szegedy et al. 2014, Sec. 2 (models and weight decay λ·Σw²/k).
    """
    params, history = _fit(model, train, key[None], cfg, None, None, checkpoint_path, alone=True,
                           on_epoch=None if on_epoch is None else (lambda e, losses: on_epoch(e, losses[0])))
    return member(params, 0), [h[0] for h in history]


def fit_population(model: Model, train: Split, keys: jax.Array, cfg: TrainConfig = TrainConfig(), *,
                   learning_rates=None, decay_scales=None, loss: Callable | None = None, settings: dict | None = None,
                   on_epoch: Callable[[int, list[float]], None] | None = None, checkpoint_path=None,
                   on_device: bool = False, hook: Hook | None = None):
    """Trains M members of one registry model at once — one jitted step advances all of them — each as
    ``fit`` would train it alone with its key (to float precision; tested).

    Args:
      model, train, cfg: as for ``fit`` (one resolved config for every member).
      keys: ``[M]`` PRNG keys, one per member (its init, autoencoder and shuffling, as in ``fit``).
      learning_rates: ``[M]`` peak rates (None: the resolved config's for all); the schedule's shape is
        shared, each member's updates are scaled by its rate.
      decay_scales: ``[M]`` multipliers of the spec's per-layer weight decay λ (None: 1).
      loss: ``(params, (x, y), member settings, key) -> scalar``, hashable (None: ``ClassifierLoss``; e.g.
        ``robust_training``'s losses, which read their ε from the member's settings).
      settings: further per-member numbers for ``loss``, name -> ``[M]`` (e.g. ``{"epsilon": ...}``).
      on_epoch: called with ``(epoch, [M] mean losses)`` after each epoch.
      checkpoint_path: as for ``fit`` (the whole population's state).
      on_device: each epoch as one ``lax.scan`` (``run_epochs``).
      hook: changes the members' settings between steps (``Hook``; e.g. ``robust_training.EpsilonRamp``),
        seeing the global step; the settings it returns keep their keys and shapes.

    Returns:
      ``(params, history)``: parameters with a leading member axis (``member(params, m)`` takes one) and
      per epoch the M mean losses.
    """
    return _fit(model, train, keys, cfg, learning_rates, decay_scales, checkpoint_path, alone=False, on_epoch=on_epoch,
                on_device=on_device, loss=loss, settings=settings, hook=hook)


def _fit(model, train, keys, cfg, learning_rates, decay_scales, checkpoint_path, *, alone: bool, on_epoch,
         on_device: bool = False, loss=None, settings=None, hook=None):
    """``fit_population``; ``alone``: one member trained exactly as ``fit`` always has (its optimiser at
    its own peak rate, the single-model step)."""
    validate_split(model, train)
    keys = jnp.asarray(keys)
    members = len(keys)
    resolved = cfg.for_model(model.spec, train.share, train.dataset)
    steps = resolved.epochs * (len(train) // cfg.batch_size)
    settings = {**{k: _per_member(v, 0.0, members) for k, v in (settings or {}).items()},
                "learning_rate": _per_member(learning_rates, resolved.learning_rate, members),
                "decay_scale": _per_member(decay_scales, 1.0, members)}
    split = [jax.random.split(k, 3) for k in keys]  # (init, autoencoder, loop) per member, as fit draws them
    loop_keys = jnp.stack([k[2] for k in split])
    if alone:  # one model: the optimiser at its own peak rate, no member settings (fit's exact arithmetic)
        tx = optimizer(cfg, steps, resolved.learning_rate, model.spec.frozen)
    else:
        tx = optimizer(cfg, steps, 1.0, model.spec.frozen)  # a unit peak: each member's rate scales its updates
    state, history, start = _resume(checkpoint_path, lambda: jax.tree.map(  # the shapes, for a checkpoint
        lambda a: jnp.zeros((members,) + a.shape, a.dtype), initial_params(model, split[0][0], cfg)), tx)
    if state is None:
        params = [initial_params(model, k[0], cfg) for k in split]
        if model.spec.autoencoder is not None:
            params = [{"params": {**p["params"], "dense_0": pretrain_autoencoder(model, train, k[1], cfg)[0]}}
                      for p, k in zip(params, split)]
        state = TrainState(jax.tree.map(lambda *a: jnp.stack(a), *params), None)

    def end_of_epoch(epoch, st: TrainState, losses):
        history.append(losses)
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, {"params": st.params, "opt_state": st.opt_state},
                            {"epoch": epoch + 1, "history": history})
        if on_epoch is not None:
            on_epoch(epoch, losses)

    loss = loss or ClassifierLoss(model, cfg.decay)
    if alone:
        def one(epoch, st, l):
            end_of_epoch(epoch, TrainState(_stacked(st.params), _stacked(st.opt_state)), [l])
        first = TrainState(member(state.params, 0), None if state.opt_state is None else member(state.opt_state, 0))
        final, _ = run_epochs(loss, first, tx, (train.images, train.labels), loop_keys[0], resolved.epochs,
                              cfg.batch_size, start_epoch=start, on_epoch=one)
        return _stacked(final.params), history
    state = TrainState(state.params, state.opt_state, settings)
    final, _ = run_epochs(loss, state, tx, (train.images, train.labels), loop_keys, resolved.epochs, cfg.batch_size,
                          start_epoch=start, on_epoch=end_of_epoch, population=True, on_device=on_device, hook=hook)
    return final.params, history


def validate_split(model: Model, split: Split) -> None:
    """Checks a training split before any step: finite images in [0, 1] and integer labels in [0, K) for
    the model's K (``ValueError`` naming ``train.images`` or ``train.labels``)."""
    n = validate.images(split.images, name="train.images")
    validate.labels(split.labels, n, validate.num_classes(model.init, model.apply, split.images), name="train.labels")


def member(tree, m: int):
    """Member ``m`` of a population's pytree (every leaf's row ``m``)."""
    return jax.tree.map(lambda a: a[m], tree)


def _stacked(tree):
    return jax.tree.map(lambda a: a[None], tree)


def _per_member(values, default: float, members: int) -> jax.Array:
    v = jnp.full((members,), default, jnp.float32) if values is None else jnp.asarray(values, jnp.float32)
    if v.shape != (members,):
        raise ValueError(f"need one value per member ({members}), got shape {v.shape}")
    return v


def _resume(path, params_template: Callable, tx) -> tuple[TrainState | None, list, int]:
    """``(state, history, next epoch)`` from a training checkpoint at ``path``, or ``(None, [], 0)``;
    ``params_template()`` gives the population's parameter shapes (called only if there is a checkpoint)."""
    if path is None or not pathlib.Path(path).exists():
        return None, [], 0
    params = params_template()
    template = {"params": params, "opt_state": jax.vmap(tx.init)(params)}
    try:
        saved, meta = checkpoint.load(path, template)
    except checkpoint.CheckpointError as e:
        log.warning("%s; starting over", e)
        return None, [], 0
    log.info("resuming training from %s after epoch %d", path, meta["epoch"])
    return TrainState(*(jax.tree.map(jnp.asarray, saved[k]) for k in ("params", "opt_state"))), meta["history"], meta["epoch"]


def _progress(on_epoch: Callable[[int, float], None] | None):
    """``run_epochs``' callback from a ``(epoch, mean loss)`` one."""
    return None if on_epoch is None else (lambda epoch, state, loss: on_epoch(epoch, loss))


@jax.jit
def _predicted_labels(logits_fn, x):
    return jnp.argmax(logits_fn(x), -1)


def predict(apply: Callable, params, images, batch_size: int = 5000) -> np.ndarray:
    """Predicted labels for ``images`` ``[N, ...]``, in jitted chunks (one compilation per apply function
    and chunk shape: the weights are an argument)."""
    validate.images(images, box=None)  # perturbed images may leave the box; NaN/inf never
    logits_fn = Partial(apply, params)
    out = [np.asarray(_predicted_labels(logits_fn, jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def predictor(apply: Callable, params) -> Callable[[np.ndarray], np.ndarray]:
    """images -> predicted labels (numpy) of ``apply`` with ``params`` (``predict``), e.g. for
    ``transfer.error_matrix``."""
    return functools.partial(predict, apply, params)


def error_rate(apply: Callable, params, split: Split) -> float:
    """Share of ``split``'s images whose predicted label differs from the true one."""
    return float(np.mean(predict(apply, params, split.images) != split.labels))
