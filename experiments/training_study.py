"""A recorded study of the training choices the paper leaves open (issue: models as good as the paper's).

    python -m experiments.training_study --study fc10      # weight-decay conventions on the FC10 rows
    python -m experiments.training_study --study fc        # optimiser / decay for FC100-100-10
    python -m experiments.training_study --study ae        # AE400-10's sparse autoencoder recipe
    python -m experiments.training_study --dataset fashion_mnist   # the recipe study on another dataset

Each run trains a registry model with one ``TrainConfig`` through ``zoo.trained`` (cached under --workdir:
a study resumes, the pipelines reuse its models); results/training_study.json and .md hold every run.
The studies fc10 ... fc8 are MNIST's history, which chose the registry's recipes. On another dataset the
default is the recipe study (``--study recipes``): each model's registry recipe against the challengers
of ``training_recipes.RECIPE_CHALLENGERS``, three seeds each, chosen on a held-out validation sixth of the
training set by ``verdicts.recipe_choice``; what it chooses belongs in ``models.DATASET_RECIPES``.
"""

from __future__ import annotations

import dataclasses
import json
import time

from experiments import common
from experiments.training_recipes import LAMBDA_SCAN, RECIPE_CHALLENGERS, SEEDS, STUDIES, T, changes_label
from experiments.harness import paper, report, runtime, verdicts
from intriguing_jax import compile_cache, data, models, train, zoo


def lambda_scan(ctx, mnist, convention: str) -> dict:
    """Train error of FC10 with other λ, the recipe before the study (not registry models: not cached)."""
    out = {}
    for name, lams in LAMBDA_SCAN.items():
        for lam in lams:
            spec = dataclasses.replace(models.spec(name), name=f"FC10({lam:g})", weight_decay={"dense_0": lam})
            model = models.build(spec)
            params, _ = train.fit(model, mnist.train, ctx.key(), T(decay=convention))
            out[f"{name} with λ = {lam:g} / {convention}"] = {"model": name, "lambda": lam, **{
                f"{s}_error": train.error_rate(model.apply, params, mnist.split(s)) for s in ("train", "test")}}
    return out


def recipe_study(ctx: common.Context, mnist, names=tuple(RECIPE_CHALLENGERS), seeds=SEEDS) -> dict:
    """Each model's registry recipe and its challengers (``RECIPE_CHALLENGERS``), ``seeds`` each (shifted by
    ``--seed``), trained on the "fit" split and measured on "val" (and, for the record, on the test set);
    the choice by ``verdicts.recipe_choice``. Returns ``model -> {"candidates", "verdict"}``."""
    out = {}
    for name in names:
        spec, candidates = models.spec(name), {}
        for changes in ({},) + RECIPE_CHALLENGERS[name]:
            t0 = time.time()
            cfg = train.TrainConfig(epochs=max(1, round(changes.get("epochs", spec.epochs) / data.TRAINING_SHARE["fit"])),
                                    learning_rate=changes.get("learning_rate", spec.learning_rate))
            trained = common.trained_seeds(dataclasses.replace(ctx, train_cfg=cfg), mnist, name,
                                           [ctx.seed + s for s in seeds], split="fit")
            errors = {s: [train.error_rate(m.apply, p, mnist.split(s)) for m, p, _ in trained] for s in ("fit", "val", "test")}
            candidates[changes_label(changes)] = {
                "changes": changes, "config": dataclasses.asdict(cfg), "seeds": [ctx.seed + s for s in seeds],
                **{f"{s}_errors": e for s, e in errors.items()},
                "checkpoint_sha256": [meta["checkpoint_sha256"] for _, _, meta in trained],
                "train_wall_s": sum(runtime.training_cost(meta)["train_wall_s"] for _, _, meta in trained),
                "this_call_s": time.time() - t0}
        out[name] = {"candidates": candidates, "verdict": verdicts.recipe_choice(name, candidates)._asdict()}
    return out


def run(ctx: common.Context, mnist, studies, scan: str | None = None, recipe_models=tuple(RECIPE_CHALLENGERS)) -> dict:
    started = time.time()  # provenance: the whole command's wall time, whatever part of it last wrote the file
    path = ctx.out / "training_study.json"
    result = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if "recipes" in studies:
        result["recipe_study"] = recipe_study(ctx, mnist, recipe_models)
        result["chosen"] = {m: s["verdict"]["numbers"]["changes"] for m, s in result["recipe_study"].items()}
        result["provenance"] = common.record(ctx, started, pipeline="training_study")
        report.publish(ctx.out, "training_study.json", "training_study.md", result, render)
        studies = [s for s in studies if s != "recipes"]
    known = {label for runs in STUDIES.values() for label in runs}
    result["runs"] = {k: v for k, v in result["runs"].items() if k in known}  # runs of a study since renamed
    if scan:
        result["lambda_scan"] = lambda_scan(ctx, mnist, scan)
        result["provenance"] = common.record(ctx, started, pipeline="training_study")
        report.publish(ctx.out, "training_study.json", "training_study.md", result, render)
    for study in studies:
        groups = {}  # per (model, split, configuration): its seeds, each a zoo checkpoint
        for label, (name, split, cfg, seed) in STUDIES[study].items():
            groups.setdefault((name, split, cfg), []).append((label, ctx.seed + seed))  # --seed shifts them
        for (name, split, cfg), runs in groups.items():
            t0 = time.time()
            for (label, seed), (_, _, meta) in zip(runs, common.trained_seeds(
                    dataclasses.replace(ctx, train_cfg=cfg), mnist, name, [s for _, s in runs], split)):
                result["runs"][label] = {"study": study, "model": name, "split": split, "seed": seed,
                                         "config": dataclasses.asdict(cfg), "config_key": zoo.config_key(name, cfg, split, ctx.dataset),
                                         "train_error": meta["train_error"], "test_error": meta["test_error"],
                                         "checkpoint_sha256": meta["checkpoint_sha256"],
                                         **runtime.training_cost(meta), "this_call_s": time.time() - t0}
            result["provenance"] = common.record(ctx, started, pipeline="training_study", models={
                label: {k: r.get(k) for k in ("checkpoint_sha256", "test_error")} for label, r in result["runs"].items()})
            report.publish(ctx.out, "training_study.json", "training_study.md", result, render)
    return result


def render(result: dict) -> str:
    def ref(r):
        return paper.train_test_errors(r["model"], r["split"])
    body = [[label, report.pct(r["train_error"]), report.pct(ref(r)[0]), report.pct(r["test_error"]),
             report.pct(ref(r)[1]), f"{r['train_wall_s']:.0f} s"] for label, r in result["runs"].items()]
    groups = zoo.seed_groups(result["runs"])
    seeded = [[runs[-1][0], ", ".join(str(r.get("seed", 0)) for _, r in runs),
               report.pct(sum(r["test_error"] for _, r in runs) / len(runs)),
               f"{report.pct(min(r['test_error'] for _, r in runs))}–{report.pct(max(r['test_error'] for _, r in runs))}",
               report.pct(ref(runs[0][1])[1])] for runs in groups]
    scan = [[label, f"{r['lambda']:g}", report.pct(r["train_error"]), report.pct(paper.TABLE1[r["model"]][0]),
             report.pct(r["test_error"])] for label, r in result.get("lambda_scan", {}).items()]
    recipes = render_recipe_study(result) if "recipe_study" in result else ""
    if not result["runs"]:
        return recipes + "\n" + report.provenance_line(result["provenance"]) + "\n"
    return (recipes + "## Training study: the choices the paper leaves open\n\n"
            "Each row: a registry model trained with one configuration (seed 0 unless the label names another) on the 60,000 training images "
            "(on P1 where it says so: train error = error on the whole training set, paper = Table 3's error on P1 "
            "and test error); the paper's Table 1 errors beside ours otherwise. Weight-decay conventions for the spec's λ on a layer of k "
            "units beside the mean cross-entropy: per_unit λ·Σw²/k, sum λ·Σw², half_sum λ/2·Σw².\n\n"
            + report.table(["Model / configuration", "Train err", "(paper)", "Test err", "(paper)", "Train wall"], body)
            + ("\nConfigurations trained with several seeds (the same model, split and configuration; rows above "
               "with the same configuration, whatever their label, count as one):\n\n" + report.table(
                   ["Model / configuration", "Seeds", "Mean test err", "Range", "(paper)"], seeded) if seeded else "")
            + ("\nPer-row λ scan (FC10 with other λ, one convention):\n\n" + report.table(
                ["Run", "λ", "Train err", "(paper, the row's model)", "Test err"], scan) if scan else "")
            + "\n" + report.provenance_line(result["provenance"]) + "\n")


def render_recipe_study(result: dict) -> str:
    dataset = result["provenance"].get("dataset", "mnist")
    rows = [[name if i == 0 else "", label, report.pct(sum(c["val_errors"]) / len(c["val_errors"])),
             f"{report.pct(min(c['val_errors']))}–{report.pct(max(c['val_errors']))}",
             report.pct(sum(c["test_errors"]) / len(c["test_errors"])), report.pct(sum(c["fit_errors"]) / len(c["fit_errors"])),
             f"{c['config']['epochs']}", f"{c['train_wall_s']:.0f} s"]
            for name, s in result["recipe_study"].items() for i, (label, c) in enumerate(s["candidates"].items())]
    chosen = {m: s["verdict"]["numbers"]["changes"] for m, s in result["recipe_study"].items()}
    registry = {m: models.DATASET_RECIPES.get(dataset, {}).get(m, {}) for m in chosen}
    agree = ("The registry (`models.DATASET_RECIPES[\"" + dataset + "\"]`) holds these choices." if registry == chosen else
             "**The registry (`models.DATASET_RECIPES[\"" + dataset + "\"]`) differs from these choices** "
             f"({', '.join(f'{m}: {changes_label(registry[m])}' for m in chosen if registry[m] != chosen[m])}); "
             "runs on this dataset train with the registry's.")
    return (f"## Recipe study on {data.spec(dataset).title}\n\n"
            "Each model's registry recipe (chosen on MNIST) against challengers, seeds "
            f"{next(iter(next(iter(result['recipe_study'].values()))['candidates'].values()))['seeds']}, trained on the "
            "training set less a held-out sixth and compared on that sixth (validation); the test error is "
            "shown, never used. Epochs count passes over the full training set, scaled to the smaller set "
            "(the column gives the passes run).\n\n"
            + report.table(["Model", "Recipe", "Val err (mean)", "Val range", "Test err", "Fit err", "Epochs run", "Train wall"], rows)
            + "\n**Choices** (rule: `verdicts.recipe_choice` — a challenger replaces the registry's recipe only "
            "if every seed's validation error lies below every seed's of the registry's recipe; of several, the "
            "lowest mean):\n\n" + verdicts.bullets(verdicts.Verdict(**s["verdict"]) for s in result["recipe_study"].values())
            + "\n\n" + agree + "\n\n")


def main(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--study", nargs="*", choices=list(STUDIES) + ["recipes"], default=None,
                   help="default: MNIST's history (fc10 ... fc8) on MNIST, the recipe study on another dataset")
    p.add_argument("--lambda-scan", choices=train.DECAY_CONVENTIONS, default=None,
                   help="also scan FC10's λ under this convention (per-row λ that would match the paper)")
    args = common.parse_args(p, argv)
    mnist = common.setup(args)
    studies = args.study if args.study is not None else list(STUDIES) if args.dataset == "mnist" else ["recipes"]
    run(common.Context(args.workdir, args.results, args.seed, dataset=args.dataset), mnist, studies, args.lambda_scan)
    compile_cache.log_stats()


if __name__ == "__main__":
    main()
