"""Unit analysis (Sec. 3, Figs. 1–2): top images along units vs random directions, shown and measured.

Run by ``python -m experiments.reproduce`` (``--only units``). For the conv net's last feature layer and
FC100-100-10's last hidden layer, each direction (every unit e_i, and as many seeded random unit-norm
Gaussian directions) selects its top-k MNIST test images. Each set is scored by label purity, label
entropy and mean pairwise cosine similarity in pixel space (independent of the analysed layer). Units
are compared with random directions (permutation test, bootstrap 95% CI, Cohen's d). Floors, to show the
score can tell: random directions of the same layer in an *untrained* network, random directions in
pixel space, and random image sets.
"""

from __future__ import annotations

import time

from experiments import common
from experiments.harness import figures, report, runtime, verdicts
from intriguing_jax import units

LAYERS = (("ConvNet", 1, "dense-128 (last feature layer)"), ("FC100-100-10", 1, "second hidden layer (100)"))
K = 8
METRICS = units.METRICS


def _figures(ctx, display, x, analysis) -> list[str]:
    paths = []
    for group, fig in (("units", "fig1_units"), ("random", "fig2_random")):
        rows = []
        shown = "live units" if group == "units" else group  # dead units rank images arbitrarily
        idx, purity = analysis["_sets"][shown], analysis["_scores"][shown].purity
        for i in range(min(8, len(idx))):
            what = f"unit {analysis['live_units'][i]}" if group == "units" else f"random direction {i}"
            rows.append((x[idx[i]], f"{what}: label purity {purity[i]:.0%}"))
        path = ctx.out / "figures" / f"{fig}_{display}.png"
        what = "live unit" if group == "units" else "random direction"
        figures.image_rows(path, rows, per_row=analysis["k"],
                           title=f"{ctx.dataset_title}, {display}: top-{analysis['k']} test images per {what}")
        paths.append(str(path.relative_to(ctx.out)))
    return paths


def run(ctx: common.Context, mnist, layers=LAYERS) -> dict:
    t0 = time.time()
    x, y = mnist.test.images, mnist.test.labels
    out = {}
    for name, layer, description in layers:
        model, params, meta = common.trained(ctx, mnist, name)
        a = units.analyse(model, params, x, y, layer, ctx.key(7), k=K, seed=ctx.seed)
        a["figures"] = _figures(ctx, name, x, a)
        out[name] = {"layer": description, "layer_index": layer, "test_error": meta["test_error"],
                     **runtime.training_cost(meta),
                     **{k: v for k, v in a.items() if not k.startswith("_")}}
        c = a["comparisons"]["units vs random"]["purity"]
        print(f"{name}: purity units {c['mean_a']:.3f} vs random {c['mean_b']:.3f} (p = {c['p_value']:.3g})")
    result = {"layers": out, "held_out": f"MNIST test set ({len(x)} images)", "k": K,
              "provenance": common.record(ctx, t0, pipeline="units")}
    return report.publish(ctx.out, "units.json", "units.md", result, render)


PAPER_SOURCE = "Sec. 3"


def claims(result: dict) -> list:
    """The paper's Sec. 3 claim per analysed layer, a ``Verdict`` by its rule."""
    return [verdicts.units_like_random(name, r) for name, r in result["layers"].items()]


def render(result: dict) -> str:
    lines = ["## Unit analysis (Sec. 3, Figs. 1–2)\n",
             f"Held-out set: {result['held_out']}; each direction's top-{result['k']} images. Scores per "
             "direction: label purity (share of the most common label; higher = more coherent), label entropy "
             "(bits; lower = more coherent), mean pairwise cosine similarity in pixel space. Mean ± std over "
             "the directions of each group; floors: the same layer of an untrained network, random "
             "directions in pixel space, random image sets.\n"]
    for name, r in result["layers"].items():
        body = [[g] + [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in METRICS] for g, s in r["scores"].items()]
        lines.append(f"### {name}: {r['layer']} ({r['directions']} directions per group, "
                     f"{r['dead_units']} dead units; test error {report.pct(r['test_error'])})\n")
        lines.append(report.table(["Directions", "Label purity", "Label entropy (bits)", "Pixel cosine sim."],
                                  body))
        comp = [[label] + [f"{c[m]['difference']:+.3f} [{c[m]['ci_low']:+.3f}, {c[m]['ci_high']:+.3f}], "
                           f"p={c[m]['p_value']:.2g}, d={c[m]['cohens_d']:+.2f}" for m in METRICS]
                for label, c in r["comparisons"].items()]
        lines.append("\n" + report.table(["Comparison (a − b)", "Purity", "Entropy", "Pixel cosine sim."], comp))
        lines.append("\n" + verdicts.bullets([verdicts.units_like_random(name, r)]) + "\n")
        lines.append(" ".join(f"![{p}]({p})" for p in r["figures"]) + "\n")
    lines.append(report.provenance_line(result["provenance"]) + "\n")
    return "\n".join(lines)
