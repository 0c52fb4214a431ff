"""A recorded study of the attack's stopping settings: evaluations, distortion and speed, beside DDN.

    pip install -e '.[bench]' && python -m benchmarks.attack_settings      # about 15 minutes, one core

For each model (FC100-100-10 and the ConvNet from the registry; the held-out ReLU MLP and flax-style CNN
of ``benchmarks.attack_speed``) and the same correctly classified test images and random wrong targets,
runs ``lbfgs_attack`` under each configuration of ``GRID`` (the solves' relative-decrease tolerance
``ftol``, the c search's bracket ``c_rtol``, the boundary walk's ``walk_steps``) and foolbox's
``DDNAttack``; prints evaluations per image, success, mean ‖r‖₂, the per-image ‖r‖₂ ratio to the current
default's and to DDN's, and steady images/s (second call; one pinned core). Writes the rows as JSON
(``--out``). ``AttackConfig``'s defaults are chosen from this table by the rule printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

GRID = {"ftol 1e-5, c_rtol 0.03 (before)": dict(ftol=1e-5, c_rtol=0.03, walk_steps=0),
        "ftol 3e-4, c_rtol 0.1 (the defaults until walk_steps)": dict(ftol=3e-4, c_rtol=0.1, walk_steps=0),
        "ftol 1e-3, c_rtol 0.1": dict(ftol=1e-3, c_rtol=0.1, walk_steps=0),
        "ftol 3e-4, c_rtol 0.1, walk 25": dict(ftol=3e-4, c_rtol=0.1, walk_steps=25),
        "ftol 1e-3, c_rtol 1, walk 25": dict(ftol=1e-3, c_rtol=1.0, walk_steps=25),
        "ftol 1e-3, c_rtol 2, walk 15": dict(ftol=1e-3, c_rtol=2.0, walk_steps=15),
        "ftol 1e-3, c_rtol 2, walk 25": dict(ftol=1e-3, c_rtol=2.0, walk_steps=25),
        "ftol 1e-3, c_rtol 2, walk 40": dict(ftol=1e-3, c_rtol=2.0, walk_steps=40)}
BASE = "ftol 1e-5, c_rtol 0.03 (before)"


def main(argv=None):
    from benchmarks import matrix
    from benchmarks.attack_speed import _ddn, _import_foolbox, _pin
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["FC100-100-10", "relu-mlp", "flax-cnn", "ConvNet"])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--out", default="benchmarks/attack_settings.json")
    args = p.parse_args(argv)
    _pin(args.threads)
    fb = _import_foolbox()

    import dataclasses

    import jax
    import numpy as np
    from jax.tree_util import Partial

    from intriguing_jax import attacks, checkpoint, data, provenance, train
    mnist = data.load_mnist()
    rows, used = [], {}
    print("| model | configuration | evaluations / image | success | mean ‖r‖₂ | per image vs before | per image vs DDN "
          "| images/s |\n|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, params, x, t = matrix.problem(name, mnist, args.workdir, args.images)
        fn = Partial(jax.jit(model.apply), params)
        images = mnist.test.images.reshape(-1, 28, 28, 1) if getattr(model, "nhwc", False) else mnist.test.images
        used[name] = {"params_sha256": checkpoint.params_sha256(params),
                      "test_error": float(np.mean(train.predict(model.apply, params, images) != mnist.test.labels))}
        ddn_l2 = ddn_ok = None
        if fb is not None:
            _ddn(fb, fn, x, t)
            wall, ok, l2 = _ddn(fb, fn, x, t)
            ddn_ok, ddn_l2 = np.asarray(ok), np.asarray(l2)
            rows.append({"model": name, "configuration": "DDN", "evaluations": 100.0, "success": float(ddn_ok.mean()),
                         "mean_l2": float(ddn_l2[ddn_ok].mean()), "images_per_s": len(x) / wall})
        base_l2 = base_ok = None
        for label, kw in GRID.items():
            cfg = dataclasses.replace(attacks.AttackConfig(), **kw)
            jax.block_until_ready(attacks.lbfgs_attack(fn, x, t, config=cfg))
            t0 = time.perf_counter()
            r = jax.block_until_ready(attacks.lbfgs_attack(fn, x, t, config=cfg))
            wall = time.perf_counter() - t0
            ok, l2 = np.asarray(r.success), np.asarray(r.l2)
            if base_l2 is None:
                base_l2, base_ok = l2, ok
            both = ok & base_ok & (base_l2 > 0)
            vs_ddn = None if ddn_l2 is None else float(np.mean(l2[ok & ddn_ok] / ddn_l2[ok & ddn_ok]))
            rows.append({"model": name, "configuration": label, "evaluations": float(r.grad_evals.mean()),
                         "success": float(ok.mean()), "mean_l2": float(l2[ok].mean()),
                         "vs_before": float(np.mean(l2[both] / base_l2[both])), "vs_ddn": vs_ddn,
                         "images_per_s": len(x) / wall})
        for row in rows[-len(GRID) - (fb is not None):]:
            print(f"| {name} | {row['configuration']} | {row['evaluations']:.1f} | {row['success']:.1%} | "
                  f"{row['mean_l2']:.4f} | {row.get('vs_before') or 1:.4f} | "
                  f"{'–' if row.get('vs_ddn') is None else format(row['vs_ddn'], '.4f')} | {row['images_per_s']:.1f} |",
                  flush=True)
    choice = choose(rows, args.images)
    print(f"\n{choice}")
    json.dump({"images": args.images, "choice": choice, "threads": args.threads, "rows": rows,
               "attack_config": dataclasses.asdict(attacks.AttackConfig()), "grid": GRID, "models_used": used,
               "code": provenance.code(), "machine": provenance.machine(), "versions": provenance.versions()}, open(args.out, "w"), indent=1)
    print(f"\nwrote {args.out}")
    return 0


def choose(rows, images: int) -> str:
    """The rule that picks ``AttackConfig``'s defaults from the study's rows: among the configurations that
    solve, on every model, as many images as the reference (BASE) but one, and whose per-image ‖r‖₂ is on
    average no larger than DDN's on every model, the one with the fewest evaluations per image summed over
    the models; where none qualifies, the one closest to DDN's ‖r‖₂ on its worst model."""
    models = sorted({r["model"] for r in rows})
    by = {(r["model"], r["configuration"]): r for r in rows}
    fair = []
    for label in GRID:
        cells = [by.get((m, label)) for m in models]
        if any(c is None for c in cells):
            continue
        base = [by[(m, BASE)] for m in models]
        solves = all(c["success"] >= b["success"] - 1.0 / images - 1e-9 for c, b in zip(cells, base))
        worst = max((c["vs_ddn"] for c in cells if c.get("vs_ddn") is not None), default=float("inf"))
        fair.append((label, solves, worst, sum(c["evaluations"] for c in cells)))
    ok = [f for f in fair if f[1] and f[2] <= 1.0]
    if ok:
        label, _, worst, evals = min(ok, key=lambda f: f[3])
        return (f"rule: fewest evaluations among configurations as successful as '{BASE}' (one image of slack) "
                f"and no larger than DDN's per-image ‖r‖₂ on any model -> '{label}' ({evals:.1f} evaluations "
                f"per image summed over {len(models)} models; worst model {worst:.4f}x DDN)")
    label, solves, worst, evals = min(fair, key=lambda f: (not f[1], f[2]))
    return (f"rule: no configuration is as successful as '{BASE}' and no larger than DDN on every model; the "
            f"closest to DDN on its worst model -> '{label}' ({worst:.4f}x DDN, {evals:.1f} evaluations summed)")


if __name__ == "__main__":
    sys.exit(main())
