"""The paper's pools given every chance: examples past the decision boundary, 5 seeds each.

    python -m experiments.advtrain_beyond      # about 45 minutes on a 2-core CPU (populations)

The paper's adversarial examples came from one fixed c, not from the largest c that still reaches the
target, so they lay past the decision boundary rather than on it. Starting from the study's best input
pool (read from results/adversarial_training.json: ``chosen["input pool"]``), three variants with the
baseline's recipe and epochs, each trained with 5 seeds as one population (``advtrain_runs.runs``: one
jitted step for all members, one attack call per pool refresh): the pool as the study chose it; every
point moved twice as far along its perturbation (``overshoot=2``); and points made by one solve at a fixed
c = 1 (the pool attack's first c; no distortion cap, which would drop the points a fixed c puts far out).
Writes results/adversarial_training_beyond.json and .md and adds the variants to
results/adversarial_training.json, whose report shows them beside weight decay alone (5 seeds, from the
positive controls) and reads them with its rules.
"""

from __future__ import annotations

import dataclasses
import json
import time

from experiments import adversarial_training as pools
from experiments import advtrain_controls as controls
from experiments import common
from intriguing_jax import adversarial_training as at
from intriguing_jax import advtrain_runs as runs
from intriguing_jax import report, storage, verdicts, zoo

SEEDS = (0, 1, 2, 3, 4)


def variants(base_name: str) -> dict[str, at.AdvTrainConfig]:
    """The study's chosen input pool and its two variants past the boundary."""
    base = pools.STUDY[base_name]
    return {f"{base_name} (as chosen)": base,
            f"{base_name}, overshoot ×2": dataclasses.replace(base, overshoot=2.0),
            "input, fixed c = 1, no cap": dataclasses.replace(
                base, max_distortion=None, attack=dataclasses.replace(base.attack, c_steps=1, c_init=1.0))}


def run(ctx: common.Context, mnist, seeds=SEEDS, base_name: str | None = None) -> dict:
    t0, cfg = time.time(), zoo.resolved_config(pools.MODEL, ctx.train_cfg)
    main_json = ctx.out / "adversarial_training.json"
    if base_name is None:
        if not main_json.exists():
            raise FileNotFoundError(f"{main_json} (the study's choice) is missing: run `python -m experiments.reproduce "
                                    "--only advtrain` first, or pass base_name")
        base_name = json.loads(main_json.read_text())["chosen"]["input pool"]
    x, _, t = common.first_images(ctx, mnist.test)
    ev = runs.Evaluation(x, t, pools.CURVE_EVERY, pools.EVAL_IMAGES, pools.FINAL_IMAGES, ctx.attack_cfg, ctx.chunk_size)
    found = {}
    for name, adv in variants(base_name).items():
        bar, tick = common.epoch_bar(cfg.epochs, f"{name} ({len(seeds)} members)")
        with bar:
            found[name] = runs.runs(pools.MODEL, mnist, name, adv, [ctx.seed + s for s in seeds], cfg, ev, ctx.workdir, tick)
    rows = {n: {**controls.summary([{**r, "setting": {}} for r in rs]), "layers": rs[0]["layers"],
                "overshoot": rs[0]["adv_config"]["overshoot"]} for n, rs in found.items()}
    result = {"model": pools.MODEL, "epochs": cfg.epochs, "seeds": [ctx.seed + s for s in seeds], "base": base_name,
              "variants": rows, "summary": at.summarize_runs(found), "runs": found,
              "provenance": common.record(ctx, t0, pipeline="advtrain_beyond")}
    storage.publish(ctx.out, "adversarial_training_beyond.json", "adversarial_training_beyond.md", result, render)
    if main_json.exists():  # the pools' report shows these beside its own
        merged = {**json.loads(main_json.read_text()), "beyond": rows, "beyond_provenance": result["provenance"]}
        storage.publish(ctx.out, "adversarial_training.json", "adversarial_training.md", merged, pools.render)
    return result


def render(result: dict) -> str:
    return ("## Pools past the decision boundary\n\n"
            f"{result['model']}, {result['epochs']} epochs, seeds {result['seeds']}, each variant one population; "
            f"from the study's best input pool ({result['base']}).\n\n"
            + runs.summary_table(list(result["summary"].items())) + "\n" + runs.runs_table(result["runs"]) + "\n"
            + report.provenance_line(result["provenance"]) + "\n")


def main(argv=None):
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    mnist = common.setup(args)
    run(common.Context(args.workdir, args.results, args.seed), mnist)


if __name__ == "__main__":
    main()
