"""Table 1: the six models' train/test errors and the attack's average minimum distortion.

Run by ``python -m experiments.reproduce`` (``--only table1`` for this table alone).

Examples are distorted training images (the paper's Table 2 caption), each driven to a seeded random
wrong label. Writes table1.json, table1_models.md and figures/fig5_<model>.png.
"""

from __future__ import annotations

import time

from experiments import common
from experiments.harness import figures, paper, report, runtime, verdicts
from intriguing_jax import attacks

MODELS = paper.TABLE1_MODELS


def run(ctx: common.Context, mnist, model_names=MODELS) -> dict:
    t0 = time.time()
    x, y, targets = common.first_images(ctx, mnist.train)
    rows, filter_figures = {}, {}
    for name in model_names:
        model, params, meta = common.trained(ctx, mnist, name)
        t1 = time.time()
        res = common.attack(ctx, name, "train", model, params, x, targets, "train")
        stats = attacks.summarize(res)
        rows[name] = {"train_error": meta["train_error"], "test_error": meta["test_error"],
                      "attacked": len(x), "success_rate": stats["success_rate"],
                      "failures": stats["failures"], "mean_distortion": stats["mean_distortion"],
                      "median_distortion": stats["median_distortion"],
                      "attack_wall_s": time.time() - t1, **runtime.training_cost(meta)}
        figures.adversarial_grid(ctx.out / "figures" / f"fig5_{name}.png", x, res.adversarial, y,
                                 res.prediction, title=f"{ctx.dataset_title}, {name}: original | r ×10 | adversarial")
        if model.spec.autoencoder is not None:  # its unsupervised layer's filters
            path = ctx.out / "figures" / f"filters_{name}.png"
            figures.filters(path, params["params"]["dense_0"]["kernel"], title=f"{ctx.dataset_title}, {name}: first 100 of the frozen "
                            "autoencoder layer's filters")
            filter_figures[name] = str(path.relative_to(ctx.out))
        print(f"{name}: train {meta['train_error']:.2%} test {meta['test_error']:.2%} "
              f"distortion {report.num(stats['mean_distortion'], 4)} success {stats['success_rate']:.1%}")
    result = {"rows": rows, "paper": {k: paper.TABLE1[k] for k in rows}, "num_images": len(x),
              "filter_figures": filter_figures,
              "provenance": common.record(ctx, t0, pipeline="table1")}
    return report.publish(ctx.out, "table1.json", "table1_models.md", result, render)


PAPER_SOURCE = "Table 1"


def claims(result: dict) -> list:
    """The paper's Table 1 claims, each a ``Verdict`` by its rule (None where one cannot be made)."""
    return [verdicts.blind_spots(result["rows"]), verdicts.weight_decay_order(result["rows"])]


def render(result: dict, beside: dict | None = None) -> str:
    """Table 1's section; ``beside``: MNIST's table1.json, whose numbers then stand where the paper's do."""
    body = []
    for name, r in result["rows"].items():
        b = beside["rows"].get(name) if beside else None
        ptr, pte, pd = (b["train_error"], b["test_error"], b["mean_distortion"]) if b else (None,) * 3 if beside else paper.TABLE1[name]
        body.append([name, report.pct(r["train_error"]), report.pct(ptr), report.pct(r["test_error"]),
                     report.pct(pte), report.num(r["mean_distortion"]), report.num(pd),
                     report.pct(r["success_rate"], 1)])
    ref = "(MNIST, ours)" if beside else "(paper)"
    return ("## Table 1: models, errors and minimum distortion\n\n"
            + ("Beside each number, MNIST's (ours, the same code and settings). " if beside else
               "Paper values are [2nd] (quoted by independent reimplementations). ") + "Distortion: mean of "
            f"sqrt(Σr²/784) over the {result['num_images']} first training images, each driven to a seeded "
            "random wrong label by the box-constrained L-BFGS attack (largest successful c); success = the "
            "model's argmax on the returned, box-clipped image equals the target.\n\n"
            + report.table(["Model", "Train err (ours)", ref, "Test err (ours)", ref,
                            "Av. min. distortion (ours)", ref, "Attack success"], body)
            + "\n" + verdicts.bullets(claims(result)) + "\n\n"
            + "".join(f"![{n} filters]({f})\n\n" for n, f in result.get("filter_figures", {}).items())
            + report.provenance_line(result["provenance"]) + "\n")
