"""Table 2 (cross-model generalisation) and a Fig. 7-like panel.

Run by ``python -m experiments.reproduce`` (``--only table2``). The adversarial examples made for each
Table 1 model (distorted training images; reused from Table 1's attack cache) are fed to every model;
each cell is the column model's error rate against the original labels. Control rows: Gaussian noise
of stddev 0.1 and 0.3, unclipped (the paper's distortion column for these rows equals the stddev) and the
same draw clipped to [0, 1] (a valid image; lower realised RMS), and, per adversarial row, Gaussian noise
with each image's own adversarial RMS.
"""

from __future__ import annotations

import time

import numpy as np

from experiments import common
from experiments.harness import figures, paper, report, verdicts
from intriguing_jax import attacks, noise, train, transfer

GAUSSIAN = (0.1, 0.3)
NOISE = "Gaussian: each stddev unclipped (realised RMS = stddev) and, same draw, clipped to [0, 1]"
FIG7_MODEL, FIG7_STDDEV = "FC100-100-10", 1.0


def run(ctx: common.Context, mnist, model_names=paper.TABLE1_MODELS) -> dict:
    t0 = time.time()
    x, y, targets = common.first_images(ctx, mnist.train)
    trained = {n: common.trained(ctx, mnist, n) for n in model_names}
    classifiers = {n: train.predictor(m.apply, p) for n, (m, p, _) in trained.items()}
    images, success = {}, {}
    for n, (m, p, _) in trained.items():
        res = common.attack(ctx, n, "train", m, p, x, targets, "train")
        images[n], success[n] = res.adversarial, float(np.mean(res.success))
    for i, s in enumerate(GAUSSIAN):
        images.update(noise.gaussian_rows(ctx.key(2, i), x, s))
    for i, n in enumerate(model_names):
        images[f"Noise matched to RMS of {n}"] = np.asarray(
            noise.noise_with_rms(ctx.key(3, i), x, attacks.distortion(x, images[n])))
    fig7 = _fig7(ctx, x, y, images.get(FIG7_MODEL), classifiers.get(FIG7_MODEL))
    result = {"matrix": transfer.error_matrix(classifiers, images, y),
              "rms": {row: transfer.mean_rms(x, im) for row, im in images.items()}, "attack_success": success,
              "clean_error": transfer.error_rates(classifiers, x, y), "columns": list(model_names),
              "adversarial_rows": list(model_names), "num_images": len(x), "fig7": fig7,
              "provenance": common.record(ctx, t0, pipeline="table2", noise=NOISE)}
    return report.publish(ctx.out, "table2.json", "table2_cross_model.md", result, render)


def _fig7(ctx, x, y, adversarial, classify) -> dict | None:
    """Adversarial examples beside heavy Gaussian noise, with the model's accuracy on each set."""
    if adversarial is None:
        return None
    noisy = np.asarray(noise.gaussian_noise(ctx.key(4), x, FIG7_STDDEV))
    unclipped = np.asarray(noise.gaussian_noise(ctx.key(4), x, FIG7_STDDEV, clip=False))
    acc = {"adversarial": float(np.mean(classify(adversarial) == y)),
           "gaussian_clipped": float(np.mean(classify(noisy) == y)),
           "gaussian_unclipped": float(np.mean(classify(unclipped) == y)),
           "adversarial_rms": transfer.mean_rms(x, adversarial), "gaussian_clipped_rms": transfer.mean_rms(x, noisy)}
    path = ctx.out / "figures" / "fig7_adversarial_vs_noise.png"
    figures.image_rows(path, [
        (adversarial, f"adversarial for {FIG7_MODEL}: RMS {acc['adversarial_rms']:.3f}, "
                      f"accuracy {acc['adversarial']:.0%}"),
        (noisy, f"Gaussian noise stddev {FIG7_STDDEV:g} (clipped; RMS {acc['gaussian_clipped_rms']:.3f}): "
                f"accuracy {acc['gaussian_clipped']:.0%}")],
        title=f"{ctx.dataset_title}: adversarial examples beside Gaussian noise")
    return {"model": FIG7_MODEL, "stddev": FIG7_STDDEV, "figure": str(path.relative_to(ctx.out)), **acc}


PAPER_SOURCE = "Table 2, Fig. 7"


def claims(result: dict) -> list:
    """The paper's Table 2 and Fig. 7 claims, each a ``Verdict`` by its rule (None where one cannot be made)."""
    m, cols, g = result["matrix"], result["columns"], "Gaussian noise, stddev 0.1"
    return [verdicts.cross_model_transfer(transfer.cross_model_summary(m, result["adversarial_rows"], cols)),
            verdicts.noise_barely_hurts({"stddev": 0.1, "clean_error": result["clean_error"], "noisy_error": m[g],
                                         "clipped_error": m.get(g + transfer.CLIPPED)}) if g in m else None,
            verdicts.fig7(result["fig7"]) if result.get("fig7") else None]


def render(result: dict, beside: dict | None = None) -> str:
    """Table 2's section; ``beside``: MNIST's table2.json, whose numbers then stand in brackets where the
    paper's do."""
    cols, m = result["columns"], result["matrix"]

    def ref(row, c):
        if beside is None:
            return paper.table2_cell(row, c)
        v = beside["matrix"].get(row, {}).get(c)
        return None if v is None else (v, "MNIST")
    body = []
    for row, errs in m.items():
        cells = [report.pct(errs[c], 1) + (f" ({report.pct(p[0], 1)} [{p[1]}])" if (p := ref(row, c))
                                           else "") for c in cols]
        pd = beside["rms"].get(row) if beside else paper.TABLE2[row][1] if row in paper.TABLE2 else None
        body.append([row] + cells + [report.num(result["rms"][row]) + (f" ({report.num(pd)})" if pd is not None else "")])
    body.append(["Clean images (no perturbation)"] + [report.pct(result["clean_error"][c], 1) for c in cols] + ["0"])
    found = claims(result)
    return ("## Table 2: cross-model generalisation\n\n"
            f"Error rate of the model in the column on the {result['num_images']} first training images perturbed "
            "for the model in the row (against their true labels); ours, then "
            + ("MNIST's (ours, the same code and settings) in brackets, marked [MNIST]. " if beside else
               "the paper's in brackets with its provenance mark. ")
            + f"The last column is the mean realised RMS per pixel ({'MNIST' if beside else 'paper'}'s in brackets). Gaussian "
            "noise rows: unclipped (pixels may leave [0, 1]; realised RMS = stddev, the paper's reading) and the "
            "same draw clipped to [0, 1] (realised RMS below the stddev). The matched-noise rows (ours) "
            "give each image Gaussian noise rescaled so that its realised RMS inside [0, 1] equals that "
            "image's adversarial RMS.\n\n"
            + report.table(["made for ↓ / fed to →"] + cols + ["Av. distortion"], body)
            + "\n" + verdicts.bullets(found) + "\n\n"
            + (f"![Fig. 7]({result['fig7']['figure']})\n\n" if result.get("fig7") else "")
            + report.provenance_line(result["provenance"]) + "\n")
