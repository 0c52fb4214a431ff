"""Adversarial training with per-layer pools (end of Sec. 4.2).

The paper kept "a pool of adversarial examples, a random subset of which is continuously replaced by
newly generated adversarial examples", mixed into training all the time, generated "for each layer's
outputs" and "used to train all the layers above". Here each pool k holds adversarial points in the
space of layer k (k = 0: input images; k ≥ 1: the output of hidden layer k) with their true labels;
pool k's loss runs only the layers above k (``model.from_layer``), so it trains exactly those layers.

Every ``refresh_every`` steps, ``refresh_count`` random training images per pool are attacked against the
*current* weights (random wrong targets) and written into the pool: empty slots first, then random ones.
Only attacks that reached their target (and, if ``max_distortion`` is set, stayed under it) are kept: a
failed attack returns its attempt pushed hardest toward the target, which is then mislabelled with the
original class. Pools start empty (``initial_fill=True`` fills them from the untrained net at step 0, the
scheme measured before the study in ``results/adversarial_training.md``: ~90% of those attacks fail).
Each step adds ``pool_batch`` examples drawn from each pool's filled slots to the clean minibatch with
loss (1 − mix)·CE(clean) + mix·mean_k CE(pool k). The generating attack is the paper's L-BFGS attack,
shortened (3 values of c, 20 iterations): training data need not be minimal and it runs every 200 steps.
The defaults are the study's choice (``experiments/adversarial_training.py``; the paper gives none).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from intriguing_jax import attacks, checkpoint, train
from intriguing_jax.data import Split
from intriguing_jax.models import NUM_PIXELS, Model

log = logging.getLogger(__name__)


TARGETS = ("random", "runner_up")


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
    keep_failed: bool = False  # keep the points of attacks that missed their target (the pools' first design; the study measures it)
    max_distortion: float | None = None  # drop points farther than this (RMS in the layer's space)
    initial_fill: bool = False  # fill every pool from the initial weights at step 0 (the pools' first design; the study measures it)
    target: str = "random"  # "random" wrong class, or "runner_up": the current net's likeliest wrong class
    overshoot: float = 1.0  # > 1: each kept point moved this far along its perturbation, past the boundary
    # a short search from c = 1 (bracket by 10, then the log-midpoint; history 10): pools are many and
    # need not be minimal
    attack: attacks.AttackConfig = attacks.AttackConfig(c_steps=3, maxiter=20, c_init=1.0, c_factor=10.0,
                                                        c_search="bisect", history=10, shrink_steps=0,
                                                        ftol=1e-5, c_rtol=3e-2, walk_steps=0, rescue_steps=0)

    def __post_init__(self):
        if len(set(self.layers)) != len(self.layers) or any(k < 0 for k in self.layers):
            raise ValueError(f"layers must be distinct non-negative layer indices, got {self.layers}")
        if not 0 <= self.mix <= 1:
            raise ValueError(f"mix must be in [0, 1], got {self.mix}")
        if self.layers and not (0 < self.refresh_count <= self.pool_size and self.pool_batch > 0
                                and self.refresh_every > 0):
            raise ValueError("need 0 < refresh_count <= pool_size, pool_batch > 0, refresh_every > 0")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not self.overshoot >= 1:
            raise ValueError(f"overshoot must be >= 1 (1: the attack's point), got {self.overshoot}")
        if self.max_distortion is not None and not self.max_distortion > 0:
            raise ValueError(f"max_distortion must be positive or None, got {self.max_distortion}")


class Pool(NamedTuple):
    points: jax.Array  # [P, d_k] adversarial points in layer k's space
    labels: jax.Array  # [P] true labels of the images they came from
    valid: jax.Array  # [P] bool: the slot holds a kept example (False: empty, never trained on)


class PoolStats(NamedTuple):
    """One refresh of one pool: what its attack produced."""

    success: float  # fraction of attacks that reached their target
    kept: float  # fraction written into the pool
    distortion: float  # mean distortion (RMS in the layer's space) of the successful points


def empty_pool(size: int, dim: int) -> Pool:
    return Pool(jnp.zeros((size, dim), jnp.float32), jnp.zeros(size, jnp.int32), jnp.zeros(size, bool))


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
    return images if layer == 0 else _hidden(Partial(model.activations, params), images, layer=layer - 1)


@functools.partial(jax.jit, static_argnames="layer")
def _hidden(activations, images, *, layer: int):
    return activations(images)[layer]


def _check_model(model: Model, layers) -> None:
    spaces = model.spec.module.pool_spaces()
    if not spaces:
        raise TypeError(f"{model.name} can hold no pool (per-layer pools are implemented for the MLP models)")
    bad = [k for k in layers if k not in spaces]
    if bad:
        raise ValueError(f"{model.name} can hold pools in layers {spaces} (0 = input; hidden layers only when "
                         f"bounded, e.g. sigmoid: the attack box is [0, 1]); got pool layers {layers}")


def runner_up(logits: jax.Array, labels) -> jax.Array:
    """The likeliest wrong class of each row (the highest logit other than the label's)."""
    masked = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.argmax(masked, axis=-1).astype(jnp.int32)


def generate(model: Model, params, layer: int, images, labels, key, cfg: attacks.AttackConfig, *,
             keep_failed: bool = False, max_distortion: float | None = None,
             target: str = "random", overshoot: float = 1.0) -> tuple[Pool, PoolStats]:
    """Adversarial points in layer ``layer``'s space: the layer's outputs for ``images``, attacked through
    the layers above toward wrong targets (box [0, 1]: pixels, or sigmoid outputs): random ones, or with
    ``target="runner_up"`` each image's likeliest wrong class under ``params``. ``overshoot`` > 1 moves
    each point that far along its perturbation, past the decision boundary (clipped to the box), as the
    paper's fixed-c examples lay past it; ``max_distortion`` applies to the point as found.

    Returns:
      ``(pool, stats)``: one slot per image, ``valid`` where the attack succeeded (always, with
      ``keep_failed``) and its distortion is at most ``max_distortion``; ``stats`` of the attack.
    """
    pool, stats = generate_each(model, jax.tree.map(lambda a: jnp.asarray(a)[None], params), layer,
                                jnp.asarray(images)[None], jnp.asarray(labels)[None], jnp.asarray(key)[None], cfg,
                                keep_failed=keep_failed, target=target, max_distortion=[max_distortion],
                                overshoot=[overshoot])
    return train.member(pool, 0), PoolStats(*(float(v[0]) for v in stats))


def generate_each(model: Model, params, layer: int, images, labels, keys, cfg: attacks.AttackConfig, *,
                  keep_failed: bool = False, target: str = "random", max_distortion=None,
                  overshoot=None) -> tuple[Pool, PoolStats]:
    """``generate`` for M members at once — one attack call, vmapped over the members' weights — with
    ``params``, ``images [M, R, ...]``, ``labels [M, R]`` and ``keys [M]`` per member, and per member
    ``max_distortion`` (None entries: no cap) and ``overshoot`` (None: 1). Returns pools and stats with a
    leading member axis."""
    m = len(keys)
    cap = jnp.asarray([np.inf if v is None else v for v in (max_distortion or [None] * m)], jnp.float32)
    over = jnp.asarray(overshoot if overshoot is not None else np.ones(m), jnp.float32)
    pool, stats = _generate_each(params, jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32), keys, cap,
                                 over, model=model, layer=layer, cfg=cfg, keep_failed=keep_failed, target=target)
    return pool, PoolStats(*(np.asarray(v) for v in stats))


@functools.partial(jax.jit, static_argnames=("model", "layer", "cfg", "keep_failed", "target"))
def _generate_each(params, images, labels, keys, cap, overshoot, *, model, layer, cfg, keep_failed, target):
    def one(p, x, y, key, cap, over):
        h = x if layer == 0 else model.activations(p, x)[layer - 1]
        above = Partial(_Above(model.from_layer, layer), p)
        targets = runner_up(above(h), y) if target == "runner_up" else attacks.random_wrong_targets(key, y)
        res = attacks.lbfgs_attack(above, h, targets, config=cfg)
        valid = (jnp.ones_like(res.success) if keep_failed else res.success) & (res.distortion <= cap)
        points = jnp.where(over == 1, res.adversarial, jnp.clip(h + over * (res.adversarial - h), 0.0, 1.0))
        n_ok = jnp.sum(res.success)
        dist = jnp.where(n_ok > 0, jnp.sum(jnp.where(res.success, res.distortion, 0.0)) / jnp.maximum(n_ok, 1), jnp.nan)
        return Pool(points, y, valid), (jnp.mean(res.success), jnp.mean(valid), dist)
    return jax.vmap(one)(params, images, labels, keys, cap, overshoot)


def replace(pool: Pool, fresh: Pool, key) -> Pool:
    """``pool`` with ``fresh``'s valid points written into ``len(fresh)`` slots (empty slots first, then
    random ones); the slots meant for ``fresh``'s invalid points keep what they held."""
    order = jnp.argsort(pool.valid + jax.random.uniform(key, pool.valid.shape))  # empty (0 + u) before full
    slots = order[: len(fresh.labels)]
    keep = fresh.valid

    def put(old, new):
        return old.at[slots].set(jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old[slots]))
    return Pool(put(pool.points, fresh.points), put(pool.labels, fresh.labels), put(pool.valid, fresh.valid))


def _random_images(split: Split, key, n: int):
    idx = np.asarray(jax.random.choice(key, len(split), (n,), replace=False))
    return split.images[idx], split.labels[idx]


def _fresh(model, params, adv: "AdvTrainConfig", split, key, n) -> tuple[tuple[Pool, ...], tuple[PoolStats, ...]]:
    pools, stats = [], []
    for i, k in enumerate(adv.layers):
        kk = jax.random.fold_in(key, i)
        x, y = _random_images(split, jax.random.fold_in(kk, 0), n)
        pool, st = generate(model, params, k, x, y, jax.random.fold_in(kk, 1), adv.attack,
                            keep_failed=adv.keep_failed, max_distortion=adv.max_distortion, target=adv.target,
                            overshoot=adv.overshoot)
        pools.append(pool)
        stats.append(st)
    return tuple(pools), tuple(stats)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _choose_each(keys, n: int, count: int):
    return jax.vmap(lambda k: jax.random.choice(k, n, (count,), replace=False))(keys)


_replace_each = jax.jit(jax.vmap(replace))


def _fresh_each(model, params, adv: "AdvTrainConfig", split, keys, n, member: dict):
    """``_fresh`` for every member of a population (one attack call per pool layer), with the members'
    ``overshoot`` and ``max_distortion`` (inf: none) from ``member``."""
    pools, stats = [], []
    cap = [None if not np.isfinite(v) else float(v) for v in np.asarray(member["max_distortion"])]
    for i, k in enumerate(adv.layers):
        kk = train._fold_each(keys, i)
        idx = np.asarray(_choose_each(train._fold_each(kk, 0), len(split), n))
        pool, st = generate_each(model, params, k, split.images[idx], split.labels[idx], train._fold_each(kk, 1),
                                 adv.attack, keep_failed=adv.keep_failed, target=adv.target, max_distortion=cap,
                                 overshoot=member["overshoot"])
        pools.append(pool)
        stats.append(st)
    return tuple(pools), tuple(stats)


def _empty_pools(model, params, adv: "AdvTrainConfig") -> tuple[Pool, ...]:
    x = jnp.zeros((1, NUM_PIXELS), jnp.float32)
    return tuple(empty_pool(adv.pool_size, layer_inputs(model, params, x, k).shape[1]) for k in adv.layers)


def _state_template(model, tx, adv: AdvTrainConfig, key):
    params = model.init(key)
    return {"params": params, "opt_state": tx.init(params), "pools": _empty_pools(model, params, adv)}


def split_epoch_keys(key, epoch):
    """An adversarial run's ``(shuffle key, step key)`` of an epoch (``train.Hook.epoch_keys``)."""
    step_key, shuffle_key = jax.random.split(jax.random.fold_in(key, epoch))
    return shuffle_key, step_key


class PoolHook(train.Hook):
    """The pools as the training loop's extra data: every ``refresh_every`` steps, ``refresh_count``
    slots of each pool get fresh examples attacked against the current weights. ``stats`` collects each
    refresh's ``PoolStats`` (a tuple per refresh, one per pool) until the caller takes them. With
    ``population``, the loop's extra data is the members' settings (``fit_population``) and every pool of
    every member is refreshed by one attack call per pool layer; the stats hold one number per member."""

    epoch_keys = staticmethod(split_epoch_keys)

    def __init__(self, model: Model, split: Split, adv: AdvTrainConfig, population: bool = False):
        self.model, self.split, self.adv, self.population = model, split, adv, population
        self.stats: list[tuple[PoolStats, ...]] = []
        self.seconds = 0.0  # spent generating pool examples since the last epoch_record

    def before_step(self, step, key, params, extra):
        adv = self.adv
        if not adv.layers or step == 0 or step % adv.refresh_every:
            return extra
        t0 = time.perf_counter()
        if self.population:
            fresh, stats = _fresh_each(self.model, params, adv, self.split, train._fold_each(key, 1),
                                       adv.refresh_count, extra)
            pools = tuple(_replace_each(pl, f, train._fold_each(key, 2 + j))
                          for j, (pl, f) in enumerate(zip(extra["pools"], fresh)))
            extra = {**extra, "pools": pools}
        else:
            fresh, stats = _fresh(self.model, params, adv, self.split, jax.random.fold_in(key, 1), adv.refresh_count)
            extra = tuple(replace(pl, f, jax.random.fold_in(key, 2 + j)) for j, (pl, f) in enumerate(zip(extra, fresh)))
        self.stats.append(stats)
        self.seconds += time.perf_counter() - t0
        return extra

    def epoch_record(self, pools) -> dict:
        """Per pool layer k, the means over the refreshes since the last call (``pool{k}_success``,
        ``pool{k}_kept``, ``pool{k}_distortion``), the filled fraction (``pool{k}_filled``), and the seconds
        spent generating (``pool_seconds``); in a population, one list entry per member (the seconds are
        the whole population's)."""
        out = {"pool_seconds": self.seconds} if self.adv.layers else {}
        self.seconds = 0.0
        for j, k in enumerate(self.adv.layers):
            if self.stats:
                for name in PoolStats._fields:
                    out[f"pool{k}_{name}"] = _nanmean([getattr(s[j], name) for s in self.stats])
            filled = np.asarray(jnp.mean(pools[j].valid, axis=-1))
            out[f"pool{k}_filled"] = filled.tolist() if filled.ndim else float(filled)
        self.stats = []
        return out


def _nanmean(values):
    """The mean over refreshes (axis 0), NaNs left out; None where every value is NaN (a list per member
    when the values are per member)."""
    v = np.asarray(values, np.float64)
    out = [None if np.all(np.isnan(c)) else float(np.nanmean(c)) for c in v.reshape(len(v), -1).T]
    return out if v.ndim > 1 else out[0]


@dataclasses.dataclass(frozen=True)
class PoolLoss:
    """``(params, (x, y), pools, key) -> loss``: (1 − mix)·CE(clean) + mix·mean_k CE(pool k) + weight decay,
    with ``pool_batch`` examples drawn from each pool k's filled slots run through the layers above k
    (hashable: the jitted training step's static loss, so a second run compiles nothing)."""

    model: Model
    adv: AdvTrainConfig
    decay: str = train.TrainConfig.decay

    def _pool_term(self, p, pl: Pool, k, key):
        # pool_batch draws among the filled slots; an empty pool adds nothing
        n_valid = jnp.sum(pl.valid)
        probs = jnp.where(n_valid > 0, pl.valid / jnp.maximum(n_valid, 1), 1.0 / len(pl.valid))
        j = jax.random.choice(key, len(pl.valid), (self.adv.pool_batch,), p=probs)
        w = pl.valid[j].astype(jnp.float32)
        logp = jax.nn.log_softmax(self.model.from_layer(p, pl.points[j], k))
        ce = -jnp.take_along_axis(logp, pl.labels[j][:, None], axis=1)[:, 0]
        return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)

    def __call__(self, p, batch, extra, key):
        """``extra``: the pools (``fit``), or a population member's settings with its ``pools``, ``mix``
        and ``decay_scale`` (``fit_population``)."""
        x, y = batch
        adv = self.adv
        member = extra if isinstance(extra, dict) else {"pools": extra, "mix": adv.mix, "decay_scale": 1.0}
        loss = train.cross_entropy(self.model.apply(p, x), y)
        if adv.layers:
            pool = jnp.mean(jnp.stack([self._pool_term(p, pl, k, jax.random.fold_in(key, i))
                                       for i, (k, pl) in enumerate(zip(adv.layers, member["pools"]))]))
            loss = (1 - member["mix"]) * loss + member["mix"] * pool
        return loss + member["decay_scale"] * train.weight_decay(p, self.model.spec.weight_decay, self.decay)


def fit(model: Model, split: Split, key: jax.Array, cfg: train.TrainConfig = train.TrainConfig(),
        adv: AdvTrainConfig = AdvTrainConfig(), *, checkpoint_path=None,
        on_epoch: Callable[[int, Any, float], dict | None] | None = None):
    """Trains ``model`` on ``split`` with adversarial pools (``train.run_epochs`` with a ``PoolHook``).

    Args:
      model: a registry MLP; split: training data; key: PRNG key of the run.
      cfg: optimiser schedule (Adam, cosine-decayed learning rate, epochs, batch size).
      adv: the pools (``AdvTrainConfig``); ``layers=()`` is plain training with weight decay.
      checkpoint_path: if given, the full state (weights, optimiser, pools, history) is saved atomically
        after every epoch and a restarted call resumes from the last finished epoch.
      on_epoch: ``(epoch, params, mean loss) -> dict`` of extra numbers for the epoch's history record
        (e.g. test error).

    Returns:
      ``(params, history)``: one dict per epoch: ``epoch``, ``loss``, per pool layer k its refreshes'
      means ``pool{k}_success`` / ``pool{k}_kept`` / ``pool{k}_distortion`` and ``pool{k}_filled``
      and ``pool_seconds`` (``PoolHook.epoch_record``), what ``on_epoch`` returned, and the epoch's
      ``seconds`` (``on_epoch`` included; summed, the run's time across resumes).
    """
    _check_model(model, adv.layers)
    train.validate_split(model, split)
    last = time.perf_counter()  # end of the previous epoch: each epoch's record gets its seconds
    resolved = cfg.for_model(model.spec, split.share, split.dataset)  # as train.fit and the zoo resolve it
    epochs, learning_rate = resolved.epochs, resolved.learning_rate
    steps_per_epoch = len(split) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the number of training examples {len(split)}")
    tx = train.optimizer(cfg, epochs * steps_per_epoch, learning_rate)
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
    hook = PoolHook(model, split, adv)
    if state is None:
        params = train.initial_params(model, init_key, cfg)
        pools = _empty_pools(model, params, adv)
        if adv.initial_fill:
            t0 = time.perf_counter()
            fresh, stats = _fresh(model, params, adv, split, pool_key, adv.pool_size)
            pools = tuple(replace(pl, f, jax.random.fold_in(pool_key, 2 + j))
                          for j, (pl, f) in enumerate(zip(pools, fresh)))
            hook.stats.append(stats)
            hook.seconds += time.perf_counter() - t0
        state = train.TrainState(params, None, pools)
    state = jax.tree.map(jnp.asarray, state)  # a loaded checkpoint holds numpy arrays

    def end_of_epoch(epoch, st: train.TrainState, loss):
        nonlocal last
        record = {"epoch": epoch + 1, "loss": loss, **hook.epoch_record(st.extra)}
        if on_epoch is not None:
            record.update(on_epoch(epoch, st.params, loss) or {})
        now = time.perf_counter()
        record["seconds"], last = now - last, now  # kept in the checkpoint: survives a resume
        history.append(record)
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, {"params": st.params, "opt_state": st.opt_state, "pools": st.extra},
                            {"epoch": epoch + 1, "history": history})

    state, _ = train.run_epochs(PoolLoss(model, adv, cfg.decay), state, tx, (split.images, split.labels), loop_key,
                                epochs, cfg.batch_size, hook=hook, start_epoch=start,
                                on_epoch=end_of_epoch)
    return state.params, history


def past_boundary(adv: AdvTrainConfig, overshoot: float = 2.0, c: float = 1.0) -> dict[str, AdvTrainConfig]:
    """Variants of ``adv`` whose pool examples lie past the decision boundary, as the paper's did (they came
    from one fixed c, not from the largest c that still reaches the target): ``"overshoot ×2"`` moves every
    point that far along its perturbation; ``"fixed c = 1"`` makes each point by one solve at ``c``, with
    no distortion cap (which would drop the points a fixed c puts far out)."""
    return {f"overshoot ×{overshoot:g}": dataclasses.replace(adv, overshoot=overshoot),
            f"fixed c = {c:g}": dataclasses.replace(adv, max_distortion=None,
                                                    attack=dataclasses.replace(adv.attack, c_steps=1, c_init=c))}


def fit_population(model: Model, split: Split, keys: jax.Array, cfg: train.TrainConfig = train.TrainConfig(),
                   adv: AdvTrainConfig = AdvTrainConfig(), *, mixes=None, overshoots=None, max_distortions=None,
                   learning_rates=None, decay_scales=None, checkpoint_path=None,
                   on_epoch: Callable[[int, Any, list], list | None] | None = None):
    """``fit`` for M members at once: one jitted step advances every member (``train.run_epochs`` with a
    population) and each refresh attacks every member's pools in one call per pool layer. Member m is
    ``fit`` with ``keys[m]`` and its own settings, to float precision (tested).

    Args:
      model, split, cfg: as for ``fit``. keys: ``[M]`` PRNG keys (each member's init, pools, shuffling).
      adv: the pools' structure and schedule, shared; the numbers below vary per member (None: ``adv``'s
        ``mix``, ``overshoot`` and ``max_distortion`` — None entries: no cap —, the resolved learning rate
        and weight decay scale 1).
      checkpoint_path: the whole population's state (weights, optimiser, pools, histories) after every
        epoch; a restarted call resumes after the last finished epoch.
      on_epoch: ``(epoch, params [M], [M] mean losses) -> [M] dicts`` of extra numbers per member.

    Returns:
      ``(params, histories)``: parameters with a leading member axis (``train.member(params, m)``) and one
      history per member, records as ``fit``'s (``pool_seconds`` and ``seconds``: the member's share).
    """
    _check_model(model, adv.layers)
    train.validate_split(model, split)
    keys = jnp.asarray(keys)
    m = len(keys)
    last = time.perf_counter()
    resolved = cfg.for_model(model.spec, split.share, split.dataset)
    steps_per_epoch = len(split) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the number of training examples {len(split)}")
    tx = train.optimizer(cfg, resolved.epochs * steps_per_epoch, 1.0)  # a unit peak: each member's rate scales it
    split_keys = [jax.random.split(k, 3) for k in keys]  # (init, pools, loop), as fit draws them
    caps = [adv.max_distortion] * m if max_distortions is None else list(max_distortions)
    if len(caps) != m:
        raise ValueError(f"need one max_distortion per member ({m}), got {len(caps)}")
    member = {"learning_rate": train._per_member(learning_rates, resolved.learning_rate, m),
              "decay_scale": train._per_member(decay_scales, 1.0, m), "mix": train._per_member(mixes, adv.mix, m),
              "overshoot": train._per_member(overshoots, adv.overshoot, m),
              "max_distortion": jnp.asarray([np.inf if c is None else c for c in caps], jnp.float32)}
    if not (jnp.all((member["mix"] >= 0) & (member["mix"] <= 1)) and jnp.all(member["overshoot"] >= 1)):
        raise ValueError("every member's mix must lie in [0, 1] and its overshoot be >= 1")
    params = jax.tree.map(lambda *a: jnp.stack(a), *[train.initial_params(model, k[0], cfg) for k in split_keys])
    pools = jax.tree.map(lambda a: jnp.broadcast_to(a, (m,) + a.shape), _empty_pools(model, train.member(params, 0), adv))
    state, histories, start = train.TrainState(params, None, {**member, "pools": pools}), [[] for _ in range(m)], 0
    if checkpoint_path is not None and pathlib.Path(checkpoint_path).exists():
        try:
            template = {"params": params, "opt_state": jax.vmap(tx.init)(params), "extra": state.extra}
            saved, meta = checkpoint.load(checkpoint_path, template)
            saved["extra"]["pools"] = tuple(Pool(*p) for p in saved["extra"]["pools"])
            state = train.TrainState(saved["params"], saved["opt_state"], saved["extra"])
            histories, start = meta["history"], meta["epoch"]
            log.info("resuming %s adversarial population at epoch %d", model.name, start)
        except checkpoint.CheckpointError as e:
            log.warning("%s; starting over", e)
    hook = PoolHook(model, split, adv, population=True)
    if start == 0 and adv.initial_fill:
        t0 = time.perf_counter()
        pool_keys = jnp.stack([k[1] for k in split_keys])
        fresh, stats = _fresh_each(model, state.params, adv, split, pool_keys, adv.pool_size, member)
        filled = tuple(_replace_each(pl, f, train._fold_each(pool_keys, 2 + j))
                       for j, (pl, f) in enumerate(zip(state.extra["pools"], fresh)))
        state = state._replace(extra={**state.extra, "pools": filled})
        hook.stats.append(stats)
        hook.seconds += time.perf_counter() - t0
    state = jax.tree.map(jnp.asarray, state)  # a loaded checkpoint holds numpy arrays

    def end_of_epoch(epoch, st: train.TrainState, losses):
        nonlocal last
        shared = hook.epoch_record(st.extra["pools"])
        extra = (on_epoch(epoch, st.params, losses) if on_epoch is not None else None) or [{}] * m
        now = time.perf_counter()
        seconds, last = now - last, now
        for i in range(m):
            record = {"epoch": epoch + 1, "loss": losses[i],
                      **{k: (v[i] if isinstance(v, list) else v / m) for k, v in shared.items()}, **extra[i]}
            histories[i].append({**record, "seconds": seconds / m})
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, {"params": st.params, "opt_state": st.opt_state, "extra": st.extra},
                            {"epoch": epoch + 1, "history": histories})

    loop_keys = jnp.stack([k[2] for k in split_keys])
    final, _ = train.run_epochs(PoolLoss(model, adv, cfg.decay), state, tx, (split.images, split.labels), loop_keys,
                                resolved.epochs, cfg.batch_size, hook=hook, start_epoch=start, on_epoch=end_of_epoch,
                                population=True)
    return final.params, histories


def summarize_runs(runs: dict) -> dict:
    """Per variant, over its seeds' runs (each with ``test_error``, ``attack``, ``layers`` and optionally
    ``train_error``, ``wall_s``, ``pool_s`` and a ``history`` with ``fit``'s pool statistics): mean, spread
    (max − min), min and max of the test error; means of the train error, the attack's distortion (and its
    spread) and success rate, the wall time and the share of it spent generating pool examples, when each
    run was computed (``computed_at``, per seed); and the
    last epoch's pool statistics averaged over the pools (``pool_success``, ``pool_kept``,
    ``pool_distortion``, ``pool_filled``; None without pools)."""
    def mean(rs, get):
        v = [get(r) for r in rs]
        return float(np.mean(v)) if all(x is not None for x in v) else None

    out = {}
    for variant, rs in runs.items():
        te = [r["test_error"] for r in rs]
        d = [r["attack"]["mean_distortion"] for r in rs]
        row = {"test_error_mean": float(np.mean(te)), "test_error_spread": float(np.ptp(te)),
               "test_error_min": float(min(te)), "test_error_max": float(max(te)),
               "train_error_mean": mean(rs, lambda r: r.get("train_error")),
               "distortion_mean": float(np.mean(d)), "distortion_spread": float(np.ptp(d)),
               "success_rate": float(np.mean([r["attack"]["success_rate"] for r in rs])),
               "wall_s_mean": mean(rs, lambda r: r.get("wall_s")), "layers": rs[0]["layers"],
               "computed_at": [r.get("computed_at") for r in rs]}
        row["pool_share"] = (mean(rs, lambda r: r.get("pool_s", 0.0) / r["wall_s"]) if row["wall_s_mean"]
                             and rs[0]["layers"] else None)
        for stat in ("success", "kept", "distortion", "filled"):
            def last(r, stat=stat):
                v = [r["history"][-1].get(f"pool{k}_{stat}") for k in r["layers"]] if r.get("history") else []
                v = [x for x in v if x is not None]
                return float(np.mean(v)) if v else None
            row[f"pool_{stat}"] = mean(rs, last) if rs[0]["layers"] else None
        out[variant] = row
    return out
