"""Attack speed: batch-native solver vs jaxopt.LBFGSB under vmap, on the same images, weights, targets.

    python -m benchmarks.attack_speed                     # batches 1/16/256/1024, jaxopt up to 16
    python -m benchmarks.attack_speed --batches 1 16 --jaxopt-max-batch 16 --threads 1

For each batch size prints images/s of both solvers and their ratio, the batched value-and-grad
evaluations each performed, and attack wall time / (evaluations × one bare batched value-and-grad call):
the distance from the compute limit. Then, on softmax regression, mean ‖r‖₂ / exact QP minimum.
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
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="FC100-100-10")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024])
    p.add_argument("--jaxopt-max-batch", type=int, default=16,
                   help="jaxopt is measured only up to this batch (it costs ~0.1-1 s per image)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--qp-images", type=int, default=20)
    p.add_argument("--workdir", default="workdir")
    args = p.parse_args(argv)
    _pin(args.threads)

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
    ok = np.flatnonzero(pred == mnist.test.labels)[: max(args.batches)]
    x_all, y_all = mnist.test.images[ok], mnist.test.labels[ok]
    t_all = np.asarray(attacks.random_wrong_targets(jax.random.key(0), y_all))
    cfg = attacks.AttackConfig()

    def timed(f, repeats):
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
    print("| batch | batched img/s | jaxopt img/s | ratio | batched evals | jaxopt evals | "
          "batched success | jaxopt success | batched mean l2 | jaxopt mean l2 | wall / (evals × vg) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for b in args.batches:
        x, t = x_all[:b], t_all[:b]
        flat = jnp.asarray(x)
        const = jnp.ones((b,))
        vg = jax.jit(jax.value_and_grad(
            lambda r: jnp.sum(attacks._objective(fn, flat, jnp.asarray(t), const, r, cfg.penalty))))
        t_vg, _ = timed(lambda: vg(jnp.zeros_like(flat)), 20)
        t_ours, res = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=cfg), args.repeats)
        evals = int(res.grad_evals[0])
        row = [b, f"{b / t_ours:.1f}"]
        if b <= args.jaxopt_max_batch:
            jcfg = attacks.AttackConfig(solver="jaxopt", warm_start=False)
            t_ref, ref = timed(lambda: attacks.lbfgs_attack(fn, x, t, config=jcfg), 1)
            row += [f"{b / t_ref:.2f}", f"{t_ref / t_ours:.0f}×", evals, int(ref.grad_evals[0]),
                    f"{float(res.success.mean()):.0%}", f"{float(ref.success.mean()):.0%}",
                    f"{float(res.l2.mean()):.3f}", f"{float(ref.l2[ref.success].mean()):.3f}"]
        else:
            row += ["–", "–", evals, "–", f"{float(res.success.mean()):.0%}", "–",
                    f"{float(res.l2.mean()):.3f}", "–"]
        row.append(f"{t_ours / (evals * t_vg):.2f}")
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
