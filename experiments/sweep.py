"""A sharded, resumable attack sweep over MNIST test images: models × images × targets × configs.

    python -m experiments.sweep --models FC100-100-10 FC200-200-10 --num-images 1000 --targets all
    # several hosts (shared --out directory), one command per host:
    python -m experiments.sweep ... --coordinator HOST0:12355 --num-processes 2 --process-id I

Each shard runs over all local devices (shard_map over a 1-D mesh; on a CPU host, one device per core:
--cpu-devices); with --num-processes, shard g is
done by process g mod P and process 0 assembles. Finished shards are checksummed files under
--out/<spec hash>/; rerunning the same command skips them (kill it any time). Writes
results/sweep_<spec hash>.json (success rate and distortion per model and config).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
from jax.tree_util import Partial
from tqdm.auto import tqdm

from experiments import common
from intriguing_jax import attacks, compile_cache, models, provenance, storage, sweep


def main(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["FC100-100-10"], choices=models.names())
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--targets", choices=("all", "random"), default="all")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--device-batch", type=int, default=256, help="examples per device per round")
    p.add_argument("--c-steps", type=int, nargs="+", default=[attacks.AttackConfig.c_steps],
                   help="one attack config per value")
    p.add_argument("--maxiter", type=int, default=attacks.AttackConfig.maxiter)
    p.add_argument("--walk-steps", type=int, default=attacks.AttackConfig.walk_steps,
                   help="boundary-walk steps after the c search (0: the paper's minimiser, shortened)")
    p.add_argument("--out", default="workdir/sweeps", help="shard files (shared by all processes)")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--cpu-devices", type=int, default=len(os.sched_getaffinity(0)),
                   help="on a CPU host: one JAX device per core, each attacking its own block (results do "
                        "not depend on the count); ignored when an accelerator is the default backend")
    args = common.parse_args(p, argv)
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any backend starts
    if args.num_processes > 1:
        if jax.default_backend() == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mnist = common.setup(args)
    ctx = common.Context(args.workdir, args.results, args.seed, dataset=args.dataset)
    fns = {}
    for name in args.models:
        model, params, _ = common.trained(ctx, mnist, name)
        fns[name] = Partial(model.apply, params)
    spec = sweep.SweepSpec(models=tuple(args.models), num_images=args.num_images, targets=args.targets,
                           configs=tuple(attacks.AttackConfig(c_steps=c, maxiter=args.maxiter, walk_steps=args.walk_steps)
                                         for c in args.c_steps),
                           shard_size=args.shard_size, device_batch=args.device_batch, seed=args.seed)
    total = len(sweep.work_items(spec, mnist.test.labels)[0]) * len(spec.models) * len(spec.configs)
    print(f"sweep {spec.digest()}: {total} attacks in {len(sweep.expand(spec, mnist.test.labels))} shards on "
          f"{len(jax.local_devices())} local device(s), process {jax.process_index()} of {jax.process_count()}")
    t0 = time.time()
    with tqdm(total=total // jax.process_count(), unit="attack", desc="sweep") as bar:
        results = sweep.run_sweep(spec, fns, mnist.test.images, mnist.test.labels, args.out, progress=bar.update)
    if results is None:
        return None
    wall = time.time() - t0
    summary = {f"{m} | c_steps={spec.configs[c].c_steps}": attacks.summarize(r) for (m, c), r in results.items()}
    out = ctx.out / f"sweep_{spec.digest()}.json"
    storage.write_json(out, {"spec": dataclasses.asdict(spec), "summary": summary,
                                "digest": sweep.result_digest(results), "attacks": total,
                                "attacks_per_second": total / wall,
                                "provenance": provenance.record(args.seed, wall, devices=len(jax.devices()))})
    for k, v in summary.items():
        print(f"{k}: success {v['success_rate']:.1%}, mean distortion {v['mean_distortion']:.4f}")
    print(f"{total / wall:.1f} attacks/s -> {out}")
    compile_cache.log_stats()
    return summary


if __name__ == "__main__":
    main()
