"""Training with optax: a pure jitted epoch (``lax.scan`` over minibatches), the paper's per-layer weight
decay λ·Σw²/k, explicit PRNG keys, and autoencoder pre-training for AE400-10.

Our choices where the paper is silent (Sec. 2 gives no optimiser, epochs or initialisation): Adam with a
cosine-decayed learning rate from 1e-3, batch 128, Flax's default (LeCun-normal) initialisation, the
epoch count in each ``ModelSpec``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from intriguing_jax.data import Split
from intriguing_jax.models import Model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = None  # None: the model spec's default
    batch_size: int = 128
    learning_rate: float = 1e-3
    ae_epochs: int = 15  # autoencoder pre-training (AE400-10)
    ae_sparsity: float = 0.05  # target mean activation ρ
    ae_sparsity_weight: float = 3.0  # β on Σ KL(ρ ‖ ρ̂_j)
    ae_weight_decay: float = 3e-3  # λ·Σw²/k on the autoencoder's weights

    @classmethod
    def smoke(cls) -> "TrainConfig":
        return cls(epochs=2, batch_size=64, ae_epochs=1)


def weight_decay(params, decay: dict[str, float]) -> jax.Array:
    """Σ_layers λ_layer · Σ w² / k, k = the layer's number of units (output width); kernels only."""
    total = jnp.zeros((), jnp.float32)
    for layer, lam in decay.items():
        kernel = params["params"][layer]["kernel"]
        total = total + lam * jnp.sum(kernel ** 2) / kernel.shape[-1]
    return total


def cross_entropy(logits, labels) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _frozen_optimizer(tx: optax.GradientTransformation, params, frozen: tuple[str, ...]):
    if not frozen:
        return tx
    labels = {"params": {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "train", v)
                         for k, v in params["params"].items()}}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _run_epochs(loss_fn: Callable, params, tx, data: tuple, key, epochs: int, batch_size: int,
                on_epoch: Callable | None = None):
    """Runs ``epochs`` epochs of minibatch training: one jitted (buffer-donating) step per minibatch.

    Not one ``lax.scan`` per epoch: XLA:CPU runs convolutions inside a loop body ~13x slower than the
    same step jitted on its own (measured here: ConvNet 1.9 s vs 0.15 s per step of 128).
    """
    n = len(data[0])
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the number of training examples {n}")
    data = tuple(jnp.asarray(d) for d in data)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, idx):
        loss, grads = jax.value_and_grad(loss_fn)(params, *(d[idx] for d in data))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    order = jax.jit(lambda k: jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size))
    params = jax.tree.map(jnp.array, params)  # our own copy: the step donates its buffers
    opt_state = tx.init(params)
    history = []
    for e in range(epochs):
        perm = order(jax.random.fold_in(key, e))
        losses = []
        for i in range(steps):
            params, opt_state, loss = step(params, opt_state, perm[i])
            losses.append(loss)
        history.append(float(jnp.mean(jnp.stack(losses))))
        if on_epoch is not None:
            on_epoch(e, history[-1])
    return params, history


def lr_schedule(cfg: TrainConfig, steps: int):
    return optax.cosine_decay_schedule(cfg.learning_rate, max(steps, 1))


def pretrain_autoencoder(model: Model, train: Split, key, cfg: TrainConfig, on_epoch=None):
    """Sparse autoencoder (squared error + β·KL sparsity + weight decay); returns the encoder params."""
    ae = model.spec.autoencoder
    init_key, loop_key = jax.random.split(key)
    params = ae.init(init_key, jnp.zeros((1, train.images.shape[1]), jnp.float32))
    rho = cfg.ae_sparsity

    def loss_fn(p, x):
        code, recon = ae.apply(p, x)
        rho_hat = jnp.clip(code.mean(0), 1e-6, 1 - 1e-6)
        kl = jnp.sum(rho * jnp.log(rho / rho_hat) + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat)))
        mse = 0.5 * jnp.sum((recon - x) ** 2, axis=1).mean()
        return mse + cfg.ae_sparsity_weight * kl + weight_decay(
            p, {"dense_0": cfg.ae_weight_decay, "decoder": cfg.ae_weight_decay})

    tx = optax.adam(lr_schedule(cfg, cfg.ae_epochs * (len(train) // cfg.batch_size)))
    params, hist = _run_epochs(loss_fn, params, tx, (train.images,), loop_key, cfg.ae_epochs,
                               cfg.batch_size, on_epoch)
    return params["params"]["dense_0"], hist


def fit(model: Model, train: Split, key: jax.Array, cfg: TrainConfig = TrainConfig(),
        on_epoch: Callable[[int, float], None] | None = None):
    """Trains ``model`` on ``train`` from ``key``. Returns ``(params, loss_history)``.

    The loss is mean cross-entropy plus the spec's per-layer weight decay. Frozen layers (AE400-10's
    pre-trained encoder) are held fixed by the optimiser.
    """
    epochs = cfg.epochs if cfg.epochs is not None else model.spec.epochs
    init_key, ae_key, loop_key = jax.random.split(key, 3)
    params = model.init(init_key)
    if model.spec.autoencoder is not None:
        encoder, _ = pretrain_autoencoder(model, train, ae_key, cfg)
        params = {"params": {**params["params"], "dense_0": encoder}}

    def loss_fn(p, x, y):
        return cross_entropy(model.apply(p, x), y) + weight_decay(p, model.spec.weight_decay)

    steps = epochs * (len(train) // cfg.batch_size)
    tx = _frozen_optimizer(optax.adam(lr_schedule(cfg, steps)), params, model.spec.frozen)
    return _run_epochs(loss_fn, params, tx, (train.images, train.labels), loop_key, epochs,
                       cfg.batch_size, on_epoch)


def predict(apply: Callable, params, images, batch_size: int = 5000) -> np.ndarray:
    """Predicted labels for ``images`` ``[N, 784]``, in fixed-size jitted chunks."""
    fn = jax.jit(lambda p, x: jnp.argmax(apply(p, x), -1))
    out = [np.asarray(fn(params, jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def error_rate(apply: Callable, params, split: Split) -> float:
    return float(np.mean(predict(apply, params, split.images) != split.labels))
