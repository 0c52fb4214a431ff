"""Adversarial training with per-layer pools (end of Sec. 4.2).

The paper kept "a pool of adversarial examples, a random subset of which is continuously replaced by
newly generated adversarial examples", mixed into training all the time, generated "for each layer's
outputs" and "used to train all the layers above". Here each pool k holds adversarial points in the
space of layer k (k = 0: input images; k ≥ 1: the output of hidden layer k) with their true labels;
pool k's loss runs only the layers above k (``model.from_layer``), so it trains exactly those layers.

Defaults (the paper gives none): pools of 2,000 per layer (≈ 3% of the training set, so the pool is
refreshed completely every ~10 epochs with the refresh below); every 200 steps 200 slots per pool are
replaced by fresh examples of random training images attacked against the *current* weights with random
wrong targets; each step adds 64 examples per pool to the 128 clean ones, and the loss is
(1 − mix)·CE(clean) + mix·mean_k CE(pool k) with mix = 0.5. The generating attack is the paper's
L-BFGS attack, shortened (3 values of c, 20 iterations) because exact minimality does not matter for
training data and it runs ~80 times per epoch-pool.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from intriguing_jax import attacks, checkpoint
from intriguing_jax.data import Split
from intriguing_jax.models import MLP, NUM_PIXELS, Model
from intriguing_jax.train import TrainConfig, lr_schedule, cross_entropy, weight_decay

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdvTrainConfig:
    """Pools and their schedule. ``layers``: which spaces get a pool (0 = input, k = hidden layer k);
    empty = plain training with weight decay."""

    layers: tuple[int, ...] = (0,)
    pool_size: int = 2000
    refresh_every: int = 200  # steps
    refresh_count: int = 200  # slots replaced per refresh, per pool
    pool_batch: int = 64  # pool examples per step, per pool
    mix: float = 0.5
    # a short search from c = 1 (bracket by 10, then the log-midpoint; history 10): pools are many and
    # need not be minimal
    attack: attacks.AttackConfig = attacks.AttackConfig(c_steps=3, maxiter=20, c_init=1.0, c_factor=10.0,
                                                        c_search="bisect", history=10, shrink_steps=0)

    def __post_init__(self):
        if len(set(self.layers)) != len(self.layers) or any(k < 0 for k in self.layers):
            raise ValueError(f"layers must be distinct non-negative layer indices, got {self.layers}")
        if not 0 <= self.mix <= 1:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if self.layers and not (0 < self.refresh_count <= self.pool_size and self.pool_batch > 0
                                and self.refresh_every > 0):
            raise ValueError("need 0 < refresh_count <= pool_size, pool_batch > 0, refresh_every > 0")


class Pool(NamedTuple):
    points: jax.Array  # [P, d_k] adversarial points in layer k's space
    labels: jax.Array  # [P] true labels of the images they came from


@dataclasses.dataclass(frozen=True)
class _Above:
    """Hashable ``(params, h) -> logits`` of the layers above layer ``k`` (stable jit cache key)."""

    from_layer: Callable
    k: int

    def __call__(self, params, h):
        return self.from_layer(params, h, self.k)


def layer_inputs(model: Model, params, images, layer: int) -> jax.Array:
    """The points in layer ``layer``'s space for ``images`` (layer 0: the images themselves)."""
    images = jnp.asarray(images)
    return images if layer == 0 else model.activations(params, images)[layer - 1]


def _check_model(model: Model, layers) -> None:
    module = model.spec.module
    if not isinstance(module, MLP):
        raise TypeError("per-layer pools are implemented for the MLP models")
    if any(k > len(module.hidden) for k in layers):
        raise ValueError(f"{model.name} has {len(module.hidden)} hidden layers; got pool layers {layers}")
    if any(k > 0 for k in layers) and module.activation != "sigmoid":
        raise ValueError("hidden-layer pools need a bounded (sigmoid) layer: the attack box is [0, 1]")


def generate(model: Model, params, layer: int, images, labels, key, cfg: attacks.AttackConfig) -> Pool:
    """Adversarial points in layer ``layer``'s space: the layer's outputs for ``images``, attacked through
    the layers above toward random wrong targets (box [0, 1]: pixels, or sigmoid outputs)."""
    h = layer_inputs(model, params, images, layer)
    targets = attacks.random_wrong_targets(key, labels)
    res = attacks.lbfgs_attack(Partial(_Above(model.from_layer, layer), params), h, targets, config=cfg)
    return Pool(jnp.asarray(res.adversarial), jnp.asarray(labels, jnp.int32))


def replace(pool: Pool, fresh: Pool, key) -> Pool:
    """``pool`` with a random subset of ``len(fresh)`` slots overwritten by ``fresh``."""
    slots = jax.random.choice(key, len(pool.labels), (len(fresh.labels),), replace=False)
    return Pool(pool.points.at[slots].set(fresh.points), pool.labels.at[slots].set(fresh.labels))


def _random_images(split: Split, key, n: int):
    idx = np.asarray(jax.random.choice(key, len(split), (n,), replace=False))
    return split.images[idx], split.labels[idx]


def _fresh(model, params, layers, split, key, n, cfg) -> tuple[Pool, ...]:
    out = []
    for i, k in enumerate(layers):
        kk = jax.random.fold_in(key, i)
        x, y = _random_images(split, jax.random.fold_in(kk, 0), n)
        out.append(generate(model, params, k, x, y, jax.random.fold_in(kk, 1), cfg))
    return tuple(out)


def _state_template(model, tx, adv: AdvTrainConfig, key):
    params = model.init(key)
    x = jnp.zeros((1, NUM_PIXELS), jnp.float32)
    dims = [layer_inputs(model, params, x, k).shape[1] for k in adv.layers]
    pools = tuple(Pool(jnp.zeros((adv.pool_size, d), jnp.float32), jnp.zeros(adv.pool_size, jnp.int32))
                  for d in dims)
    return {"params": params, "opt_state": tx.init(params), "pools": pools}


def fit(model: Model, split: Split, key: jax.Array, cfg: TrainConfig = TrainConfig(),
        adv: AdvTrainConfig = AdvTrainConfig(), *, checkpoint_path=None,
        on_epoch: Callable[[int, dict], dict | None] | None = None):
    """Trains ``model`` on ``split`` with adversarial pools. Returns ``(params, history)``; ``history`` is
    one dict per epoch (loss, plus whatever ``on_epoch(epoch, params)`` returns, e.g. test error).

    With ``checkpoint_path`` the full state (weights, optimiser, pools, history) is saved atomically after
    every epoch and a restarted call resumes from the last finished epoch.
    """
    _check_model(model, adv.layers)
    epochs = cfg.epochs if cfg.epochs is not None else model.spec.epochs
    steps_per_epoch = len(split) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the number of training examples {len(split)}")
    tx = optax.adam(lr_schedule(cfg, epochs * steps_per_epoch))
    init_key, pool_key, loop_key = jax.random.split(key, 3)
    state, history, start = None, [], 0
    if checkpoint_path is not None and pathlib.Path(checkpoint_path).exists():
        try:
            state, meta = checkpoint.load(checkpoint_path, _state_template(model, tx, adv, init_key))
            history, start = meta["history"], meta["epoch"]
            log.info("resuming %s adversarial training at epoch %d", model.name, start)
        except checkpoint.CheckpointError as e:
            log.warning("%s; starting over", e)
    if state is None:
        params = model.init(init_key)
        pools = _fresh(model, params, adv.layers, split, pool_key, adv.pool_size, adv.attack)
        state = {"params": params, "opt_state": tx.init(params), "pools": pools}
    layers, mix = adv.layers, adv.mix
    images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)

    def loss_fn(p, x, y, pool_points, pool_labels):
        clean = cross_entropy(model.apply(p, x), y)
        if layers:
            pool = jnp.mean(jnp.stack([cross_entropy(model.from_layer(p, h, k), yk)
                                       for k, h, yk in zip(layers, pool_points, pool_labels)]))
            clean = (1 - mix) * clean + mix * pool
        return clean + weight_decay(p, model.spec.weight_decay)

    @jax.jit
    def step(params, opt_state, pools, images, labels, idx, key):
        picks = [jax.random.randint(jax.random.fold_in(key, i), (adv.pool_batch,), 0, len(pl.labels))
                 for i, pl in enumerate(pools)]
        loss, grads = jax.value_and_grad(loss_fn)(params, images[idx], labels[idx],
                                                  [pl.points[j] for pl, j in zip(pools, picks)],
                                                  [pl.labels[j] for pl, j in zip(pools, picks)])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = jax.tree.map(jnp.asarray, state)  # a loaded checkpoint holds numpy arrays
    params, opt_state, pools = state["params"], state["opt_state"], tuple(Pool(*p) for p in state["pools"])
    for epoch in range(start, epochs):
        ekey, pkey = jax.random.split(jax.random.fold_in(loop_key, epoch))
        perm = jax.random.permutation(pkey, len(split))
        perm = perm[: steps_per_epoch * cfg.batch_size].reshape(steps_per_epoch, cfg.batch_size)
        losses = []
        for i in range(steps_per_epoch):
            skey = jax.random.fold_in(ekey, i)
            global_step = epoch * steps_per_epoch + i
            if layers and global_step > 0 and global_step % adv.refresh_every == 0:
                fresh = _fresh(model, params, layers, split, jax.random.fold_in(skey, 1), adv.refresh_count,
                               adv.attack)
                pools = tuple(replace(pl, f, jax.random.fold_in(skey, 2 + j))
                              for j, (pl, f) in enumerate(zip(pools, fresh)))
            params, opt_state, loss = step(params, opt_state, pools, images, labels, perm[i], skey)
            losses.append(loss)
        record = {"epoch": epoch + 1, "loss": float(jnp.mean(jnp.stack(losses)))}
        if on_epoch is not None:
            record.update(on_epoch(epoch, params) or {})
        history.append(record)
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, {"params": params, "opt_state": opt_state, "pools": pools},
                            {"epoch": epoch + 1, "history": history})
    return params, history
