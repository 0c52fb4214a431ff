"""How small: our attack (the paper's, the default with its boundary walk, ``refine=True``) against foolbox 3's minimal-L2 attacks.

    pip install -e '.[bench]'          # foolbox 3.3.4 (JAX models through EagerPy)
    python -m benchmarks.minimal_l2    # FC100-100-10, the held-out ReLU MLP, softmax regression

For each model: the same float32 weights, the first ``--images`` correctly classified test images and the
same random wrong targets for every attack, one pinned core. Per attack: success, mean and median ‖r‖₂
(over the images every attack reached), the per-image ratio to the best foolbox result, images/s of a
second call (C&W: of its only call) and the first call's wall time (compilation included). On softmax regression also the exact
minimum (``intriguing_jax.exact``: a QP per image, solved in its dual with a certified gap).
"""

from __future__ import annotations

import argparse
import time

from benchmarks import matrix
from benchmarks.attack_speed import _import_foolbox, _pin


def _ours(cfg):
    def run(fn, x, t):
        import jax
        from jax.tree_util import Partial

        from intriguing_jax import attacks
        res = attacks.lbfgs_attack(Partial(fn), x, t, config=cfg)
        jax.block_until_ready(res)
        return res.adversarial
    return run


def _foolbox(fb, make):
    def run(fn, x, t):
        import jax
        import jax.numpy as jnp
        fmodel = fb.JAXModel(jax.jit(fn), bounds=(0, 1))  # jitted, as a foolbox user would
        _, adv, _ = make()(fmodel, jnp.asarray(x), fb.criteria.TargetedMisclassification(jnp.asarray(t)), epsilons=None)
        return jax.block_until_ready(adv)
    return run


def attacks_to_compare(fb, cw_steps):
    import dataclasses

    from intriguing_jax import attacks
    paper = attacks.AttackConfig(ftol=3e-4, c_rtol=0.1, walk_steps=0)  # the defaults before walk_steps
    out = {"ours (cross-entropy, the paper's; walk_steps=0)": _ours(paper),
           "ours, default (walk_steps=25)": _ours(attacks.AttackConfig()),
           "ours, refine=True (walk_steps=0)": _ours(dataclasses.replace(paper, refine=True))}
    if fb is not None:
        out["foolbox DDN (100 steps)"] = _foolbox(fb, lambda: fb.attacks.DDNAttack())
        out["foolbox FMN (100 steps)"] = _foolbox(fb, lambda: fb.attacks.L2FMNAttack())
        for s in cw_steps:
            out[f"foolbox C&W ({s:,} steps × 9)"] = _foolbox(fb, lambda s=s: fb.attacks.L2CarliniWagnerAttack(steps=s))
    return out


def measure(name, mnist, workdir, n, runners, exact_min: bool):
    import jax
    import numpy as np

    from intriguing_jax import exact
    model, params, x, t = matrix.problem(name, mnist, workdir, n)
    fn = jax.tree_util.Partial(model.apply, params)
    rows = {}
    for label, run in runners.items():
        t0 = time.perf_counter()
        adv = np.asarray(run(fn, x, t))
        first = wall = time.perf_counter() - t0
        if "C&W" not in label:  # C&W runs op by op (minutes per call): its first call is its steady state
            t0 = time.perf_counter()
            adv = np.asarray(run(fn, x, t))
            wall = time.perf_counter() - t0
        ok = np.argmax(np.asarray(model.apply(params, adv)), -1) == t
        ok &= (adv.min() >= 0) & (adv.max() <= 1)
        rows[label] = {"success": ok, "l2": np.linalg.norm((adv - x).reshape(len(x), -1), axis=1),
                       "img_s": len(x) / wall, "first_s": first}
        print(f"  {name}: {label}: {len(x) / wall:.2f} img/s", flush=True)
    fool = [k for k in rows if k.startswith("foolbox")]
    if exact_min:  # the QP's dual, certified: the gap to its lower bound is reported
        p = params["params"]
        W, b = (np.asarray(p["dense_0"][k]) for k in ("kernel", "bias"))
        mins = [exact.linear_minimum(W, b, x[i].ravel(), int(t[i])) for i in range(len(x))]
        gap = max((m.distance - m.lower_bound) / m.distance for m in mins)
        print(f"  {name}: exact minimum: largest relative gap to the dual bound {gap:.1e}, largest "
              f"violation {max(m.violation for m in mins):.1e}", flush=True)
        rows["exact minimum (QP)"] = {"success": np.ones(len(x), bool), "img_s": None, "first_s": None,
                                      "l2": np.array([m.distance for m in mins])}
    every = np.all([r["success"] for r in rows.values()], axis=0)
    best = (np.min([np.where(rows[k]["success"], rows[k]["l2"], np.inf) for k in fool], axis=0) if fool
            else np.full(len(x), np.nan))
    return {"images": len(x), "all_reached": int(every.sum()), "rows": {k: {
        "success": float(r["success"].mean()), "mean_l2": float(r["l2"][every].mean()),
        "median_l2": float(np.median(r["l2"][every])),
        "ratio_to_best_foolbox": float(np.mean(r["l2"][every] / best[every])) if fool else None,
        "ratio_to_exact": (float(np.mean(r["l2"][every] / rows["exact minimum (QP)"]["l2"][every]))
                           if exact_min else None),
        "img_s": r["img_s"], "first_s": r["first_s"]} for k, r in rows.items()}}


def table(name, res) -> str:
    head = ("| attack | success | mean ‖r‖₂ | median ‖r‖₂ | per image / best foolbox | per image / exact | images/s "
            "| first call |\n|---|---|---|---|---|---|---|---|\n")
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    return (f"**{name}** ({res['images']} images; ‖r‖₂ over the {res['all_reached']} every attack reached)\n\n" + head
            + "".join(f"| {k} | {r['success']:.0%} | {r['mean_l2']:.4f} | {r['median_l2']:.4f} | "
                      f"{fmt(r['ratio_to_best_foolbox'], '.4f')} | {fmt(r['ratio_to_exact'], '.4f')} | "
                      f"{fmt(r['img_s'], '.2f')} | {fmt(r['first_s'], '.1f')}{'' if r['first_s'] is None else ' s'} |\n" for k, r in res["rows"].items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["FC100-100-10", "relu-mlp", "FC10(1e-4)"],
                   help="registry names or relu-mlp; FC10(...) rows get the exact minimum")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--cw-steps", type=int, nargs="*", default=[1000, 10000],
                   help="foolbox C&W Adam steps per binary-search step (each a separate row)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="workdir")
    args = p.parse_args(argv)
    _pin(args.threads)
    import jax

    from intriguing_jax import data
    fb = _import_foolbox()
    mnist = data.load_mnist()
    runners = attacks_to_compare(fb, args.cw_steps)
    print(f"jax {jax.__version__}, foolbox {getattr(fb, '__version__', 'absent (pip install -e .[bench])')}, "
          f"{args.threads} thread(s)")
    for name in args.models:
        res = measure(name, mnist, args.workdir, args.images, runners, name.startswith("FC10("))
        print("\n" + table(name, res), flush=True)


if __name__ == "__main__":
    main()
