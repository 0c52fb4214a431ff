"""Shared CLI plumbing for the experiment scripts: logging, data, progress bars, and the cached steps
(trained models, attacks) that the pipelines compose."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import time

import jax
import numpy as np
from jax.tree_util import Partial
from tqdm.auto import tqdm

from intriguing_jax import attacks, compile_cache, data, models, noise, provenance, storage, train, transfer, zoo


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default="workdir", help="checkpoints and caches (never committed)")
    p.add_argument("--results", default="results", help="where JSON/Markdown/PNG results go")
    p.add_argument("--data-source", default="auto", choices=("auto",) + data.SOURCES,
                   help="MNIST source (auto tries cache, IDX dir, TFDS, then the offline PyPI wheel)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: <workdir>/jax_cache, or "
                        f"${compile_cache.ENV}); with it, a rerun loads compiled programs instead of compiling")
    return p


def setup(args) -> data.MNIST:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.no_compile_cache:
        path = compile_cache.enable(compile_cache.default_dir(args.workdir))
        logging.getLogger(__name__).info("persistent compilation cache: %s", path)
    return data.load_mnist(args.data_source)


def log_compile_cache() -> None:
    """Logs how many programs this run loaded from the compilation cache and how many it compiled."""
    s = compile_cache.stats()
    logging.getLogger(__name__).info("compilation cache: %d program(s) loaded, %d compiled", s["hits"],
                                     s["misses"])


def epoch_bar(total: int, desc: str):
    """A tqdm bar advanced once per epoch, showing the epoch's mean loss; returns (bar, callback)."""
    bar = tqdm(total=total, desc=desc, unit="epoch", leave=False)

    def on_epoch(epoch: int, loss: float):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    return bar, on_epoch


@dataclasses.dataclass(frozen=True)
class Context:
    """What every pipeline of one run shares: where things go, the seed, the configs and the sizes."""

    workdir: str = "workdir"
    results: str = "results"
    seed: int = 0
    train_cfg: train.TrainConfig = train.TrainConfig()
    attack_cfg: attacks.AttackConfig = attacks.AttackConfig()
    num_images: int = 1000
    chunk_size: int = 256

    @property
    def out(self) -> pathlib.Path:
        return pathlib.Path(self.results)

    def key(self, *path: int) -> jax.Array:
        k = jax.random.key(self.seed)
        for p in path:
            k = jax.random.fold_in(k, p)
        return k


def trained(ctx: Context, mnist: data.MNIST, name: str, split: str = "train"):
    """``zoo.trained`` with a progress bar: ``(model, params, meta)``, cached under ``ctx.workdir``."""
    epochs = zoo.resolved_config(name, ctx.train_cfg, split).epochs
    bar, on_epoch = epoch_bar(epochs, f"train {name} on {split}")
    try:
        return zoo.trained(name, mnist, split=split, seed=ctx.seed, cfg=ctx.train_cfg,
                           workdir=ctx.workdir, on_epoch=on_epoch)
    finally:
        bar.close()


def classifier(model: models.Model, params):
    """images -> predicted labels (numpy), for error-rate tables."""
    return lambda images: train.predict(model.apply, params, images)


def attack(ctx: Context, name: str, split: str, model: models.Model, params, images, targets,
           tag: str) -> attacks.AttackResult:
    """The L-BFGS attack over ``images`` in resumable chunks, cached per (model checkpoint, ``tag``,
    number of images, attack config); ``tag`` names the image set, e.g. ``"train"`` or ``"test"``."""
    stem = zoo.checkpoint_path(ctx.workdir, name, split, ctx.seed, ctx.train_cfg).stem
    cache = (pathlib.Path(ctx.workdir) / "attacks"
             / f"{stem}_{tag}{len(images)}_{storage.cache_key(ctx.attack_cfg)}")
    with tqdm(total=len(images), desc=f"attack {name} ({tag})", unit="img", leave=False) as bar:
        return attacks.attack_in_chunks(Partial(model.apply, params), images, targets,
                                        config=ctx.attack_cfg, chunk_size=ctx.chunk_size,
                                        cache_dir=cache, progress=bar.update)


def attack_summary(ctx: Context, model: models.Model, params, images, targets, cache_dir=None) -> dict:
    """``attacks.summarize`` of the attack on ``images`` (chunks cached in ``cache_dir`` if given)."""
    return attacks.summarize(attacks.attack_in_chunks(Partial(model.apply, params), images, targets,
                                                      config=ctx.attack_cfg, chunk_size=ctx.chunk_size,
                                                      cache_dir=cache_dir))


def gaussian_rows(key, images, stddev) -> dict:
    """Table rows of one Gaussian-noise draw: unclipped (the paper's reading: realised RMS = stddev) and
    the same draw clipped to [0, 1] (row name + ``transfer.CLIPPED``)."""
    return {f"Gaussian noise, stddev {stddev}{tag}": np.asarray(noise.gaussian_noise(key, images, stddev, clip=clip))
            for tag, clip in (("", False), (transfer.CLIPPED, True))}


def first_images(ctx: Context, split: data.Split, salt: int = 0):
    """The first ``ctx.num_images`` images of ``split``, their labels and seeded random wrong targets."""
    x, y = split.images[: ctx.num_images], split.labels[: ctx.num_images]
    key = ctx.key() if salt == 0 else ctx.key(salt)
    return x, y, np.asarray(attacks.random_wrong_targets(key, y))


def publish(ctx: Context, json_name: str, md_name: str, result: dict, render) -> dict:
    """Writes a pipeline's result as JSON (machines) and its rendered Markdown section (people)."""
    storage.write_json(ctx.out / json_name, result)
    storage.write_text(ctx.out / md_name, render(result))
    return result


def record(ctx: Context, t0: float, **extra) -> dict:
    """Provenance of a pipeline run: command, seed, versions, machine, wall time and the run's configs."""
    return provenance.record(ctx.seed, time.time() - t0, train_config=dataclasses.asdict(ctx.train_cfg),
                             attack_config=dataclasses.asdict(ctx.attack_cfg), num_images=ctx.num_images, **extra)
