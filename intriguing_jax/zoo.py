"""Trained models on disk, and attacks on them: train once, then load the checksummed checkpoint (keyed by
model, split, seed and training config); attack once, then load the attack's chunks (keyed by the
checkpoint, the image set and the attack config)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time

import jax
from jax.tree_util import Partial

from intriguing_jax import attacks, checkpoint, models, provenance, storage, train
from intriguing_jax.data import MNIST, TRAINING_SHARE

log = logging.getLogger(__name__)


def resolved_config(name: str, cfg: train.TrainConfig, split: str = "train", dataset: str = "mnist") -> train.TrainConfig:
    """``cfg`` as a run of registry model ``name`` on training split ``split`` of ``dataset`` uses it: the
    model's defaults (its recipe on that dataset) filled in, the default epochs scaled to the split's share of
    the training set (``TrainConfig.for_model``)."""
    if split not in TRAINING_SHARE:
        raise ValueError(f"unknown training split {split!r}; expected one of {sorted(TRAINING_SHARE)}")
    return cfg.for_model(models.spec(name), TRAINING_SHARE[split], dataset)


def config_key(name: str, cfg: train.TrainConfig, split: str = "train", dataset: str = "mnist") -> str:
    """The cache key of training registry model ``name`` on ``split`` with ``cfg``: the resolved config
    (``resolved_config``) and the model's weight decay, so that a registry edit is a new key and never
    reuses a run made under the old defaults."""
    spec = models.spec(name)
    return storage.cache_key({"train": dataclasses.asdict(resolved_config(name, cfg, split, dataset)),
                              "weight_decay": spec.weight_decay, "frozen": list(spec.frozen)})


def checkpoint_path(workdir, name, split, seed, cfg, dataset: str = "mnist") -> pathlib.Path:
    """Where a trained model lives: keyed by model, training split, seed and training config (as resolved
    for ``dataset``; each dataset has its own workdir)."""
    stem = f"{storage.safe_name(models.canonical_name(name))}_{split}_s{seed}_{config_key(name, cfg, split, dataset)}"
    return pathlib.Path(workdir) / "checkpoints" / (stem + ".ckpt")


def trained(name: str, mnist: MNIST, *, split: str = "train", seed: int = 0,
            cfg: train.TrainConfig = train.TrainConfig(), workdir="workdir", on_epoch=None):
    """Returns ``(model, params, meta)``, training and caching the checkpoint if it is not there yet.

    Training checkpoints every epoch (``<checkpoint>.partial``): a killed run resumes after its last
    finished epoch. ``meta`` holds train/test error (and P1/P2 error), the loss history, seed,
    provenance, and the checkpoint's file name and sha256 (``checkpoint``, ``checkpoint_sha256``): one
    (model, recipe, split, seed) is one file, and every caller that asks for it gets that file.
    """
    return trained_seeds(name, mnist, (seed,), split=split, cfg=cfg, workdir=workdir,
                              on_epoch=None if on_epoch is None else (lambda e, losses: on_epoch(e, losses[0])))[0]


def trained_seeds(name: str, mnist: MNIST, seeds, *, split: str = "train",
                       cfg: train.TrainConfig = train.TrainConfig(), workdir="workdir", on_epoch=None) -> list:
    """``trained`` for several seeds: ``[(model, params, meta)]`` in the order of ``seeds``, each seed's
    checkpoint the one ``trained`` writes, resumable after a kill. ``on_epoch(epoch, [loss])``.

    Every seed trains alone by ``train.fit``, never as a member of a population: ``fit`` is bitwise
    repeatable, while a population's arithmetic (vmapped steps, per-member rate scaling) differs from it
    in the last bits, which 100 epochs amplify like a change of seed (FC100-100-10 on MNIST: max
    |Δparam| 9.3, test error 1.66% alone vs 1.68% as a member; the population saved 6% of the time). So
    a (model, recipe, split, seed) is one model, whichever seeds are asked for beside it. Processes sharing
    ``workdir`` train a checkpoint once: one that finds another training it waits, then loads it
    (``storage.exclusive``)."""
    model = models.build(name)
    resolved, data, out = resolved_config(name, cfg, split, mnist.name), mnist.split(split), {}
    for seed in seeds:
        path = checkpoint_path(workdir, name, split, seed, cfg, mnist.name)
        with storage.exclusive(pathlib.Path(workdir) / "locks" / f"{path.name}.lock"):  # another process training it: wait, then load
            if path.exists():
                try:
                    params, meta = checkpoint.load(path, model.init(jax.random.key(0)))
                    log.info("loaded %s from %s", model.name, path)
                    out[seed] = (model, params, _identified(meta, path))
                    continue
                except checkpoint.CheckpointError as e:
                    log.warning("%s; retraining", e)
            t0, partial = time.time(), path.with_suffix(".partial")  # each seed alone: see the docstring
            params, history = train.fit(model, data, jax.random.key(seed), resolved, checkpoint_path=partial,
                                        on_epoch=None if on_epoch is None else (lambda e, loss: on_epoch(e, [loss])))
            errors = {f"{s}_error": train.error_rate(model.apply, params, mnist.split(s)) for s in ("train", "test", "p1", "p2")}
            meta = {"model": model.name, "split": split, **errors, "loss_history": history,
                    "train_config": dataclasses.asdict(cfg),
                    "provenance": provenance.record(seed, time.time() - t0, dataset=mnist.name, data_source=mnist.source)}
            checkpoint.save(path, params, meta)
            out[seed] = (model, params, _identified(meta, path))
            partial.unlink(missing_ok=True)
    return [out[s] for s in seeds]


def _identified(meta: dict, path: pathlib.Path) -> dict:
    """``meta`` with the checkpoint it came from: ``checkpoint`` (file name) and ``checkpoint_sha256``."""
    return {**meta, "checkpoint": path.name, "checkpoint_sha256": checkpoint.file_sha256(path)}


def attack(name: str, params, images, targets, *, tag: str, split: str = "train", seed: int = 0,
           cfg: train.TrainConfig = train.TrainConfig(), attack_cfg: attacks.AttackConfig = attacks.AttackConfig(),
           workdir="workdir", chunk_size: int = 256, progress=None, dataset: str = "mnist") -> attacks.AttackResult:
    """The L-BFGS attack on registry model ``name`` (weights ``params``, as ``trained`` made them) over
    ``images`` in resumable chunks, cached per (model checkpoint, ``tag``, number of images, attack
    config): ``tag`` names the image set, e.g. ``"train"`` or ``"test"``; ``dataset`` the dataset the model
    was trained on (its recipe: ``trained``). A rerun loads the chunks.

    Returns:
      ``AttackResult`` of numpy arrays, in the order of ``images``.
    """
    stem = checkpoint_path(workdir, name, split, seed, cfg, dataset).stem
    cache = pathlib.Path(workdir) / "attacks" / f"{stem}_{tag}{len(images)}_{storage.cache_key(attack_cfg)}"
    return attacks.attack_in_chunks(Partial(models.build(name).apply, params), images, targets, config=attack_cfg,
                                    chunk_size=chunk_size, cache_dir=cache, progress=progress)


def seed_groups(runs: dict) -> list[list[tuple[str, dict]]]:
    """Runs of one model, split and configuration (``model``, ``split``, ``config_key`` of each
    ``label -> run`` record) trained with several seeds: one list per such group of ``(label without its
    ", seed N" suffix, run)``, one run per seed (a label that names its seed wins), sorted by seed."""
    groups: dict = {}
    for label, r in runs.items():
        by_seed = groups.setdefault((r["model"], r["split"], r["config_key"]), {})
        if r.get("seed", 0) not in by_seed or ", seed " in label:
            by_seed[r.get("seed", 0)] = (label.rsplit(", seed", 1)[0], r)
    return [sorted(v.values(), key=lambda lr: lr[1].get("seed", 0)) for v in groups.values() if len(v) > 1]
