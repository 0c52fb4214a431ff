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

import jax
import numpy as np

from experiments import common
from intriguing_jax import figures, report, units

LAYERS = (("ConvNet", 1, "dense-128 (last feature layer)"), ("FC100-100-10", 1, "second hidden layer (100)"))
K = 8
METRICS = ("purity", "entropy", "similarity")


def _activations(model, params, images, layer: int, batch: int = 2000) -> np.ndarray:
    fn = jax.jit(lambda x: model.activations(params, x)[layer])
    return np.concatenate([np.asarray(fn(images[i:i + batch])) for i in range(0, len(images), batch)])


def _groups(ctx, model, params, x, layer) -> dict:
    """The indices of the live (non-constant) units, and the direction groups with the activations they act on:
    name -> (activations, directions)."""
    acts = _activations(model, params, x, layer)
    d = acts.shape[1]
    live = acts.max(0) > acts.min(0)  # a unit constant on the whole set (dead ReLU) ranks images arbitrarily
    untrained = _activations(model, model.init(ctx.key(7, 0)), x, layer)
    return np.flatnonzero(live), {"units": (acts, units.natural_basis(d)),
            "live units": (acts, units.natural_basis(d)[live]),
            "random": (acts, units.random_directions(ctx.key(7, 1), d, d)),
            "untrained units": (untrained, units.natural_basis(d)),
            "untrained random": (untrained, units.random_directions(ctx.key(7, 2), d, d)),
            "pixel random": (x, units.random_directions(ctx.key(7, 3), d, x.shape[1]))}


def analyse(ctx, model, params, x, y, layer: int, k: int = K) -> dict:
    """Coherence scores per direction group and the comparisons the verdict rests on."""
    sets, scores = {}, {}
    live, groups = _groups(ctx, model, params, x, layer)
    for name, (acts, dirs) in groups.items():
        sets[name] = np.asarray(units.top_k(acts, dirs, k))
        scores[name] = units.coherence(sets[name], y, x)
    m = len(sets["units"])
    chance = np.asarray(jax.random.choice(ctx.key(7, 4), len(x), (m, k), replace=True))
    sets["random images"], scores["random images"] = chance, units.coherence(chance, y, x)
    pairs = {"units vs random": ("units", "random"), "live units vs random": ("live units", "random"),
             "random vs untrained random (floor)": ("random", "untrained random"),
             "random vs pixel random (floor)": ("random", "pixel random"),
             "random vs random images (floor)": ("random", "random images")}
    comparisons = {label: {metric: units.compare(getattr(scores[a], metric), getattr(scores[b], metric),
                                                 seed=ctx.seed)._asdict() for metric in METRICS}
                   for label, (a, b) in pairs.items()}
    return {"k": k, "directions": m, "dead_units": m - len(live), "live_units": live.tolist(),
            "scores": {g: {metric: _describe(getattr(s, metric)) for metric in METRICS} for g, s in scores.items()},
            "comparisons": comparisons, "_sets": sets, "_scores": scores}


def _describe(v) -> dict:
    v = np.asarray(v, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v))}


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
                           title=f"{display}: top-{analysis['k']} test images per {what}")
        paths.append(str(path.relative_to(ctx.out)))
    return paths


def run(ctx: common.Context, mnist, layers=LAYERS) -> dict:
    t0 = time.time()
    x, y = mnist.test.images, mnist.test.labels
    out = {}
    for name, layer, description in layers:
        model, params, meta = common.trained(ctx, mnist, name)
        a = analyse(ctx, model, params, x, y, layer)
        a["figures"] = _figures(ctx, name, x, a)
        out[name] = {"layer": description, "layer_index": layer, "test_error": meta["test_error"],
                     **{k: v for k, v in a.items() if not k.startswith("_")}}
        c = a["comparisons"]["units vs random"]["purity"]
        print(f"{name}: purity units {c['mean_a']:.3f} vs random {c['mean_b']:.3f} (p = {c['p_value']:.3g})")
    result = {"layers": out, "held_out": f"MNIST test set ({len(x)} images)", "k": K,
              "provenance": common.record(ctx, t0, pipeline="units")}
    return common.publish(ctx, "units.json", "units.md", result, render)


def _verdict(name: str, r: dict) -> str:
    c = r["comparisons"]
    uv, live = c["units vs random"]["purity"], c["live units vs random"]["purity"]
    floors = [c[f]["purity"] for f in c if "floor" in f]
    floor_diffs = ", ".join(f"{f['difference']:+.3f}" for f in floors)
    if not all(f["ci_low"] > 0 and f["p_value"] < 0.01 for f in floors):
        return (f"**{name}: the score cannot separate the trained layer from its floors, so no verdict** "
                f"(floor differences: {floor_diffs}).")

    def relation(x):
        if x["ci_low"] <= 0 <= x["ci_high"] or abs(x["cohens_d"]) < 0.2:
            return "are not distinguishable from"
        return "are more coherent than" if x["difference"] > 0 else "are less coherent than"

    holds = not (live["ci_low"] > 0 and live["cohens_d"] >= 0.2)
    return (f"**{name} ({r['layer']}): units are no more interpretable than random directions (paper [text]): "
            f"{'holds' if holds else 'does not hold'}.** Label purity of the top-{r['k']} sets: all units "
            f"{uv['mean_a']:.3f} vs random directions {uv['mean_b']:.3f} (difference {uv['difference']:+.3f}, "
            f"95% CI {uv['ci_low']:+.3f} to {uv['ci_high']:+.3f}, permutation p = {uv['p_value']:.2g}, "
            f"d = {uv['cohens_d']:+.2f}: units {relation(uv)} random directions); without the "
            f"{r['dead_units']} constant (dead) units {live['mean_a']:.3f} (difference {live['difference']:+.3f}, "
            f"CI {live['ci_low']:+.3f} to {live['ci_high']:+.3f}, d = {live['cohens_d']:+.2f}: "
            f"live units {relation(live)} random directions). Rule: indistinguishable if the CI covers 0 or |d| < 0.2; the claim fails only "
            f"if live units are more coherent. The score can tell: random directions of the trained layer beat "
            f"every floor ({floor_diffs} purity, all p < 0.01).")


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
        lines.append("\n- " + _verdict(name, r) + "\n")
        lines.append(" ".join(f"![{p}]({p})" for p in r["figures"]) + "\n")
    lines.append(report.provenance_line(result["provenance"]) + "\n")
    return "\n".join(lines)
