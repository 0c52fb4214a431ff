"""Peak memory of ``lbfgs_attack_untargeted`` on N random images, blocked (``max_rows``) vs one batch.

    python -m benchmarks.untargeted_memory --num-images 6000

Each setting runs in its own process (peak resident memory from ``getrusage``): a linear 784→10 model,
random images in [0, 1], ``AttackConfig(c_steps=1, maxiter=3)`` — the memory, not the attack, is measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(n: int, max_rows: int) -> None:
    import jax
    import jax.numpy as jnp
    from jax.tree_util import Partial

    from intriguing_jax import attacks
    w = jax.random.normal(jax.random.key(0), (784, 10)) * 0.05
    x = jax.random.uniform(jax.random.key(1), (n, 784))
    y = jnp.argmax(x @ w, 1)
    t0 = time.time()
    res = attacks.lbfgs_attack_untargeted(Partial(lambda w, z: z @ w, w), x, y,
                                          config=attacks.AttackConfig(c_steps=1, maxiter=3), max_rows=max_rows,
                                          search="all")  # the search whose memory max_rows bounds
    jax.block_until_ready(res)
    print(json.dumps({"wall_s": time.time() - t0, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "mean_l2": float(res.l2.mean())}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=6000)
    p.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child)
    n = args.num_images
    for label, rows in (("default max_rows (8192)", 8192), ("one batch (max_rows = 9N)", 9 * n)):
        out = subprocess.run([sys.executable, "-m", "benchmarks.untargeted_memory", "--child", str(n), str(rows)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{n} images, {label}: peak {r['peak_gb']:.2f} GB, {r['wall_s']:.1f} s, mean l2 {r['mean_l2']:.5f}")


if __name__ == "__main__":
    main()
