"""Adversarial-training runs on disk and the study over them.

A run is one ``adversarial_training.fit`` of a registry model with one pool configuration and seed, its
test and train error after every epoch, the attack's mean minimum distortion every few epochs and on
more test images at the end. It checkpoints every epoch (weights, optimiser, pools), resumes after a
kill, and once finished is cached as JSON keyed by its label, seed, the resolved training config and
the pool config. ``best_per_layer_set`` picks, for each set of pool layers, the study configuration
with the lowest mean test error.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable

import jax
from jax.tree_util import Partial

from intriguing_jax import adversarial_training as at
from experiments.harness import report, verdicts
from intriguing_jax import attacks, checkpoint, models, provenance, storage, train, zoo
from intriguing_jax.data import MNIST


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run is measured: test images attacked (with their targets) every ``every`` epochs (the first
    ``during`` of them) and at the end (the first ``final``), with ``attack`` in chunks of ``chunk_size``."""

    images: object
    targets: object
    every: int = 10
    during: int = 100
    final: int = 300
    attack: attacks.AttackConfig = attacks.AttackConfig()
    chunk_size: int = 256


def _summary(model, params, x, t, ev: Evaluation, cache_dir=None) -> dict:
    return attacks.summarize(attacks.attack_in_chunks(Partial(model.apply, params), x, t, config=ev.attack,
                                                      chunk_size=ev.chunk_size, cache_dir=cache_dir))


def run(model_name: str, mnist: MNIST, label: str, adv: at.AdvTrainConfig, seed: int, cfg: train.TrainConfig,
        ev: Evaluation, workdir, on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """One adversarial-training run, cached under ``<workdir>/adversarial_training``.

    Args:
      model_name: a registry model with pool spaces (the MLPs). mnist: the data (trains on its train split).
      label: the run's name (in its cache key and result). adv: the pools. seed: the run's PRNG seed.
      cfg: the training config (its epochs resolved as for any run of the model: ``zoo.resolved_config``).
      ev: what is measured (``Evaluation``). workdir: checkpoints and cached results.
      on_epoch: called with ``(epoch, mean training loss)`` after each epoch (progress).

    Returns:
      dict: ``variant``, ``layers``, ``seed``, ``epochs``, ``history`` (per epoch, ``fit``'s record plus
      ``test_error``, and every ``ev.every`` epochs and at the last ``train_error`` — a pass over the whole
      training set, a fifth of an epoch's time — and ``distortion``), final ``test_error``,
      ``train_error``, ``attack`` (summary on ``ev.final`` images), ``wall_s`` (every epoch, also those
      before a resume, and the final attack), ``pool_s`` (pool generation) and ``adv_config``.
    """
    model, cfg = models.build(model_name), zoo.resolved_config(model_name, cfg, dataset=mnist.name)
    stem = f"{storage.safe_name(label)}_s{seed}_{zoo.config_key(model_name, cfg, dataset=mnist.name)}_{storage.cache_key(adv)}"
    work = pathlib.Path(workdir) / "adversarial_training"
    if (work / f"{stem}.json").exists():  # finished earlier: reuse
        return json.loads((work / f"{stem}.json").read_text())

    def measure(epoch, params, loss):
        if on_epoch is not None:
            on_epoch(epoch, loss)
        rec = {"test_error": train.error_rate(model.apply, params, mnist.test)}
        if (epoch + 1) % ev.every == 0 or epoch + 1 == cfg.epochs:
            rec["train_error"] = train.error_rate(model.apply, params, mnist.train)
            rec["distortion"] = _summary(model, params, ev.images[:ev.during], ev.targets[:ev.during], ev)["mean_distortion"]
        return rec

    params, history = at.fit(model, mnist.train, jax.random.key(seed), cfg, adv,
                             checkpoint_path=work / f"{stem}.ckpt", on_epoch=measure)
    t_attack = time.time()
    final = _summary(model, params, ev.images[:ev.final], ev.targets[:ev.final], ev, work / f"{stem}_attack")
    # every epoch, also those before a resume (an epoch checkpointed by an older version has no seconds)
    wall = sum(h.get("seconds", 0.0) for h in history) + time.time() - t_attack
    out = {"variant": label, "layers": list(adv.layers), "seed": seed, "epochs": cfg.epochs, "history": history,
           "test_error": history[-1]["test_error"], "train_error": history[-1]["train_error"],
           "attack": {k: final[k] for k in ("n", "success_rate", "mean_distortion", "median_distortion")},
           "wall_s": wall, "pool_s": sum(h.get("pool_seconds", 0.0) for h in history),
           "adv_config": dataclasses.asdict(adv), "computed_at": provenance.now(),
           "params_sha256": checkpoint.params_sha256(params)}
    storage.write_json(work / f"{stem}.json", out)
    return out


def zoo_runs(label: str, trained: list, ev: Evaluation, workdir) -> list[dict]:
    """Models the zoo trained (``zoo.trained_seeds``'s ``(model, params, meta)``, plain training: no
    pools) measured as ``run`` measures a run, so that weight decay alone is the very checkpoint Table 1
    uses, not a second training of the same recipe. The final attack is cached per checkpoint.

    Returns:
      ``run``'s dict per model: ``history`` holds each epoch's training loss, and the last epoch also its
      errors and the attack's distortion on ``ev.during`` images (as ``run`` measures every ``ev.every``
      epochs); ``wall_s`` the model's training time, ``checkpoint_sha256`` the checkpoint's.
    """
    out = []
    for model, params, meta in trained:
        stem = pathlib.Path(workdir) / "adversarial_training" / pathlib.Path(meta["checkpoint"]).stem
        key = storage.cache_key(ev.attack)
        final = _summary(model, params, ev.images[:ev.final], ev.targets[:ev.final], ev, f"{stem}_final{ev.final}_{key}")
        during = _summary(model, params, ev.images[:ev.during], ev.targets[:ev.during], ev,
                          f"{stem}_during{ev.during}_{key}")["mean_distortion"]
        history = [{"epoch": e + 1, "loss": v} for e, v in enumerate(meta["loss_history"])]
        history[-1].update(test_error=meta["test_error"], train_error=meta["train_error"], distortion=during)
        out.append({"variant": label, "layers": [], "seed": meta["provenance"]["seed"],
                    "epochs": len(meta["loss_history"]), "test_error": meta["test_error"],
                    "train_error": meta["train_error"], "history": history,
                    "attack": {k: final[k] for k in ("n", "success_rate", "mean_distortion", "median_distortion")},
                    "wall_s": meta["provenance"]["wall_time_s"], "pool_s": 0.0,
                    "adv_config": dataclasses.asdict(at.AdvTrainConfig(layers=())),
                    "computed_at": meta["provenance"].get("date"), "checkpoint_sha256": meta["checkpoint_sha256"]})
    return out


def runs(model_name: str, mnist: MNIST, label: str, adv: at.AdvTrainConfig, seeds, cfg: train.TrainConfig,
         ev: Evaluation, workdir, on_epoch: Callable[[int, float], None] | None = None) -> list[dict]:
    """``run`` for several seeds: the seeds not yet cached train together as one population
    (``adversarial_training.fit_population``: one jitted step for all, one attack call per pool refresh),
    checkpointed every epoch (a killed population resumes), each member then measured and cached exactly
    where ``run`` caches that seed. A member's ``wall_s`` and ``pool_s`` are its share of the population's.

    Returns:
      ``run``'s dict per seed, in the order of ``seeds`` (members trained together also carry
      ``population``: how many).
    """
    model, cfg = models.build(model_name), zoo.resolved_config(model_name, cfg, dataset=mnist.name)
    work = pathlib.Path(workdir) / "adversarial_training"
    keys = f"{zoo.config_key(model_name, cfg, dataset=mnist.name)}_{storage.cache_key(adv)}"
    stems = {s: f"{storage.safe_name(label)}_s{s}_{keys}" for s in seeds}  # as run names them
    todo = [s for s in seeds if not (work / f"{stems[s]}.json").exists()]
    if todo:
        def measure(epoch, params, losses):
            if on_epoch is not None:
                on_epoch(epoch, float(sum(losses) / len(losses)))
            out = []
            for m in range(len(todo)):
                p = train.member(params, m)
                rec = {"test_error": train.error_rate(model.apply, p, mnist.test)}
                if (epoch + 1) % ev.every == 0 or epoch + 1 == cfg.epochs:
                    rec["train_error"] = train.error_rate(model.apply, p, mnist.train)
                    rec["distortion"] = _summary(model, p, ev.images[:ev.during], ev.targets[:ev.during], ev)["mean_distortion"]
                out.append(rec)
            return out

        ckpt = work / f"{storage.safe_name(label)}_pop{'-'.join(map(str, todo))}_{keys}.ckpt"
        params, histories = at.fit_population(model, mnist.train, jax.numpy.stack([jax.random.key(s) for s in todo]), cfg,
                                              adv, checkpoint_path=ckpt, on_epoch=measure)
        for m, seed in enumerate(todo):
            t_attack, p, history = time.time(), train.member(params, m), histories[m]
            final = _summary(model, p, ev.images[:ev.final], ev.targets[:ev.final], ev, work / f"{stems[seed]}_attack")
            out = {"variant": label, "layers": list(adv.layers), "seed": seed, "epochs": cfg.epochs, "history": history,
                   "test_error": history[-1]["test_error"], "train_error": history[-1]["train_error"],
                   "attack": {k: final[k] for k in ("n", "success_rate", "mean_distortion", "median_distortion")},
                   "wall_s": sum(h.get("seconds", 0.0) for h in history) + time.time() - t_attack,
                   "pool_s": sum(h.get("pool_seconds", 0.0) for h in history), "population": len(todo),
                   "adv_config": dataclasses.asdict(adv), "computed_at": provenance.now(),
                   "params_sha256": checkpoint.params_sha256(p)}
            storage.write_json(work / f"{stems[seed]}.json", out)
        ckpt.unlink(missing_ok=True)
    return [json.loads((work / f"{stems[s]}.json").read_text()) for s in seeds]


def population_runs(model_name: str, mnist: MNIST, label: str, loss, settings: dict, seeds, cfg: train.TrainConfig,
                    ev: Evaluation, workdir, on_epoch: Callable[[int, list], None] | None = None) -> list[dict]:
    """Members trained as one population (``train.fit_population`` with ``loss`` and per-member
    ``settings`` [M], e.g. one ε per member) and measured as ``run`` measures a run: final test and train
    error and the attack on ``ev.final`` test images. Checkpointed every epoch (resumes after a kill) and
    cached as JSON keyed by the label, the loss, the settings, the seeds and the resolved config.

    Returns:
      one dict per member: ``variant``, ``seed``, ``setting`` (its numbers), ``epochs``, ``test_error``,
      ``train_error``, ``attack``, ``wall_s`` (its share of the population's training time), ``loss`` (each
      epoch's mean training loss).
    """
    model, cfg = models.build(model_name), zoo.resolved_config(model_name, cfg, dataset=mnist.name)
    described = {f.name: getattr(loss, f.name) for f in dataclasses.fields(loss) if f.name != "model"}
    key = storage.cache_key({"loss": type(loss).__name__, **described, "settings": {k: [float(v) for v in vs] for k, vs in settings.items()},
                             "seeds": list(seeds), "train": zoo.config_key(model_name, cfg, dataset=mnist.name)})
    work = pathlib.Path(workdir) / "robust_training"
    stem = f"{storage.safe_name(label)}_{key}"
    if (work / f"{stem}.json").exists():
        return json.loads((work / f"{stem}.json").read_text())
    t0 = time.time()
    params, history = train.fit_population(model, mnist.train, jax.numpy.stack([jax.random.key(s) for s in seeds]), cfg,
                                           loss=loss, settings=settings, checkpoint_path=work / f"{stem}.partial",
                                           on_epoch=on_epoch)
    wall = (time.time() - t0) / len(seeds)
    out = []
    for m, seed in enumerate(seeds):
        p = train.member(params, m)
        final = _summary(model, p, ev.images[:ev.final], ev.targets[:ev.final], ev, work / f"{stem}_m{m}_attack")
        out.append({"variant": label, "seed": seed, "setting": {k: float(v[m]) for k, v in settings.items()},
                    "epochs": cfg.epochs, "test_error": train.error_rate(model.apply, p, mnist.test),
                    "train_error": train.error_rate(model.apply, p, mnist.train),
                    "attack": {k: final[k] for k in ("n", "success_rate", "mean_distortion", "median_distortion")},
                    "wall_s": wall, "loss": [h[m] for h in history], "computed_at": provenance.now(),
                    "params_sha256": checkpoint.params_sha256(p)})
    storage.write_json(work / f"{stem}.json", out)
    (work / f"{stem}.partial").unlink(missing_ok=True)
    return out


def best_per_layer_set(summary: dict, layer_sets: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """For each named set of pool layers, the configuration of ``summary`` (``summarize_runs``'s, each
    with ``layers``) with those layers and the lowest mean test error; sets with none are left out."""
    out = {}
    for name, layers in layer_sets.items():
        same = [n for n, s in summary.items() if tuple(s["layers"]) == tuple(layers)]
        if same:
            out[name] = min(same, key=lambda n: summary[n]["test_error_mean"])
    return out


def summary_table(rows: list[tuple[str, dict]], first: str = "Configuration") -> str:
    """Markdown table of ``summarize_runs`` rows: pool layers, test error (mean ± half the seeds' spread),
    train error, the attack's distortion, the last epoch's pool attacks (success / kept / distortion) and
    the wall time per run (the share spent generating pool examples)."""
    def pools(x):
        return ("–" if x["pool_success"] is None else
                f"{report.pct(x['pool_success'], 1)} / {report.pct(x['pool_kept'], 1)} / {x['pool_distortion']:.3f}")

    def row(name, x):
        return [name, str(tuple(x["layers"])) if x["layers"] else "–",
                f"{report.pct(x['test_error_mean'])} ± {report.pct(x['test_error_spread'] / 2)}",
                report.pct(x["train_error_mean"]), f"{x['distortion_mean']:.4f}", pools(x),
                f"{x['wall_s_mean']:.0f} s" + ("" if x["pool_share"] is None else f" ({report.pct(x['pool_share'], 0)})")]
    return report.table([first, "Pool layers", "Test error", "Train error", "Av. min. distortion",
                         "Pool attacks: success / kept / distortion", "Wall per run (pool generation)"],
                        [row(n, x) for n, x in rows])


def runs_table(runs: dict) -> str:
    """Markdown table of every run (variant -> runs): seed, test and train error, distortion, wall time."""
    return report.table(["Variant", "Seed", "Test error", "Train error", "Distortion", "Wall"],
                        [[v, r["seed"], report.pct(r["test_error"]), report.pct(r["train_error"]),
                          report.num(r["attack"]["mean_distortion"], 4), f"{r['wall_s']:.0f} s"]
                         for v, rs in runs.items() for r in rs])


def method(model: str, epochs: int, recipe: int, cfg: dict, final_images: int) -> str:
    """The report's paragraph on how the runs were made: ``epochs`` of the final runs against the model's
    ``recipe`` epochs, ``cfg`` the pools' shared settings (an ``AdvTrainConfig`` as a dict),
    ``final_images`` attacked at the end."""
    length = f"{epochs} epoch{'s' * (epochs != 1)}"
    length += (", as Table 1's model" if recipe == epochs else f" where Table 1's {model} trains {recipe}")
    return (f"{model}, the same optimiser for every run; the final runs train {length}. "
            "Pools (the paper gives no sizes or schedule): "
            f"{cfg['pool_size']:,} slots per layer; every {cfg['refresh_every']} steps {cfg['refresh_count']} "
            "training images per pool are attacked against the current weights (L-BFGS, "
            f"{cfg['attack']['c_steps']} values of c, {cfg['attack']['maxiter']} iterations) and written into "
            f"empty, then random slots; {cfg['pool_batch']} pool examples per pool per step; loss "
            "(1 − mix)·CE(clean) + mix·mean CE(pools). Layer 0 = input, 1 and 2 "
            "= the hidden layers' outputs; each pool trains the layers above it. Pool attacks: the last epoch's "
            "share of attacks that reached their target / written into the pool / their mean distortion (RMS in "
            "the layer's space). Av. min. distortion: the full attack on the first "
            f"{final_images} test images (seeded random wrong targets). ± is half the spread (max − min) over seeds.")


def controls_section(result: dict, baseline: str) -> str:
    """The report's positive controls (``experiments.advtrain_controls``) beside the pools, if ``result``
    has them: their table and what they say about the pools (rules in ``verdicts``)."""
    if "controls" not in result:
        return ""
    return ("### Positive controls (`python -m experiments.advtrain_controls`)\n\n" + verdicts.controls_table(result["controls"])
            + "\n" + verdicts.bullets([verdicts.controls_beat_baseline(result["controls"], baseline),
                                       verdicts.settled(result["controls"], result["summary"], baseline)]) + "\n\n")
