"""Subprocess entry for the sweep tests: a tiny untrained MLP, synthetic images, one small sweep.

    python -m tests.sweep_worker OUT [--devices N] [--process-id I --num-processes P --coordinator HOST:PORT]

Prints "DONE <sha256 of result.npz arrays>" on the process that assembles the result.
"""

import argparse
import os
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--coordinator", default=None)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import numpy as np
    from jax.tree_util import Partial

    from intriguing_jax import attacks, models, sweep

    assert len(jax.local_devices()) == args.devices
    model = models.build(models.ModelSpec("tiny", models.MLP((16,)), {}))
    fns = {"tiny": Partial(model.apply, model.init(jax.random.key(0))),
           "tiny2": Partial(model.apply, model.init(jax.random.key(1)))}
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (24, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 24)
    spec = sweep.SweepSpec(models=("tiny", "tiny2"), configs=(attacks.AttackConfig(c_steps=3, maxiter=15, rescue_steps=0),),
                           num_images=12, targets="all", shard_size=16, device_batch=4)
    res = sweep.run_sweep(spec, fns, images, labels, args.out)
    if res is not None:
        print("DONE", sweep.result_digest(res), flush=True)
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
