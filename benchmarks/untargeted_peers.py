"""The untargeted attack beside its strongest peers, in one run, on models no default was chosen on.

    pip install -e '.[bench]' && pip install --no-deps adv-lib==0.2.8
    python -m benchmarks.untargeted_peers --images 32

Models (all held out): the ReLU MLP and the flax-style CNN of ``benchmarks.attack_speed`` (undefended) and
``pgd-mlp-eps2`` (FC100-100-10 trained by L2 PGD at ε = 2: adversarially trained). Attacks, untargeted,
on the same correctly classified test images: ours with ``search="all"`` (the previous default) and
``"one+2"`` (the default now), foolbox 3's ``DDNAttack`` (100 steps, the JAX model
through EagerPy) and adv-lib's ALMA (L2, 1,000 steps, on a torch copy of the model checked equal to it).
Prints first call s (compilation included), steady s (a second call), success, mean and median ‖r‖₂ and
AttackBench's optimality E[min(d_best, e)] / E[min(d, e)] (d_best: the shortest any attack found per image,
failures at e, the largest distance found). One pinned core.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import matrix
from benchmarks.attack_speed import _import_foolbox, _pin
from benchmarks.attackbench import import_adv_lib, optimality, torch_copy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["relu-mlp", "flax-cnn", "pgd-mlp-eps2"])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="workdir")
    args = p.parse_args(argv)
    _pin(args.threads)
    import jax
    import numpy as np
    import torch
    from jax.tree_util import Partial

    from intriguing_jax import attacks, data, train
    torch.set_num_threads(args.threads)
    fb, alma = _import_foolbox(), import_adv_lib().alma
    mnist = data.load_mnist()
    print("| model | attack | first call s | steady s | success | mean ‖r‖₂ | median ‖r‖₂ | optimality |\n|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, params, x, _ = matrix.problem(name, mnist, args.workdir, args.images)
        y = np.asarray(train.predict(model.apply, params, x))
        fn = Partial(jax.jit(model.apply), params)
        net = torch_copy(name, params)
        with torch.no_grad():
            gap = float(np.abs(net(torch.tensor(np.asarray(x))).numpy() - np.asarray(fn(x))).max())
        assert gap < 1e-3, f"torch copy of {name} differs by {gap}"

        def ours(search):
            return lambda: attacks.lbfgs_attack_untargeted(fn, x, y, search=search)

        def ddn():
            fmodel = fb.JAXModel(fn, bounds=(0, 1))
            import jax.numpy as jnp
            _, adv, ok = fb.attacks.DDNAttack()(fmodel, jnp.asarray(x), jnp.asarray(y), epsilons=None)
            return adv, ok

        def run_alma():
            xt, yt = torch.tensor(np.asarray(x)), torch.tensor(y.astype(np.int64))
            return alma(net, xt, yt, num_steps=1000).numpy()

        dist, rows = {}, []
        for label, call in (("ours, search='all' (before)", ours("all")), ("ours, search='one+2' (now)", ours("one+2")),
                            ("foolbox DDN (100 steps)", ddn), ("adv-lib ALMA (1,000 steps)", run_alma)):
            walls = []
            for _ in range(2):
                t0 = time.perf_counter()
                out = jax.block_until_ready(call())
                walls.append(time.perf_counter() - t0)
            adv = np.asarray(out.adversarial if hasattr(out, "adversarial") else (out[0] if isinstance(out, tuple) else out))
            pred = np.asarray(train.predict(model.apply, params, adv))
            d = np.sqrt(((adv - np.asarray(x)).reshape(len(x), -1) ** 2).sum(1))
            inside = (adv >= 0).all(axis=tuple(range(1, adv.ndim))) & (adv <= 1).all(axis=tuple(range(1, adv.ndim)))
            ok = (pred != y) & inside
            dist[label] = np.where(ok, d, np.inf)
            rows.append((label, walls, ok, d))
        opt = optimality(dist)
        for label, walls, ok, d in rows:
            print(f"| {name} | {label} | {walls[0]:.2f} | {walls[1]:.2f} | {ok.mean():.1%} | {d[ok].mean():.4f} | "
                  f"{np.median(d[ok]):.4f} | {opt[label]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
