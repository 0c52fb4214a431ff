"""Positive controls for adversarial training: can known-good methods lower FC100-100-10's clean error?

    python -m experiments.advtrain_controls      # alone; also the pipeline `reproduce --only controls`

Weight decay alone (5 seeds: the zoo's checkpoints, so seed 0 is Table 1's model) against FGSM training (Goodfellow et al. 2015), L2 adversarial training,
virtual adversarial training (Miyato et al. 2018) and dropout, each with the baseline's recipe and epochs
(``intriguing_jax.robust_training``). Every strength trains with 3 seeds as one population; the best
strength of each kind then gets 2 more seeds (5 in all). Writes results/adversarial_training_controls.json
and .md, and adds the controls to results/adversarial_training.json, whose report shows them beside the pools.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

from experiments import adversarial_training as pools
from experiments import common
from experiments.harness import report, runs, sharing, verdicts
from intriguing_jax import models, train, zoo
from intriguing_jax import robust_training as rt

BASELINE = pools.BASELINE
# kind -> (loss, its strengths: setting name -> values, one population member per value and seed)
KINDS = {BASELINE: (train.ClassifierLoss, {}),
         "FGSM": (rt.FGSMLoss, {"epsilon": [0.1, 0.25]}),
         "L2 adversarial": (rt.L2AdversarialLoss, {"epsilon": [1.0, 2.0, 3.0]}),
         "VAT": (rt.VATLoss, {"epsilon": [2.0]}),
         "dropout": (rt.DropoutLoss, {"dropout_input": [0.2], "dropout_hidden": [0.5]})}
SEEDS, MORE = (0, 1, 2), (3, 4)


def _name(kind: str, setting: dict) -> str:
    return kind if not setting else f"{kind} ({', '.join(f'{k} {v:g}' for k, v in setting.items())})"


def run(ctx: common.Context, mnist, kinds=tuple(KINDS), seeds=SEEDS, more=MORE) -> dict:
    t0, cfg = time.time(), zoo.resolved_config(pools.MODEL, ctx.train_cfg, dataset=ctx.dataset)
    x, _, t = common.first_images(ctx, mnist.test)
    ev = runs.Evaluation(x, t, final=pools.FINAL_IMAGES, attack=ctx.attack_cfg, chunk_size=ctx.chunk_size)
    loss_of = {k: KINDS[k][0](models.build(pools.MODEL), cfg.decay) for k in kinds}

    def population(kind, values, member_seeds):  # every (strength, seed) pair one member
        n = len(next(iter(values.values()), [0]))
        settings = {k: [v for v in vs for _ in member_seeds] for k, vs in values.items()}
        bar, tick = common.epoch_bar(cfg.epochs, f"{kind} ({n * len(member_seeds)} members)")
        with bar:
            return runs.population_runs(pools.MODEL, mnist, kind, loss_of[kind], settings,
                                        [ctx.seed + s for _ in range(n) for s in member_seeds], cfg, ev, ctx.workdir,
                                        lambda e, losses: tick(e, sum(losses) / len(losses)))

    def baseline():  # the zoo's checkpoints: the models Table 1 and the pools' report use
        return [{**r, "setting": {}} for r in runs.zoo_runs(BASELINE, common.trained_seeds(
            ctx, mnist, pools.MODEL, [ctx.seed + s for s in seeds + more]), ev, ctx.workdir)]

    def studied(kind):
        return baseline() if kind == BASELINE else population(kind, KINDS[kind][1], seeds)

    # each population computed once by the processes sharing the workdir (reproduce --jobs' helpers)
    study, shared = {}, sharing.each({k: functools.partial(studied, k) for k in kinds}, ctx.workdir, "controls study")
    for kind in kinds:
        for r in shared[kind]:
            study.setdefault(_name(kind, r["setting"]), []).append(r)
    best = {kind: min((n for n in study if n.startswith(kind)), key=lambda n: sum(r["test_error"] for r in study[n]))
            for kind in kinds}
    extra = sharing.each({k: functools.partial(population, k, {s: [v] for s, v in study[best[k]][0]["setting"].items()}, more)
                          for k in kinds if k != BASELINE}, ctx.workdir, "controls more seeds")
    controls = {best[k]: study[best[k]] + extra.get(k, []) for k in kinds}
    result = {"model": pools.MODEL, "epochs": cfg.epochs, "seeds": [ctx.seed + s for s in seeds + more], "study_seeds": len(seeds),
              "study": {n: summary(rs) for n, rs in study.items()}, "controls": {n: summary(rs) for n, rs in controls.items()},
              "runs": controls, "train_config": dataclasses.asdict(ctx.train_cfg),
              "provenance": common.record(ctx, t0, pipeline="advtrain_controls")}
    report.publish(ctx.out, "adversarial_training_controls.json", "adversarial_training_controls.md", result, render)
    join_pools_report(ctx.out)
    return result


def join_pools_report(out) -> None:
    """Adds the controls recorded in ``out`` to the pools' result there, whose report shows them beside the
    pools (nothing where either file is missing or the pools already carry these controls)."""
    mine, main_json = out / "adversarial_training_controls.json", out / "adversarial_training.json"
    if not (mine.exists() and main_json.exists()):
        return
    made, pools_result = json.loads(mine.read_text()), json.loads(main_json.read_text())
    if pools_result.get("controls_provenance") != made["provenance"]:
        merged = {**pools_result, "controls": made["controls"], "controls_provenance": made["provenance"]}
        report.publish(out, "adversarial_training.json", "adversarial_training.md", merged, pools.render)


def summary(rs: list[dict]) -> dict:
    """A control's runs as the report reads them: per-seed numbers and their mean and spread."""
    te = [r["test_error"] for r in rs]
    return {"seeds": [r["seed"] for r in rs], "setting": rs[0]["setting"], "test_errors": te,
            "train_errors": [r["train_error"] for r in rs], "distortions": [r["attack"]["mean_distortion"] for r in rs],
            "test_error_mean": sum(te) / len(te), "test_error_min": min(te), "test_error_max": max(te),
            "wall_s_mean": sum(r["wall_s"] for r in rs) / len(rs), "computed_at": [r.get("computed_at") for r in rs]}


PAPER_SOURCE = None  # a check of our training machinery, not a claim of the paper


def claims(result: dict) -> list:
    """The controls' reading, ``Verdict`` by rule: does any known-good method beat weight decay alone?"""
    return [verdicts.controls_beat_baseline(result["controls"], BASELINE)]


def render(result: dict) -> str:
    return ("## Positive controls for adversarial training\n\n"
            f"{result['model']}, {result['epochs']} epoch(s), the baseline's optimiser and weight decay for every run; "
            f"each strength with {result['study_seeds']} seed(s) (study), the best of each kind with {len(result['seeds'])}. "
            "Perturbed images are clipped to [0, 1].\n\n### Study\n\n" + verdicts.controls_table(result["study"])
            + f"\n### Each kind's best, {len(result['seeds'])} seeds\n\n"
            + verdicts.controls_table(result["controls"]) + "\n"
            + verdicts.bullets(claims(result)) + "\n\n"
            + report.provenance_line(result["provenance"]) + "\n")


def main(argv=None):
    args = common.parse_args(common.base_parser(__doc__.splitlines()[0]), argv)
    mnist = common.setup(args)
    run(common.Context(args.workdir, args.results, args.seed, dataset=args.dataset), mnist)


if __name__ == "__main__":
    main()
