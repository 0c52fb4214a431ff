"""AttackBench's measure on the benchmark matrix: every attack, untargeted and targeted, on undefended and
defended models, side by side in one run.

    pip install -e '.[bench]' && pip install --no-deps adv-lib==0.2.8
    python -m benchmarks.attackbench --images 64

For each model of ``benchmarks.matrix`` (four undefended, four defended: adversarially trained MLPs and a
max-pooling ConvNet, an IBP-trained MLP) and its first ``--images`` correctly classified test images
(seeded random wrong targets for the targeted runs), the attacks: ours (``lbfgs_attack_untargeted`` /
``lbfgs_attack``, defaults, and with a longer boundary walk; ``--ours`` adds the studies' configurations,
``OURS``: other walks and searches, and our result polished by ALMA's steps), foolbox 3's DDN (its defaults: 100 steps) and C&W L2 (9 binary-search steps ×
100), adv-lib's ALMA, DDN and FMN (L2, 1,000 steps each; DDN unquantised) and FAB (L2, 100 iterations), the
adv-lib attacks on a torch copy of the model checked equal to it. Per attack: success, AttackBench's
optimality (Cinà et al. 2024, "AttackBench: evaluating gradient-based attacks for adversarial examples":
E[min(d_best, e)] / E[min(d, e)], d_best the shortest distance any attack found for the image, a failure at
e, the largest distance found), the per-image ratio to that best (median and largest, over the images the
attack succeeded on), evaluations per image (one forward + backward pass each: ours as counted, a peer's
its step budget), first call s (compilation included) and steady s (a second call), and each image's ‖r‖₂
(None: failed). Pinned to
``--threads`` cores; writes ``--out`` (JSON) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
import types

from benchmarks import matrix
from benchmarks.attack_speed import _import_foolbox, _pin


# our attack's configurations: its defaults, a longer boundary walk (the refinement that reads the
# boundary's shape, where max pooling makes the solver's curvature estimates poor), and the untargeted attack
# with one solve per image (``search="one"``, the targeted attack unchanged) with either walk, or with the nearest
# class's targeted solve beside it (``"one+1"``), or beside it only where the one solve reached another class
# (``one_then_nearest``, a composition of the public attacks); or the defaults' result polished by ALMA's
# steps (``polish.alma_polish``: "polish" is (steps, first learning rate)); "search" is
# ``lbfgs_attack_untargeted``'s argument, every other key an ``AttackConfig`` field
ONE_THEN_NEAREST = "one, then the nearest class where it differs"
OURS = {"ours (defaults)": {}, "ours, walk 100 steps": {"walk_steps": 100},
        "ours, walk 300 steps": {"walk_steps": 300},
        "ours, walk 300 steps, γ 0.002": {"walk_steps": 300, "walk_gamma": 0.002},
        "ours, walk 100 steps, γ 0.01": {"walk_steps": 100, "walk_gamma": 0.01},
        "ours, one solve": {"search": "one"}, "ours, one solve, walk 100 steps": {"search": "one", "walk_steps": 100},
        "ours, one solve + the nearest class": {"search": "one+1"},
        "ours, one solve + the nearest class where it differs": {"search": ONE_THEN_NEAREST},
        **{f"ours{'' if search is None else ', ' + search}, then {steps} of ALMA's steps (lr {lr:g})":
           {"polish": (steps, lr), **({} if search is None else {"search": search})}
           for search, steps, lr in ((None, 100, 0.01), (None, 100, 0.03), (None, 300, 0.03), (None, 300, 0.1),
                                     (None, 600, 0.03), ("one+1", 300, 0.03), ("one", 300, 0.03))},
        "ours, no walk, then 600 of ALMA's steps (lr 0.03)": {"walk_steps": 0, "polish": (600, 0.03)}}
PEERS = ("foolbox DDN (100 steps)", "foolbox C&W (9 × 100 steps)", "adv-lib ALMA (1,000 steps)", "adv-lib DDN (1,000 steps)",
         "adv-lib FMN (1,000 steps)", "adv-lib FAB (100 iterations)")


def import_adv_lib():
    """``adv_lib.attacks``. adv-lib 0.2.8 imports torchvision (LPIPS only) and visdom (live plots only) at
    import, neither used by an L2 attack: stub modules stand in for them when they are not installed."""
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    vis = types.ModuleType("visdom")
    vis.Visdom = object
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.models", tv.models)
    sys.modules.setdefault("visdom", vis)
    import adv_lib.attacks
    return adv_lib.attacks


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def torch_copy(name: str, params):
    """A torch module computing matrix entry ``name``'s logits from the same weights (MLPs: ``dense_i``;
    the ConvNet: flat input, 5×5 convolutions with max pooling; the flax CNN: NHWC input, Conv_0/1,
    Dense_1 then Dense_0)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    arch = matrix.MATRIX[name].architecture if name in matrix.MATRIX else name
    p = {k: {n: torch.tensor(np.asarray(a)) for n, a in v.items()} for k, v in params["params"].items()}
    if arch == "flax-cnn":
        def forward(x):  # x: NHWC
            h = x.permute(0, 3, 1, 2)
            for conv in ("Conv_0", "Conv_1"):
                h = F.avg_pool2d(torch.relu(F.conv2d(h, p[conv]["kernel"].permute(3, 2, 0, 1), p[conv]["bias"], padding=1)), 2)
            # flax names modules as they are built: Dense(10)(relu(Dense(256)(h))) builds the output first
            h = torch.relu(h.permute(0, 2, 3, 1).reshape(len(h), -1) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
            return h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    elif arch == "ConvNet":
        def forward(x):  # x: [N, 784]
            h = x.reshape(len(x), 1, 28, 28)
            for conv in ("conv_0", "conv_1"):
                h = F.max_pool2d(torch.relu(F.conv2d(h, p[conv]["kernel"].permute(3, 2, 0, 1), p[conv]["bias"], padding=2)), 2)
            h = torch.relu(h.permute(0, 2, 3, 1).reshape(len(h), -1) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
            return h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    else:
        act = torch.relu if arch == "relu-mlp" else torch.sigmoid
        layers = sorted(p, key=lambda k: int(k.split("_")[1]))

        def forward(x):
            h = x.reshape(len(x), -1)
            for i, k in enumerate(layers):
                h = h @ p[k]["kernel"] + p[k]["bias"]
                h = act(h) if i < len(layers) - 1 else h
            return h

    class Copy(torch.nn.Module):
        def forward(self, x):
            return forward(x)
    return Copy().eval()


def one_then_nearest(fn, x, y, cfg):
    """The untargeted attack with one solve per image (``search="one"``), then the targeted attack toward
    the nearest class by the linearised estimate at the clean image (DeepFool's, as ``search="one+1"``
    uses) only on the images whose solve failed or reached another class; per image the shorter success.
    The redone images go through padded to the next power of two (at least 8; ``storage.pad_rows``), so a call compiles for
    few sizes; ``grad_evals`` counts the solve, the estimate's K gradients and the redo's rows (not the
    padding's).

    Returns:
      a namespace with ``adversarial`` ``[N, ...]``, ``grad_evals`` ``[N]`` and ``redone`` (how many
      images took the second solve).
    """
    import jax.numpy as jnp
    import numpy as np

    from intriguing_jax import attacks, storage
    one = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search="one")
    estimate = attacks._boundary_estimates(fn, jnp.asarray(x), jnp.asarray(y, jnp.int32))
    k = estimate.shape[1]
    nearest = np.asarray(jnp.argmin(estimate, axis=1))
    adv, l2 = np.array(one.adversarial), np.where(np.asarray(one.success), np.asarray(one.l2), np.inf)
    evals = np.asarray(one.grad_evals) + k
    redo = np.flatnonzero(~np.asarray(one.success) | (np.asarray(one.prediction) != nearest))
    if len(redo):
        size = min(max(8, 1 << (len(redo) - 1).bit_length()), max(len(x), 8))
        rows = storage.pad_rows(redo, size)
        res = attacks.lbfgs_attack(fn, jnp.asarray(x)[rows], jnp.asarray(nearest[rows]), config=cfg)
        ok = np.asarray(res.success)[: len(redo)] & (np.asarray(res.l2)[: len(redo)] < l2[redo])
        adv[redo[ok]] = np.asarray(res.adversarial)[: len(redo)][ok]
        evals[redo] += np.asarray(res.grad_evals)[: len(redo)]
    return types.SimpleNamespace(adversarial=adv, grad_evals=evals, redone=len(redo))


def polished(fn, x, y, cfg, steps: int, lr: float, targets=None, **search):
    """Our attack's result (``cfg``): ``lbfgs_attack_untargeted`` (``search`` if given) on labels ``y``, or
    with ``targets`` ``lbfgs_attack`` toward them, polished by ``steps`` of ALMA's steps from it
    (``polish.alma_polish``); ``grad_evals`` both together."""
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.polish import alma_polish
    from intriguing_jax import attacks
    if targets is None:
        res = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, **search)
    else:
        res = attacks.lbfgs_attack(fn, x, targets, config=cfg)
    goal = y if targets is None else targets
    adv, _ = alma_polish(fn, jnp.asarray(x), jnp.asarray(goal, jnp.int32), res.adversarial, steps=steps, lr_init=lr,
                         targeted=targets is not None)
    # concrete arrays: ``measure``'s timer blocks on pytrees of arrays, not on a namespace
    return types.SimpleNamespace(adversarial=np.asarray(adv), grad_evals=np.asarray(res.grad_evals) + steps)


def optimality(d: dict) -> dict:
    """AttackBench's optimality per attack: ``d`` attack -> per-image distances (inf: failed)."""
    import numpy as np
    finite = np.concatenate([v[np.isfinite(v)] for v in d.values()])
    e = finite.max() if len(finite) else 1.0
    best = np.minimum.reduce([np.minimum(v, e) for v in d.values()])
    return {a: float(best.mean() / np.minimum(v, e).mean()) for a, v in d.items()}


def peers(fb, al, fn, net, x, goal, targeted: bool, wanted=PEERS) -> dict:
    """name -> (call returning adversarial images, evaluations per image it budgets), for the names in
    ``wanted``."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    xt, gt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(goal).astype(np.int64))
    fmodel = fb.JAXModel(fn, bounds=(0, 1))
    criterion = (fb.criteria.TargetedMisclassification(jnp.asarray(goal)) if targeted
                 else fb.criteria.Misclassification(jnp.asarray(goal)))

    def foolbox(attack):
        return lambda: attack(fmodel, jnp.asarray(x), criterion, epsilons=None)[1]

    def adv_lib(attack, **kw):
        return lambda: attack(net, xt, gt, targeted=targeted, **kw).numpy()
    calls = {"foolbox DDN (100 steps)": (foolbox(fb.attacks.DDNAttack()), 100),
            "foolbox C&W (9 × 100 steps)": (foolbox(fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=100)), 900),
            "adv-lib ALMA (1,000 steps)": (adv_lib(al.alma, num_steps=1000), 1000),
            "adv-lib DDN (1,000 steps)": (adv_lib(al.ddn, steps=1000, levels=None), 1000),
            "adv-lib FMN (1,000 steps)": (adv_lib(al.fmn, norm=2, steps=1000), 1000),
            "adv-lib FAB (100 iterations)": (adv_lib(al.fab, norm=2, n_iter=100), 100 * (1 + 10))}
    assert tuple(calls) == PEERS
    return {name: call for name, call in calls.items() if name in wanted}


def measure(model, params, x, y, goal, targeted: bool, calls: dict) -> list[dict]:
    """Each call twice (first, steady); success (the goal reached, inside the box), ‖r‖₂, optimality and
    the per-image ratio to the best of all."""
    import jax
    import numpy as np

    from intriguing_jax import train
    out, dist = [], {}
    for label, (call, budget) in calls.items():
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = jax.block_until_ready(call())
            walls.append(time.perf_counter() - t0)
        adv = np.asarray(getattr(res, "adversarial", res))
        pred = np.asarray(train.predict(model.apply, params, adv))
        d = np.sqrt(((adv - np.asarray(x)).reshape(len(x), -1) ** 2).sum(1))
        axes = tuple(range(1, adv.ndim))
        ok = ((pred == goal) if targeted else (pred != y)) & (adv >= 0).all(axis=axes) & (adv <= 1).all(axis=axes)
        dist[label] = np.where(ok, d, np.inf)
        evals = float(np.asarray(res.grad_evals).mean()) if hasattr(res, "grad_evals") else float(budget)
        out.append({"attack": label, "first_s": walls[0], "steady_s": walls[1], "success": float(ok.mean()),
                    "median_l2": float(np.median(d[ok])) if ok.any() else None,
                    "mean_l2": float(d[ok].mean()) if ok.any() else None, "evals_per_image": evals,
                    "evals_counted": hasattr(res, "grad_evals"),
                    **({"redone": res.redone} if hasattr(res, "redone") else {}),
                    "l2_per_image": [float(v) if k else None for v, k in zip(d, ok)]})
    opt = optimality(dist)
    best = np.minimum.reduce(list(dist.values()))
    for row in out:
        d = dist[row["attack"]]
        ratio = d[np.isfinite(d)] / best[np.isfinite(d)]
        row.update(optimality=opt[row["attack"]], ratio_median=float(np.median(ratio)) if len(ratio) else None,
                   ratio_max=float(ratio.max()) if len(ratio) else None)
    return out


def table(rows: list[dict]) -> str:
    head = ("| model | goal | attack | optimality | success | ratio to best (median / max) | evals / image | "
            "first call s | steady s | median ‖r‖₂ |\n|---|---|---|---|---|---|---|---|---|---|\n")
    fmt = lambda v, p: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    return head + "\n".join(
        f"| {r['model']} | {r['goal']} | {r['attack']} | {r['optimality']:.4f} | {r['success']:.1%} | "
        f"{fmt(r['ratio_median'], 3)} / {fmt(r['ratio_max'], 3)} | {r['evals_per_image']:.0f}{'' if r['evals_counted'] else ' (budget)'} | "
        f"{r['first_s']:.2f} | {r['steady_s']:.2f} | {fmt(r['median_l2'], 4)} |" for r in rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(matrix.MATRIX), choices=list(matrix.MATRIX))
    p.add_argument("--goals", nargs="+", default=["untargeted", "targeted"], choices=["untargeted", "targeted"])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--ours", nargs="+", default=list(OURS)[:2], choices=list(OURS), help="our configurations to run")
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS),
                   help="the peers' attacks to run (optimality is relative to the best of the attacks run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--out", default="benchmarks/attackbench.json")
    args = p.parse_args(argv)
    _pin(args.threads)
    t_start = time.time()
    import jax
    import numpy as np
    import torch
    from jax.tree_util import Partial

    from intriguing_jax import attacks, data, provenance, storage, train
    torch.set_num_threads(args.threads)
    fb, al = _import_foolbox(), import_adv_lib()
    mnist = data.load_mnist()
    rows, models_used = [], {}
    for name in args.models:
        model, params, meta = matrix.trained(name, mnist, args.workdir)
        x, t = matrix.attack_images(model, params, mnist, args.images)
        models_used[name] = {k: meta.get(k) for k in ("recipe", "test_error", "checkpoint_sha256")}
        y = np.asarray(train.predict(model.apply, params, x))
        fn = Partial(jax.jit(model.apply), params)
        net = torch_copy(name, params)
        with torch.no_grad():
            gap = float(np.abs(net(torch.tensor(np.asarray(x))).numpy() - np.asarray(fn(x))).max())
        if gap > 1e-3:
            raise RuntimeError(f"the torch copy of {name} differs from the JAX model by {gap}")
        for goal_name in args.goals:
            targeted = goal_name == "targeted"
            goal = t if targeted else y
            def ours(changes):
                cfg = attacks.AttackConfig(**{k: v for k, v in changes.items() if k not in ("search", "polish")})
                search = {k: v for k, v in changes.items() if k == "search"}  # else the attack's default
                if targeted:
                    if "polish" in changes:
                        return lambda: polished(fn, x, y, cfg, *changes["polish"], targets=t)
                    return lambda: attacks.lbfgs_attack(fn, x, t, config=cfg)
                if search.get("search") == ONE_THEN_NEAREST:
                    return lambda: one_then_nearest(fn, x, y, cfg)
                if "polish" in changes:
                    return lambda: polished(fn, x, y, cfg, *changes["polish"], **search)
                return lambda: attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, **search)
            calls = {**{label: (ours(changes), None) for label, changes in OURS.items() if label in args.ours},
                     **peers(fb, al, fn, net, x, goal, targeted, args.peers)}
            for row in measure(model, params, x, y, goal, targeted, calls):
                rows.append({"model": name, "goal": goal_name, **row})
                print(table([rows[-1]]).splitlines()[-1], flush=True)
    result = {"rows": rows, "images": args.images, "models": models_used,
              "provenance": provenance.record(0, time.time() - t_start, threads=args.threads, peers={
                  "torch": torch.__version__, "foolbox": fb.__version__, "adv_lib": _version("adv-lib")})}
    storage.write_json(args.out, result)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
