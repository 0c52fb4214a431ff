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
from jax.tree_util import Partial

from intriguing_jax import attacks, checkpoint, train
from intriguing_jax.data import Split
from intriguing_jax.models import NUM_PIXELS, Model

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
    spaces = model.spec.module.pool_spaces()
    if not spaces:
        raise TypeError(f"{model.name} can hold no pool (per-layer pools are implemented for the MLP models)")
    bad = [k for k in layers if k not in spaces]
    if bad:
        raise ValueError(f"{model.name} can hold pools in layers {spaces} (0 = input; hidden layers only when "
                         f"bounded, e.g. sigmoid: the attack box is [0, 1]); got pool layers {layers}")


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


class PoolHook(train.Hook):
    """The pools as the training loop's extra data: every ``refresh_every`` steps, ``refresh_count``
    random slots of each pool get fresh examples attacked against the current weights."""

    def __init__(self, model: Model, split: Split, adv: AdvTrainConfig):
        self.model, self.split, self.adv = model, split, adv

    def epoch_keys(self, key, epoch):
        step_key, shuffle_key = jax.random.split(jax.random.fold_in(key, epoch))
        return shuffle_key, step_key

    def before_step(self, step, key, params, pools):
        adv = self.adv
        if not adv.layers or step == 0 or step % adv.refresh_every:
            return pools
        fresh = _fresh(self.model, params, adv.layers, self.split, jax.random.fold_in(key, 1), adv.refresh_count,
                       adv.attack)
        return tuple(replace(pl, f, jax.random.fold_in(key, 2 + j)) for j, (pl, f) in enumerate(zip(pools, fresh)))


def pool_loss(model: Model, adv: AdvTrainConfig, decay: str = train.TrainConfig.decay) -> Callable:
    """``(params, (x, y), pools, key) -> loss``: (1 − mix)·CE(clean) + mix·mean_k CE(pool k) + weight decay,
    with ``pool_batch`` random examples of each pool k run through the layers above k."""
    def loss_fn(p, batch, pools, key):
        x, y = batch
        loss = train.cross_entropy(model.apply(p, x), y)
        if adv.layers:
            picks = [jax.random.randint(jax.random.fold_in(key, i), (adv.pool_batch,), 0, len(pl.labels))
                     for i, pl in enumerate(pools)]
            pool = jnp.mean(jnp.stack([train.cross_entropy(model.from_layer(p, pl.points[j], k), pl.labels[j])
                                       for k, pl, j in zip(adv.layers, pools, picks)]))
            loss = (1 - adv.mix) * loss + adv.mix * pool
        return loss + train.weight_decay(p, model.spec.weight_decay, decay)
    return loss_fn


def fit(model: Model, split: Split, key: jax.Array, cfg: train.TrainConfig = train.TrainConfig(),
        adv: AdvTrainConfig = AdvTrainConfig(), *, checkpoint_path=None,
        on_epoch: Callable[[int, dict], dict | None] | None = None):
    """Trains ``model`` on ``split`` with adversarial pools (``train.run_epochs`` with a ``PoolHook``).

    Args:
      model: a registry MLP; split: training data; key: PRNG key of the run.
      cfg: optimiser schedule (Adam, cosine-decayed learning rate, epochs, batch size).
      adv: the pools (``AdvTrainConfig``); ``layers=()`` is plain training with weight decay.
      checkpoint_path: if given, the full state (weights, optimiser, pools, history) is saved atomically
        after every epoch and a restarted call resumes from the last finished epoch.
      on_epoch: ``(epoch, params) -> dict`` of extra numbers for the epoch's history record (e.g. test
        error).

    Returns:
      ``(params, history)``: one dict per epoch (``epoch``, ``loss`` and what ``on_epoch`` returned).
    """
    _check_model(model, adv.layers)
    epochs = cfg.epochs if cfg.epochs is not None else model.spec.epochs
    steps_per_epoch = len(split) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the number of training examples {len(split)}")
    tx = train.optimizer(cfg, epochs * steps_per_epoch, cfg.learning_rate or model.spec.learning_rate)
    init_key, pool_key, loop_key = jax.random.split(key, 3)
    state, history, start = None, [], 0
    if checkpoint_path is not None and pathlib.Path(checkpoint_path).exists():
        try:
            state, meta = checkpoint.load(checkpoint_path, _state_template(model, tx, adv, init_key))
            history, start = meta["history"], meta["epoch"]
            state = train.TrainState(state["params"], state["opt_state"], tuple(Pool(*p) for p in state["pools"]))
            log.info("resuming %s adversarial training at epoch %d", model.name, start)
        except checkpoint.CheckpointError as e:
            log.warning("%s; starting over", e)
    if state is None:
        params = model.init(init_key)
        state = train.TrainState(params, None, _fresh(model, params, adv.layers, split, pool_key, adv.pool_size,
                                                      adv.attack))
    state = jax.tree.map(jnp.asarray, state)  # a loaded checkpoint holds numpy arrays

    def end_of_epoch(epoch, st: train.TrainState, loss):
        record = {"epoch": epoch + 1, "loss": loss}
        if on_epoch is not None:
            record.update(on_epoch(epoch, st.params) or {})
        history.append(record)
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, {"params": st.params, "opt_state": st.opt_state, "pools": st.extra},
                            {"epoch": epoch + 1, "history": history})

    state, _ = train.run_epochs(pool_loss(model, adv, cfg.decay), state, tx, (split.images, split.labels), loop_key,
                                epochs, cfg.batch_size, hook=PoolHook(model, split, adv), start_epoch=start,
                                on_epoch=end_of_epoch)
    return state.params, history


def summarize_runs(runs: dict) -> dict:
    """Per variant, over its seeds' runs (each with ``test_error``, ``attack`` and ``layers``): mean and
    spread (max − min) of the test error and the attack's mean distortion, and the mean success rate."""
    def stats(rs, get):
        v = [get(r) for r in rs]
        return float(np.mean(v)), float(np.ptp(v))

    out = {}
    for variant, rs in runs.items():
        te, te_spread = stats(rs, lambda r: r["test_error"])
        d, d_spread = stats(rs, lambda r: r["attack"]["mean_distortion"])
        out[variant] = {"test_error_mean": te, "test_error_spread": te_spread, "distortion_mean": d,
                        "distortion_spread": d_spread,
                        "success_rate": float(np.mean([r["attack"]["success_rate"] for r in rs])),
                        "layers": rs[0]["layers"]}
    return out
