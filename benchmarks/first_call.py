"""The untargeted attack's first call (compilation included) and steady state, each first call in a fresh process.

    python -m benchmarks.first_call --models relu-mlp flax-cnn ConvNet --repeats 2

A first call is only cold in a process that has compiled nothing, so each measurement is a child process
(``--child``): it loads the model and images (``benchmarks.matrix``: the first ``--images`` correctly
classified test images, labels as predicted), then times ``lbfgs_attack_untargeted`` twice with the
defaults: the first call, and a second call on the same input (the steady state). It also prints the
seconds XLA spent compiling (JAX's ``/jax/core/compile/backend_compile_duration`` events) and the
programs compiled. The parent runs the models in turn, ``--repeats`` times round, one pinned core, and
prints each model's per-repeat times and their medians; compare two commits by running this file from
each (the same file: it calls only the public API). No peers: their first calls are in
``benchmarks.attackbench``'s table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def child(name: str, images: int, workdir: str, search: str) -> dict:
    import jax
    import numpy as np
    from jax.tree_util import Partial

    from benchmarks import matrix
    from intriguing_jax import attacks, data, train
    mnist = data.load_mnist()
    model, params, x, _ = matrix.problem(name, mnist, workdir, images)
    labels = np.asarray(train.predict(model.apply, params, x))
    fn = Partial(model.apply, params)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(secs) if event == "/jax/core/compile/backend_compile_duration" else None)
    search = int(search) if search.isdigit() else search
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = jax.block_until_ready(attacks.lbfgs_attack_untargeted(fn, x, labels, search=search))
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            first_compiles = list(compiles)  # (both calls return the same result; the second is reported)
    return {"model": name, "first_s": times[0], "steady_s": times[1], "compile_s": sum(first_compiles),
            "programs": len(first_compiles), "success": float(np.mean(res.success)),
            "median_l2": float(np.median(res.l2)), "evals_per_image": float(np.mean(res.grad_evals))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["relu-mlp", "flax-cnn", "ConvNet"])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--search", default="one+2", help="lbfgs_attack_untargeted's search")
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from benchmarks.attack_speed import _pin
    _pin(1)
    if args.child:
        print(json.dumps(child(args.child, args.images, args.workdir, args.search)))
        return
    rows = {m: [] for m in args.models}
    for _ in range(args.repeats):
        for m in args.models:
            out = subprocess.run([sys.executable, "-m", "benchmarks.first_call", "--child", m, "--images",
                                  str(args.images), "--workdir", args.workdir, "--search", args.search],
                                 check=True, capture_output=True, text=True).stdout
            rows[m].append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[m][-1]), flush=True)
    print("\n| model | first call s | steady s | XLA compile s (programs) | evals/image | median ‖r‖₂ | success |")
    print("|---|---|---|---|---|---|---|")
    for m, rs in rows.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        each = ", ".join(f"{r['first_s']:.2f}" for r in rs)
        print(f"| {m} | {med('first_s'):.2f} ({each}) | {med('steady_s'):.2f} | "
              f"{med('compile_s'):.2f} ({rs[0]['programs']}) | {rs[0]['evals_per_image']:.1f} | {rs[0]['median_l2']:.4f} | "
              f"{rs[0]['success']:.1%} |")


if __name__ == "__main__":
    main()
