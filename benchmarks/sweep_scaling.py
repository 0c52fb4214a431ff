"""Sweep scaling: attacks per second vs per-device batch and device count, side by side in one run.

    python -m benchmarks.sweep_scaling                         # 1, 2, 4 forced host devices on CPU
    python -m benchmarks.sweep_scaling --devices 1 --device-batches 64 256 1024   # e.g. on one GPU

Each device count runs in its own subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=N must be
set before JAX starts; on a GPU host the real devices are used and --devices only caps them). Every
cell attacks the same MNIST test images with the same trained FC100-100-10 and targets through
``intriguing_jax.sweep.sharded_attack``; the median of --repeats timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _measure(args) -> None:
    import time

    import jax
    import numpy as np
    from jax.tree_util import Partial

    from intriguing_jax import attacks, data, sweep, zoo

    devices = jax.local_devices()[: args.child]
    mnist = data.load_mnist()
    model, params, _ = zoo.trained("FC100-100-10", mnist, workdir=args.workdir)
    fn = Partial(model.apply, params)
    cfg = attacks.AttackConfig(c_steps=args.c_steps, maxiter=args.maxiter)
    rows = []
    for b in args.device_batches:
        n = b * len(devices)
        x = mnist.test.images[:n]
        t = np.asarray(attacks.random_wrong_targets(jax.random.key(0), mnist.test.labels[:n]))
        sweep.sharded_attack(fn, x, t, cfg, devices, b)  # compile + warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = sweep.sharded_attack(fn, x, t, cfg, devices, b)
            times.append(time.perf_counter() - t0)
        rows.append({"devices": len(devices), "device_batch": b, "images": n,
                     "images_per_s": n / float(np.median(times)), "success": float(np.mean(res.success))})
    print("ROWS " + json.dumps({"rows": rows, "device_kind": devices[0].device_kind}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--device-batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--c-steps", type=int, default=4)
    p.add_argument("--maxiter", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _measure(args)
    rows, kind = [], None
    for n in args.devices:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, "-m", "benchmarks.sweep_scaling", "--child", str(n), "--device-batches",
               *map(str, args.device_batches), "--c-steps", str(args.c_steps), "--maxiter", str(args.maxiter),
               "--repeats", str(args.repeats), "--workdir", args.workdir]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        got = json.loads(next(line[5:] for line in out.splitlines() if line.startswith("ROWS ")))
        rows += got["rows"]
        kind = got["device_kind"]
    base = {r["device_batch"]: r["images_per_s"] for r in rows if r["devices"] == rows[0]["devices"]}
    print(f"device kind: {kind}; {os.cpu_count()} CPU cores; attack c_steps={args.c_steps}, maxiter={args.maxiter}")
    print(f"{'devices':>8} {'dev batch':>10} {'images':>7} {'images/s':>10} {'vs 1st row':>10} {'success':>8}")
    for r in rows:
        print(f"{r['devices']:>8} {r['device_batch']:>10} {r['images']:>7} {r['images_per_s']:>10.1f} "
              f"{r['images_per_s'] / base[r['device_batch']]:>9.2f}× {r['success']:>8.1%}")


if __name__ == "__main__":
    main()
