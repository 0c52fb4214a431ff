"""Adversarial training with per-layer pools vs weight decay alone (end of Sec. 4.2); ``python -m
experiments.reproduce --only advtrain``. FC100-100-10: a recorded study of the choices the paper leaves
open (``STUDY``, short schedule, 2 seeds), then at full length (5 seeds) each pool-layer set's best
configuration and the best input pool with its examples past the decision boundary (``past_boundary``).
Each configuration's seeds train as one population (one jitted step, one attack call per pool refresh);
runs are cached and resume after a kill (``experiments.harness.runs``), and processes sharing the workdir
split the configurations (``experiments.harness.sharing``: ``reproduce --jobs``' helpers). Weight decay alone is no pool
run: it is the zoo's checkpoint of each seed, the model Table 1 attacks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

from experiments import common
from experiments.harness import figures, report, runs, sharing, verdicts
from intriguing_jax import adversarial_training as at
from intriguing_jax import train, zoo

MODEL, BASELINE = "FC100-100-10", "weight decay only"
VARIANTS = {BASELINE: (), "input pool": (0,), "hidden-layer pools": (1, 2), "top hidden-layer pool": (2,),
            "input + hidden-layer pools": (0, 1, 2)}
SEEDS, STUDY_SEEDS, STUDY_EPOCHS = (0, 1, 2, 3, 4), (0, 1), 15
EVAL_IMAGES, FINAL_IMAGES, CURVE_EVERY = 100, 300, 10  # attacked every CURVE_EVERY epochs / at the end
A, OLD = at.AdvTrainConfig, "input, failed attacks kept, filled at step 0 (before the study)"
STUDY = {BASELINE: A(layers=()), OLD: A(layers=(0,), keep_failed=True, initial_fill=True), "input, mix 0.5": A(layers=(0,)),
         "input, mix 0.2": A(layers=(0,), mix=0.2), "input, mix 0.1": A(layers=(0,), mix=0.1),
         "input, mix 0.03 (the pool's share of the data)": A(layers=(0,), mix=0.03),
         "input, runner-up targets, mix 0.2": A(layers=(0,), mix=0.2, target="runner_up"),
         "input, distortion ≤ 0.05": A(layers=(0,), max_distortion=0.05),
         "input, distortion ≤ 0.03": A(layers=(0,), max_distortion=0.03),
         "input, refresh every 50 steps, mix 0.2": A(layers=(0,), mix=0.2, refresh_every=50),
         "hidden, mix 0.5": A(layers=(1, 2)), "hidden, mix 0.2": A(layers=(1, 2), mix=0.2),
         "hidden, mix 0.03": A(layers=(1, 2), mix=0.03), "top hidden layer, mix 0.5": A(layers=(2,)),
         "top hidden layer, mix 0.2": A(layers=(2,), mix=0.2), "top hidden layer, mix 0.05": A(layers=(2,), mix=0.05),
         "top hidden layer, runner-up targets, mix 0.2": A(layers=(2,), mix=0.2, target="runner_up"),
         "input + hidden, mix 0.5": A(layers=(0, 1, 2)), "input + hidden, mix 0.1": A(layers=(0, 1, 2), mix=0.1)}


def run(ctx: common.Context, mnist, study=tuple(STUDY), seeds=SEEDS, study_seeds=STUDY_SEEDS) -> dict:
    t0, epochs = time.time(), zoo.resolved_config(MODEL, ctx.train_cfg, dataset=ctx.dataset).epochs
    x, _, t = common.first_images(ctx, mnist.test)
    ev = runs.Evaluation(x, t, CURVE_EVERY, EVAL_IMAGES, FINAL_IMAGES, ctx.attack_cfg, ctx.chunk_size)

    def group(name, adv, member_seeds, length):  # --seed shifts every run's seed, as in the training study
        if not adv.layers:  # weight decay alone: the zoo's checkpoints, the models Table 1 uses
            c = dataclasses.replace(ctx, train_cfg=dataclasses.replace(ctx.train_cfg, epochs=length))
            return runs.zoo_runs(name, common.trained_seeds(c, mnist, MODEL, [ctx.seed + s for s in member_seeds]),
                                 ev, ctx.workdir)
        bar, tick = common.epoch_bar(length, f"{name} ({len(member_seeds)} seeds)")
        with bar:
            return runs.runs(MODEL, mnist, name, adv, [ctx.seed + s for s in member_seeds],
                             dataclasses.replace(ctx.train_cfg, epochs=length), ev, ctx.workdir, tick)

    short = min(STUDY_EPOCHS, epochs)  # each group computed once by the processes sharing the workdir (--jobs helpers)
    study_runs = sharing.each({n: functools.partial(group, n, STUDY[n], study_seeds, short) for n in study},
                              ctx.workdir, f"advtrain study {short} epochs")
    summary = at.summarize_runs(study_runs)
    chosen = runs.best_per_layer_set(summary, VARIANTS)
    past = at.past_boundary(STUDY[chosen["input pool"]]) if "input pool" in chosen else {}
    configs = {**{v: STUDY[n] for v, n in chosen.items()}, **{f"input pool, {n}": adv for n, adv in past.items()}}
    final = sharing.each({v: functools.partial(group, v, adv, seeds, epochs) for v, adv in configs.items()},
                         ctx.workdir, f"advtrain final {epochs} epochs")
    path = ctx.out / "figures" / "adversarial_training.png"
    figure(path, final, ctx.dataset_title)
    result = {"model": MODEL, "seeds": [ctx.seed + s for s in seeds], "study_seeds": [ctx.seed + s for s in study_seeds],
              "study_epochs": short, "epochs": epochs,
              "study": [{"configuration": n, **summary[n], "config": study_runs[n][0]["adv_config"],
                         "test_errors": [r["test_error"] for r in study_runs[n]]} for n in study],
              "chosen": chosen, "summary": at.summarize_runs(final), "runs": final,
              "figure": str(path.relative_to(ctx.out)), "train_config": dataclasses.asdict(ctx.train_cfg),
              "provenance": common.record(ctx, t0, pipeline="adversarial_training")}
    controls = ctx.out / "adversarial_training_controls.json"  # the recorded controls study, read and cited
    if controls.exists():
        made = json.loads(controls.read_text())
        result.update(controls=made["controls"], controls_provenance=made["provenance"])
    return report.publish(ctx.out, "adversarial_training.json", "adversarial_training.md", result, render)


def figure(path, final: dict, dataset_title: str = "MNIST") -> None:
    """The final runs' test error and the attack's distortion per epoch: per configuration, the mean over
    its seeds and their range (weight decay alone: its seeds' final values, dashed)."""
    figures.seed_bands(path, final, panels={"test_error": "test error", "distortion": "mean min. distortion (RMS), 100 test images"},
                       title=f"{dataset_title}, {MODEL}: adversarial training, mean and range over seeds")


# the study's paired comparisons: (the change, the configuration with it, the one without)
CHANGES = [("Keeping failed attacks and filling the pools at step 0", OLD, "input, mix 0.5"),
           ("Refreshing every 50 steps instead of 200", "input, refresh every 50 steps, mix 0.2", "input, mix 0.2"),
           ("Runner-up targets instead of random ones", "input, runner-up targets, mix 0.2", "input, mix 0.2"),
           ("Capping the pool examples' distortion at 0.03", "input, distortion ≤ 0.03", "input, mix 0.5")]
MIXES = {0.5: "input, mix 0.5", 0.2: "input, mix 0.2", 0.1: "input, mix 0.1",
         0.03: "input, mix 0.03 (the pool's share of the data)"}


def readings(st: dict) -> list:
    """The study's readings, each by a rule over its numbers (``verdicts``; absent configurations skipped)."""
    return ([verdicts.weight_trend(st, MIXES, "the input pool")] + [verdicts.paired_change(st, *c) for c in CHANGES]
            + [verdicts.distance_relation(st, [n for n in st if st[n]["layers"] == [0]], "input pools"),
               verdicts.near_baseline(st, BASELINE)])


PAPER_SOURCE = "Sec. 4.2"
OWN_READINGS = {1, 2}  # claims() positions that are our readings, not the paper's


def claims(result: dict) -> list:
    """The paper's adversarial-training claim and our readings of the final runs, ``Verdict`` by rule."""
    on_mnist = result["provenance"].get("dataset", "mnist") == "mnist"  # the paper's error a number to compare with
    return [verdicts.pools_beat_weight_decay(result["summary"], len(result["seeds"]), on_mnist),
            verdicts.higher_layers_more_useful(result["summary"]), verdicts.distortion_rises(result["summary"])]


def render(result: dict) -> str:
    recipe = zoo.resolved_config(result["model"], train.TrainConfig(**result["train_config"]),
                                 dataset=result["provenance"].get("dataset", "mnist")).epochs
    cfg = next((rs[0]["adv_config"] for rs in result["runs"].values() if rs[0]["layers"]),
               dataclasses.asdict(at.AdvTrainConfig()))  # the pools' shared settings
    study = runs.summary_table([(e["configuration"], e) for e in sorted(result["study"], key=lambda e: e["test_error_mean"])])
    final = runs.summary_table([(f"{v} ({result['chosen'][v]})" if v in result["chosen"] else v, x)
                                for v, x in result["summary"].items()], "Variant (study configuration)")
    return ("## Adversarial training with per-layer pools (Sec. 4.2)\n\n"
            + runs.method(result["model"], result["epochs"], recipe, cfg, FINAL_IMAGES) + "\n\n"
            f"### Study ({len(result['study'])} configurations, {result['study_epochs']} epochs, seeds "
            f"{result['study_seeds']}; best first)\n\n" + study
            + f"\n### Final ({result['epochs']} epochs, seeds {result['seeds']}): each pool-layer set's best study "
            "configuration, and the best input pool past the decision boundary (every point moved twice as far "
            "along its perturbation; or made by one solve at a fixed c = 1, without the cap)\n\n" + final + "\n" + runs.runs_table(result["runs"])
            + f"\n**The study's readings** ({len(result['study_seeds'])} seeds: a difference counts only where the "
            "seeds' ranges do not overlap)\n\n" + verdicts.bullets(readings({e["configuration"]: e for e in result["study"]})) + "\n\n"
            + verdicts.bullets(claims(result)) + "\n\n"
            + runs.controls_section(result, BASELINE)
            + f"![curves]({result['figure']})\n\n" + report.provenance_line(result["provenance"]) + "\n")
