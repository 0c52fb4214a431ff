"""Attack speed: batch-native solver vs jaxopt.LBFGSB under vmap, on the same images, weights, targets.

    python -m benchmarks.attack_speed                     # batches 1/16/256/1024, jaxopt up to 16
    python -m benchmarks.attack_speed --batches 1 16 --jaxopt-max-batch 16 --threads 1

For each batch size prints images/s of both solvers and their ratio, the value-and-grad evaluations each
performed (batched calls; rows: per-example evaluations summed, what the work costs once finished
examples are compacted away), and attack wall time / (rows × the per-row time of one bare batched
value-and-grad call of the whole batch): the distance from the compute limit. Then, on softmax
regression, mean ‖r‖₂ / exact QP minimum.
Pins the process to ``--threads`` cores before JAX loads (PITFALLS: timings on 2 cores are fragile).
"""

from __future__ import annotations

import argparse
import os
import sys


def _pin(threads: int) -> None:
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def _import_advertorch():
    """advertorch 0.2.3 on current torch (PITFALLS): restore ``zero_gradients`` and register stub
    ``torchvision``/``PIL`` modules before importing; site-packages are never edited. None if absent."""
    import types
    try:
        import torch
        import torch.autograd.gradcheck  # noqa: F401
    except ImportError:
        return None
    gradcheck = sys.modules["torch.autograd.gradcheck"]  # the attribute of that name is the function
    if not hasattr(gradcheck, "zero_gradients"):
        def zero_gradients(x):
            if isinstance(x, torch.Tensor):
                if x.grad is not None:
                    x.grad.detach_()
                    x.grad.zero_()
            else:
                for e in x:
                    zero_gradients(e)
        gradcheck.zero_gradients = zero_gradients
    for name in ("torchvision", "torchvision.transforms", "PIL", "PIL.Image"):
        if name not in sys.modules:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - missing or broken: a stub is enough for the attack
                sys.modules[name] = types.ModuleType(name)
    tv, transforms = sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    tv.transforms = transforms

    class _Unavailable:  # advertorch builds these at import time; the L-BFGS attack never calls them
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            raise RuntimeError("torchvision stub: not available in this benchmark")

    for name in ("ToPILImage", "ToTensor"):
        if not hasattr(transforms, name):
            setattr(transforms, name, _Unavailable)
    sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    try:
        from advertorch.attacks import LBFGSAttack
    except Exception as e:  # noqa: BLE001
        print(f"(advertorch not importable: {e!r})")
        return None
    return torch, LBFGSAttack


def _torch_mlp(torch, params, activation="sigmoid"):
    """The same MLP in torch, from our Flax params (kernels transposed)."""
    import numpy as np
    layers = []
    dense = sorted(params["params"], key=lambda k: int(k.split("_")[1]))
    for i, name in enumerate(dense):
        w = np.asarray(params["params"][name]["kernel"])
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(params["params"][name]["bias"]).copy()))
        layers.append(lin)
        if i < len(dense) - 1:
            layers.append(torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def _advertorch(adv, params, x, t, activation="sigmoid"):
    """(seconds, success rate, per-image l2) of advertorch's targeted LBFGSAttack, whole batch at once."""
    import time

    import numpy as np
    torch, LBFGSAttack = adv
    net = _torch_mlp(torch, params, activation)
    attack = LBFGSAttack(net, num_classes=10, batch_size=len(x), targeted=True)
    xt, tt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(t, np.int64))
    t0 = time.perf_counter()
    out = attack.perturb(xt, tt)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        success = (net(out).argmax(1) == tt).numpy()
    l2 = torch.linalg.vector_norm((out - xt).reshape(len(x), -1), dim=1).numpy()
    return wall, success, l2


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="FC100-100-10")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024])
    p.add_argument("--jaxopt-max-batch", type=int, default=16,
                   help="jaxopt is measured only up to this batch (it costs ~0.1-1 s per image)")
    p.add_argument("--jaxopt-cold", action="store_true",
                   help="time jaxopt by one cold call (compilation included: seconds, against minutes of "
                        "solving at batch 256) instead of a warm-up call plus a timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--qp-images", type=int, default=20)
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--block-size", type=int, default=64,
                   help="also time our attack with AttackConfig(block_size=...) for larger batches")
    p.add_argument("--advertorch-batch", type=int, default=256,
                   help="batch for the advertorch comparison (when torch and advertorch are installed)")
    args = p.parse_args(argv)
    _pin(args.threads)
    adv = _import_advertorch()
    if adv is not None:
        adv[0].set_num_threads(args.threads)

    import dataclasses
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.tree_util import Partial

    from intriguing_jax import attacks, data, provenance, train, zoo
    from intriguing_jax.exact import linear_min_l2

    mnist = data.load_mnist()
    model, params, _ = zoo.trained(args.model, mnist, workdir=args.workdir)
    fn = Partial(model.apply, params)
    pred = train.predict(model.apply, params, mnist.test.images)
    ok = np.flatnonzero(pred == mnist.test.labels)[: max(*args.batches, args.advertorch_batch)]
    x_all, y_all = mnist.test.images[ok], mnist.test.labels[ok]
    t_all = np.asarray(attacks.random_wrong_targets(jax.random.key(0), y_all))
    cfg = attacks.AttackConfig()

    def timed(f, repeats):
        if repeats == 0:  # one cold call
            t0 = time.perf_counter()
            out = jax.block_until_ready(f())
            return time.perf_counter() - t0, out
        out = f()
        jax.block_until_ready(out)  # compile + warm
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), out

    print(f"# {provenance.machine()}, {args.threads} pinned thread(s); model {model.name}; "
          f"config {cfg}")
    print("| batch | batched img/s | jaxopt img/s | ratio | batched evals: rows (per image) | jaxopt evals: "
          "rows (per image) | batched success | jaxopt success | batched mean l2 | jaxopt mean l2 | "
          f"wall / (rows × vg per row) | blocks of {args.block_size}: img/s (success, mean l2; wall / (rows × "
          "vg per row of a block)) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for b in args.batches:
        x, t = x_all[:b], t_all[:b]
        flat = jnp.asarray(x)
        const = jnp.ones((b,))

        def vg_time(rows):  # one bare batched value-and-grad call of `rows` images
            f = jax.jit(jax.value_and_grad(lambda r: jnp.sum(
                attacks._objective(fn, flat[:rows], jnp.asarray(t[:rows]), const[:rows], r, cfg))))
            return timed(lambda: f(jnp.zeros_like(flat[:rows])), 20)[0]

        t_vg = vg_time(b)
        t_ours, res = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=cfg), args.repeats)
        evals = int(res.grad_evals.sum())
        row = [b, f"{b / t_ours:.1f}"]
        if b <= args.jaxopt_max_batch:
            jcfg = attacks.AttackConfig(solver="jaxopt", warm_start=False)
            t_ref, ref = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=jcfg), 0 if args.jaxopt_cold else 1)
            ref_evals = int(ref.grad_evals.sum())
            row += [f"{b / t_ref:.2f}", f"{t_ref / t_ours:.0f}×", f"{evals} ({evals / b:.0f})",
                    f"{ref_evals} ({ref_evals / b:.0f})",
                    f"{float(res.success.mean()):.0%}", f"{float(ref.success.mean()):.0%}",
                    f"{float(res.l2.mean()):.3f}", f"{float(ref.l2[ref.success].mean()):.3f}"]
        else:
            row += ["–", "–", f"{evals} ({evals / b:.0f})", "–", f"{float(res.success.mean()):.0%}", "–",
                    f"{float(res.l2.mean()):.3f}", "–"]
        row.append(f"{t_ours / (evals * t_vg / b):.2f}")
        if b > args.block_size:
            bcfg = dataclasses.replace(cfg, block_size=args.block_size)
            t_blk, blk = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=bcfg), args.repeats)
            limit = int(blk.grad_evals.sum()) * vg_time(args.block_size) / args.block_size
            row.append(f"{b / t_blk:.1f} ({float(blk.success.mean()):.0%}, {float(blk.l2.mean()):.3f}; "
                       f"{t_blk / limit:.2f})")
        else:
            row.append("–")
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)

    if adv is not None:  # the same weights, images and targets through advertorch's LBFGSAttack
        b = args.advertorch_batch
        x, t = x_all[:b], t_all[:b]
        t_adv, ok_adv, l2_adv = _advertorch(adv, params, x, t)
        t_ours, res = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=cfg), args.repeats)
        bcfg = dataclasses.replace(cfg, block_size=args.block_size)
        t_blk, blk = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=bcfg), args.repeats)
        print(f"\nadvertorch {__import__('advertorch').__version__} LBFGSAttack (targeted, 9 c-steps × 100 "
              f"iterations, whole batch as one scipy problem), {model.name}, batch {b}: "
              f"{b / t_adv:.1f} img/s, success {ok_adv.mean():.0%}, mean ‖r‖₂ {l2_adv[ok_adv].mean():.3f} | ours: "
              f"{b / t_ours:.1f} img/s, success {float(res.success.mean()):.0%}, mean ‖r‖₂ "
              f"{float(res.l2[res.success].mean()):.3f} | speed ratio {t_adv / t_ours:.1f}× | ours in blocks of "
              f"{args.block_size}: {b / t_blk:.1f} img/s, success {float(blk.success.mean()):.0%}, mean ‖r‖₂ "
              f"{float(blk.l2[blk.success].mean()):.3f}, speed ratio {t_adv / t_blk:.1f}×")
    else:
        print("\n(advertorch comparison skipped: pip install torch==2.13.0 advertorch==0.2.3)")

    # Softmax regression: the exact minimum is a convex QP.
    lin, lin_params, _ = zoo.trained("FC10(1e-4)", mnist, workdir=args.workdir)
    pred = train.predict(lin.apply, lin_params, mnist.test.images)
    ok = np.flatnonzero(pred == mnist.test.labels)[: args.qp_images]
    x, y = mnist.test.images[ok], mnist.test.labels[ok]
    t = np.asarray(attacks.random_wrong_targets(jax.random.key(1), y))
    res = attacks.lbfgs_attack(Partial(lin.apply, lin_params), x, t, config=cfg)
    W = np.asarray(lin_params["params"]["dense_0"]["kernel"], np.float64)
    bias = np.asarray(lin_params["params"]["dense_0"]["bias"], np.float64)
    exact = [linear_min_l2(W, bias, xi, ti) for xi, ti in zip(x, t)]
    ratio = np.asarray(res.l2) / np.asarray(exact)
    print(f"\nsoftmax regression FC10(1e-4), {len(t)} test images: success {float(res.success.mean()):.0%}, "
          f"mean ‖r‖₂ / exact QP minimum = {ratio.mean():.4f} (min {ratio.min():.4f}, max {ratio.max():.4f})")
    mres = attacks.lbfgs_attack(Partial(lin.apply, lin_params), x, t, config=dataclasses.replace(cfg, loss="margin"))
    mratio = np.asarray(mres.l2) / np.asarray(exact)
    print(f"with AttackConfig(loss='margin', kappa={cfg.kappa:g}): success {float(mres.success.mean()):.0%}, "
          f"mean ‖r‖₂ / exact = {mratio.mean():.4f} (min {mratio.min():.4f}, max {mratio.max():.4f})")
    if adv is not None:
        t_adv, ok_adv, l2_adv = _advertorch(adv, lin_params, x, t)
        r_adv = l2_adv / np.asarray(exact)
        print(f"advertorch on the same: success {ok_adv.mean():.0%}, mean ‖r‖₂ / exact = {r_adv[ok_adv].mean():.4f}, "
              f"{len(t) / t_adv:.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
