"""Attack N test images of a trained registry model with random wrong targets (seeded).

    python -m experiments.attack --model FC100-100-10 --num-images 256

Writes results/attack/<model>.json (success rate, distortion statistics, c histogram, wall time,
images/s) and results/attack/<model>.png (original | perturbation ×10 | adversarial).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np
from jax.tree_util import Partial
from tqdm.auto import tqdm

from experiments import common
from experiments.harness import figures
from intriguing_jax import attacks, compile_cache, data, models, provenance, storage, zoo


def main(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="FC100-100-10", choices=models.names())
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--c-steps", type=int, default=attacks.AttackConfig.c_steps)
    p.add_argument("--maxiter", type=int, default=attacks.AttackConfig.maxiter)
    p.add_argument("--walk-steps", type=int, default=attacks.AttackConfig.walk_steps,
                   help="boundary-walk steps after the c search (0: the paper's minimiser, shortened)")
    p.add_argument("--solver", default="batched", choices=sorted(attacks.SOLVERS))
    p.add_argument("--block-size", type=int, default=None,
                   help="examples solved at once (default: 32 on CPU, 8192 on accelerators)")
    args = common.parse_args(p, argv)
    mnist = common.setup(args)
    model, params, _ = zoo.trained(args.model, mnist, seed=args.seed, workdir=args.workdir)
    cfg = attacks.AttackConfig(c_steps=args.c_steps, maxiter=args.maxiter, solver=args.solver,
                                block_size=args.block_size, walk_steps=args.walk_steps)
    x, y = mnist.test.images[: args.num_images], mnist.test.labels[: args.num_images]
    targets = np.asarray(attacks.random_wrong_targets(jax.random.key(args.seed), y))
    t0 = time.time()
    with tqdm(total=len(x), desc=f"attack {model.name}", unit="img") as bar:
        res = attacks.attack_in_chunks(Partial(model.apply, params), x, targets, config=cfg,
                                       chunk_size=args.chunk_size, progress=bar.update)
    wall = time.time() - t0
    out = pathlib.Path(args.results) / "attack"
    stem = storage.safe_name(model.name)
    summary = {"model": model.name, "images": f"{data.spec(args.dataset).title} test set, first {len(x)}", "targets": "random wrong label",
               **attacks.summarize(res), "images_per_second": len(x) / wall,
               "attack_config": dataclasses.asdict(cfg), "provenance": provenance.record(args.seed, wall)}
    storage.write_json(out / f"{stem}.json", summary)
    figures.adversarial_grid(out / f"{stem}.png", x, res.adversarial, y, res.prediction,
                             title=f"{data.spec(args.dataset).title}, {model.name}: original | r ×10 | adversarial")
    print(f"{model.name}: success {summary['success_rate']:.1%}, mean distortion "
          f"{summary['mean_distortion']:.4f}, {summary['images_per_second']:.1f} images/s -> {out}")
    compile_cache.log_stats()
    return summary


if __name__ == "__main__":
    main()
