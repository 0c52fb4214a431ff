"""Training throughput: one model alone against populations trained as one jitted program.

    python -m benchmarks.train_speed                     # FC100-100-10, 60,000 images, batch 128, both cores

For one model (``train.fit``) and populations of ``--members`` (``train.fit_population``), each stepped
from the host (a dispatch per minibatch) and with each epoch as one ``lax.scan`` on the device, prints
model-steps per second (members × optimiser steps / wall) of a second one-epoch call (the first, which
compiles, is reported separately), and writes the rows as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="FC100-100-10")
    p.add_argument("--members", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--out", default="benchmarks/train_speed.json")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from intriguing_jax import data, models, provenance, train
    mnist = data.load_mnist()
    model = models.build(args.model)
    cfg = train.TrainConfig(epochs=1)
    steps = len(mnist.train) // cfg.batch_size
    rows = []

    def timed(fn):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        return first, time.perf_counter() - t0

    first, wall = timed(lambda: train.fit(model, mnist.train, jax.random.key(0), cfg)[0])
    rows.append({"run": "one model alone (train.fit)", "members": 1, "loop": "host", "first_s": first, "epoch_s": wall,
                 "model_steps_per_s": steps / wall})
    for m in args.members:
        keys = jnp.stack([jax.random.key(s) for s in range(m)])
        for on_device in (False, True):
            first, wall = timed(lambda: train.fit_population(model, mnist.train, keys, cfg, on_device=on_device)[0])
            rows.append({"run": f"population of {m}", "members": m, "loop": "scan" if on_device else "host",
                         "first_s": first, "epoch_s": wall, "model_steps_per_s": m * steps / wall})
    base = rows[0]["model_steps_per_s"]
    print(f"# {provenance.machine()}; {args.model}, {len(mnist.train)} images, batch {cfg.batch_size}, {steps} steps per "
          f"epoch; jax {jax.__version__}\n")
    print("| run | epoch loop | first call s (one epoch, compiled) | epoch s | model-steps/s | vs alone |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['loop']} | {r['first_s']:.2f} | {r['epoch_s']:.2f} | {r['model_steps_per_s']:.0f} | "
              f"{r['model_steps_per_s'] / base:.2f}× |")
    json.dump({"model": args.model, "batch_size": cfg.batch_size, "steps_per_epoch": steps, "rows": rows,
               "machine": provenance.machine(), "versions": provenance.versions()}, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
