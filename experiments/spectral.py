"""Spectral analysis (Sec. 4.3, Table 5) and the certified-radius sandwich.

Run by ``python -m experiments.reproduce`` (``--only spectral``; ``--alexnet-weights FILE.npz`` for real
AlexNet weights, random initialisation otherwise). Per-layer upper Lipschitz bounds for an AlexNet-shaped
net (Table 5's shapes) and the MNIST models, each beside the exact operator norm from power iteration.
Then, for the first test images, each attacked model gets a sandwich per image: a certified L2 radius
within which no example of the target class exists (logit margin over the Lipschitz bound of that logit
difference) and the distortion the L-BFGS attack found.
"""

from __future__ import annotations

import time

import numpy as np

from experiments import common
from experiments.harness import figures, paper, report, verdicts
from jax.tree_util import Partial

from intriguing_jax import alexnet, attacks, bounds, exact, models, spectral

BOUND_MODELS = ("FC10(1e-4)", "FC100-100-10", "FC200-200-10", "AE400-10", "ConvNet")
SANDWICH_MODELS = ("FC10(1e-4)", "FC10(1e-2)", "FC10(1)", "FC100-100-10", "FC200-200-10", "AE400-10")  # Table 1
MAX_SANDWICH_IMAGES = 500
BOUND_IMAGES = 100  # images per model whose radius bound propagation certifies (a bisection per image)


def alexnet_table(ctx, weights=None, iters: int = 60) -> dict:
    params = alexnet.load_npz(weights) if weights else alexnet.init(ctx.key(8))
    return {"weights": str(weights) if weights else "random initialisation (Flax defaults), not trained",
            "rows": alexnet.bounds_table(params, ctx.key(8, 1), iters),
            "maxpool_bound": spectral.maxpool_bound(*alexnet.POOL), "power_iterations": iters}


def sandwich(ctx, mnist, name) -> dict:
    model, params, _ = common.trained(ctx, mnist, name)
    n = min(ctx.num_images, MAX_SANDWICH_IMAGES)
    x, _, targets = common.first_images(ctx, mnist.test)
    res = common.attack(ctx, name, "train", model, params, x[:n], targets[:n], "test")
    out = spectral.sandwich(spectral.model_layers(model, params, key=ctx.key(8, 2)), params, model.apply(params, x[:n]), res)
    first = attacks.AttackResult(*(np.asarray(a)[:BOUND_IMAGES] for a in res))
    out["bound_propagation"] = {"crown": bounds.sandwich(Partial(model.apply, params), x[:BOUND_IMAGES], first)}
    if isinstance(model.spec.module, models.MLP) and not model.spec.module.hidden:  # softmax regression: the exact
        # box-constrained minimum is computable
        out["exact"] = exact_ratio(params["params"]["dense_0"], x[:BOUND_IMAGES], first)
    return out


def exact_ratio(dense, x, result) -> dict:
    """The attack's ‖r‖₂ over the exact box-constrained minimum (``exact.linear_minimum``) for a linear
    model's successful, non-trivial attacks on ``x``: how far the attack is from optimal."""
    ratios = [float(l2) / exact.linear_minimum(dense["kernel"], dense["bias"], xi, int(t)).distance
              for xi, t, l2, ok in zip(np.asarray(x), result.target, result.l2, result.success) if ok and l2 > 0]
    return {"images": len(ratios), "ratio_mean": float(np.mean(ratios)), "ratio_median": float(np.median(ratios)),
            "ratio_max": float(np.max(ratios))} if ratios else {"images": 0}


def run(ctx: common.Context, mnist, alexnet_weights=None, bound_models=BOUND_MODELS,
        sandwich_models=SANDWICH_MODELS) -> dict:
    t0 = time.time()
    alex = alexnet_table(ctx, alexnet_weights)
    bounds = {}
    for name in bound_models:
        model, params, _ = common.trained(ctx, mnist, name)
        rows = spectral.model_layers(model, params, key=ctx.key(8, 3))
        bounds[name] = {"layers": rows, "global_bound": float(np.prod([r["bound"] for r in rows]))}
    sandwiches = {name: sandwich(ctx, mnist, name) for name in sandwich_models}
    path = ctx.out / "figures" / "sandwich_ratio.png"
    figures.ratio_ranges(path, {**{(n, "product bound"): s.pop("_ratio") for n, s in sandwiches.items()},
                                **{(n, "CROWN"): s["bound_propagation"]["crown"].pop("_ratio") for n, s in sandwiches.items()}},
                         xlabel="distortion found / certified lower bound (log scale; 1 = the bound is tight)",
                         title=f"{ctx.dataset_title}: attack distance over certified radius, per image")
    result = {"alexnet": alex, "mnist_bounds": bounds, "sandwich": sandwiches,
              "figure": str(path.relative_to(ctx.out)),
              "provenance": common.record(ctx, t0, pipeline="spectral")}
    return report.publish(ctx.out, "spectral.json", "spectral.md", result, render)


PAPER_SOURCE = None  # its checks are ours: the paper gives bounds, not these tests


def claims(result: dict) -> list:
    """The spectral section's checks, each a ``Verdict`` by its rule."""
    rows = {n: s["bound_propagation"]["crown"] for n, s in result["sandwich"].items() if "bound_propagation" in s}
    return [verdicts.certified_below_found(result["sandwich"]), verdicts.bound_propagation_tight(rows)]


def render(result: dict) -> str:
    a = result["alexnet"]
    t5 = [[r["layer"], r["size"], r["stride"] or "–", report.num(r["bound"], 2),
           report.num(r["power_iteration"], 2), report.num(paper.TABLE5.get(r["layer"]), 2)] for r in a["rows"]]
    lines = ["## Spectral analysis (Sec. 4.3, Table 5)\n",
             f"AlexNet-shaped net with **{a['weights']}** (the paper's weights are not available: compare "
             "trends, not numbers). Upper bound: the Fourier formula (convolutions; zero padding bounded by a "
             "circular convolution on a grid kernel − 1 larger, stride through the aliased frequency blocks) "
             f"or the largest singular value (dense). Power iteration ({a['power_iterations']} iterations) gives "
             "the exact operator norm of the layer as applied (a lower estimate when not converged). "
             f"Overlapping 3/2 max-pooling: ≤ {a['maxpool_bound']:.0f} (the paper uses 1).\n",
             report.table(["Layer", "Size", "Stride", "Upper bound (ours)", "Power iteration", "(paper [2nd])"], t5)]
    lines.append("\n### MNIST models: per-layer bounds and the product\n")
    for name, b in result["mnist_bounds"].items():
        parts = " · ".join(f"{r['layer']} {r['bound']:.3g}" + (f" (exact {r['exact']:.3g})"
                                                              if r["exact"] and r["kind"].startswith("conv") else "")
                           for r in b["layers"])
        lines.append(f"- **{name}**: {parts} = **{b['global_bound']:.4g}**")
    body = [[n, s["images"], s["compared"], report.num(s["mean_found_l2"]), report.num(s["mean_certified_l2"], 4),
             f"{s['ratio_median']:.3g} [{s['ratio_p10']:.3g}, {s['ratio_p90']:.3g}]", report.pct(s["share_within_2x"], 1),
             s["violations"]] for n, s in result["sandwich"].items()]
    lines += ["\n### Certified lower bound vs distortion found (first test images)\n",
              "Per image: certified radius for the attack's target class = (z_pred − z_target) / (‖w_pred − "
              "w_target‖ · product bound of the layers below the last), in L2 over all 784 pixels; found = the "
              "attack's ‖r‖₂. Images the model already assigns to the target are left out.\n",
              report.table(["Model", "Images", "Compared", "Mean found ‖r‖₂", "Mean certified", "Ratio median "
                            "[10%, 90%]", "Within 2×", "Violations"], body),
              "\n" + verdicts.bullets([verdicts.certified_below_found(result["sandwich"]),
                                     verdicts.attack_tightness(result["sandwich"])]) + "\n", verdicts.bound_propagation_section(result["sandwich"], BOUND_IMAGES),
              f"![sandwich]({result['figure']})\n", report.provenance_line(result["provenance"]) + "\n"]
    return "\n".join(lines)
