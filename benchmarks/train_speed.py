"""Training throughput: one model alone against populations trained as one jitted program.

    python -m benchmarks.train_speed                     # FC100-100-10, 60,000 images, batch 128, both cores
    python -m benchmarks.train_speed --advtrain          # where an adversarial-training epoch goes

For one model (``train.fit``) and populations of ``--members`` (``train.fit_population``), each stepped
from the host (a dispatch per minibatch) and with each epoch as one ``lax.scan`` on the device, prints
model-steps per second (members × optimiser steps / wall) of a second one-epoch call (the first, which
compiles, is reported separately), and writes the rows as JSON (``--out``).

With ``--advtrain``: populations of ``--members`` (default 5, the adversarial-training finals' seeds)
trained by ``adversarial_training.fit_population`` for ``--epochs`` epochs with each pool-layer set of the
finals, beside the same population without pools; per set, the last epoch's wall time split into pool
generation (the attacks, ``pool_seconds`` of the history) and the rest (the optimiser steps with the pool
terms, the refreshes' bookkeeping). The attacks get longer as the nets train (the finals run 100 epochs):
read the generation share of a few epochs as a lower bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="FC100-100-10")
    p.add_argument("--members", type=int, nargs="+", default=None, help="population sizes (default: 4 8 16; "
                                                                        "with --advtrain: 5)")
    p.add_argument("--out", default=None, help="default: benchmarks/train_speed.json, or "
                                               "benchmarks/advtrain_cost.json with --advtrain")
    p.add_argument("--advtrain", action="store_true", help="time adversarial-training epochs instead (see above)")
    p.add_argument("--epochs", type=int, default=3, help="with --advtrain: epochs per run (the last one is reported)")
    args = p.parse_args(argv)
    if args.advtrain:
        if args.epochs < 2:
            p.error("--epochs must be at least 2: the first epoch compiles")
        return advtrain_cost(args.model, args.members or [5], args.epochs,
                             args.out or "benchmarks/advtrain_cost.json")
    args.out, args.members = args.out or "benchmarks/train_speed.json", args.members or [4, 8, 16]

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


def advtrain_cost(model_name: str, members: list[int], epochs: int, out: str) -> int:
    import jax
    import jax.numpy as jnp

    from experiments.adversarial_training import VARIANTS  # the finals' pool-layer sets, weight decay alone first
    from intriguing_jax import adversarial_training, data, models, provenance, train
    mnist = data.load_mnist()
    model = models.build(model_name)
    cfg = train.TrainConfig(epochs=epochs)
    rows = []
    for m in members:
        keys = jnp.stack([jax.random.key(s) for s in range(m)])
        for label, layers in VARIANTS.items():
            t0 = time.perf_counter()
            _, histories = adversarial_training.fit_population(model, mnist.train, keys, cfg,
                                                               adversarial_training.AdvTrainConfig(layers=layers))
            last = histories[0][-1]  # each member's record holds its share: x m for the population's
            rows.append({"run": label, "layers": list(layers), "members": m, "epochs": epochs,
                         "total_s": time.perf_counter() - t0, "epoch_s": last["seconds"] * m,
                         "generation_s": last.get("pool_seconds", 0.0) * m})
    print(f"# {provenance.machine()}; {model_name}, {len(mnist.train)} images, batch {cfg.batch_size}, "
          f"AdvTrainConfig defaults; epoch {epochs} of {epochs} (the first compiles); jax {jax.__version__}\n")
    print("| pools | members | epoch s | generating pool points s | the rest s | epoch vs no pools |\n|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["members"] == r["members"] and not b["layers"])
        print(f"| {r['run']} | {r['members']} | {r['epoch_s']:.2f} | {r['generation_s']:.2f} | "
              f"{r['epoch_s'] - r['generation_s']:.2f} | {r['epoch_s'] / base['epoch_s']:.2f}× |")
    json.dump({"model": model_name, "batch_size": cfg.batch_size, "rows": rows, "machine": provenance.machine(),
               "versions": provenance.versions()}, open(out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
