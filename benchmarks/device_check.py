"""Accelerator readiness: compile time, throughput and agreement with the CPU on an NVIDIA GPU.

On a CPU machine (with the project's venv), once:
    python -m benchmarks.device_check --prepare .device    # data, FC100-100-10 weights, jaxopt wheel,
                                                           # and the CPU reference on 256 images
On the GPU machine (JAX with CUDA preinstalled, no downloads; carry .device):
    bash benchmarks/device_check.sh                         # at most ~8 minutes

Prints the compile time, images/s at batch 256 / 4,096 / 32,768 on FC100-100-10 and at 256 / 4,096 on the
held-out flax-style CNN (``benchmarks.matrix``'s ``flax-cnn``), the wall time of the README's sweep of all 10,000 test images × 9 wrong targets, and success and mean ‖r‖₂ on the reference
images next to the CPU's (the same weights, images and targets).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

MODEL = "FC100-100-10"


def _images(mnist, model, params, n):
    import jax
    import numpy as np

    from intriguing_jax import attacks, train
    pred = train.predict(model.apply, params, mnist.test.images)
    ok = np.flatnonzero(pred == mnist.test.labels)[:n]
    x, y = mnist.test.images[ok], mnist.test.labels[ok]
    return x, np.asarray(attacks.random_wrong_targets(jax.random.key(0), y))


def prepare(dest: pathlib.Path, workdir: str) -> None:
    from jax.tree_util import Partial

    from intriguing_jax import attacks, data, zoo
    dest.mkdir(parents=True, exist_ok=True)
    mnist = data.load_mnist()
    shutil.copy(data.cache_dir() / "mnist.npz", dest / "mnist.npz")
    model, params, _ = zoo.trained(MODEL, mnist, workdir=workdir)
    ckpt = zoo.checkpoint_path(workdir, MODEL, "train", 0, zoo.train.TrainConfig())
    (dest / "workdir" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt, dest / "workdir" / "checkpoints" / ckpt.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest / "wheels"),
                    "jaxopt==0.8.5"], check=True)
    from benchmarks import matrix
    matrix.trained("flax-cnn", mnist, workdir)  # trains and caches the held-out CNN once
    cnn_ckpt = matrix.checkpoint_path("flax-cnn", workdir)
    shutil.copy(cnn_ckpt, dest / "workdir" / "checkpoints" / cnn_ckpt.name)
    x, t = _images(mnist, model, params, 256)
    res = attacks.lbfgs_attack(Partial(model.apply, params), x, t)
    ref = {"backend": "cpu", "images": len(t), "success_rate": float(res.success.mean()),
           "mean_l2": float(res.l2[res.success].mean()), "config": repr(attacks.AttackConfig())}
    (dest / "cpu_reference.json").write_text(json.dumps(ref, indent=1))
    print(f"prepared {dest}: {ref}")


def check(src: pathlib.Path, batches=(256, 4096, 32768), sweep_images: int = 10000, cnn_batches=(256, 4096)) -> int:
    import jax
    import numpy as np
    from jax.tree_util import Partial

    from intriguing_jax import _attack_engine as _engine
    from intriguing_jax import attacks, compile_cache, data, zoo
    compile_cache.enable(src / "jax_cache")
    print(f"devices: {jax.devices()}")
    mnist = data.load_mnist("cache")
    model, params, _ = zoo.trained(MODEL, mnist, workdir=str(src / "workdir"))
    fn = Partial(model.apply, params)
    ref = json.loads((src / "cpu_reference.json").read_text())
    x, t = _images(mnist, model, params, ref["images"])
    cfg = attacks.AttackConfig()
    slots = min(_engine.default_block_size(), len(x))
    t0 = time.perf_counter()
    _engine.attack_streaming.lower(fn, jax.numpy.asarray(x), jax.numpy.asarray(t), (784,), cfg, slots).compile()
    print(f"compile (batch {len(x)}): {time.perf_counter() - t0:.2f} s (lowering included)")
    res = attacks.lbfgs_attack(fn, x, t)
    ok = np.asarray(res.success)
    l2 = float(np.asarray(res.l2)[ok].mean())
    print(f"reference images ({len(t)}): success {ok.mean():.1%} (CPU {ref['success_rate']:.1%}), mean ‖r‖₂ "
          f"{l2:.4f} (CPU {ref['mean_l2']:.4f}, ratio {l2 / ref['mean_l2']:.4f})")
    # every (image, wrong target) pair of the test set, the workload of the batches below
    labels = mnist.test.labels[:sweep_images]
    shift = np.arange(1, 10)
    img = np.repeat(np.arange(len(labels)), 9)
    tgt = ((labels[:, None] + shift[None]) % 10).ravel()
    for b in batches:
        xb, tb = mnist.test.images[img[:b]], tgt[:b]
        jax.block_until_ready(attacks.lbfgs_attack(fn, xb, tb))  # compile
        t0 = time.perf_counter()
        r = jax.block_until_ready(attacks.lbfgs_attack(fn, xb, tb))
        wall = time.perf_counter() - t0
        print(f"batch {b}: {b / wall:.0f} images/s, success {float(r.success.mean()):.1%}, "
              f"mean ‖r‖₂ {float(r.l2[r.success].mean()):.4f}", flush=True)
    from benchmarks import matrix
    if matrix.checkpoint_path("flax-cnn", src / "workdir").exists():
        cnn, cnn_params, _ = matrix.trained("flax-cnn", mnist, str(src / "workdir"))
        cnn_fn = Partial(cnn.apply, cnn_params)
        for b in cnn_batches:
            xb, tb = mnist.test.images[img[:b]].reshape(-1, 28, 28, 1), tgt[:b]
            t0 = time.perf_counter()
            jax.block_until_ready(attacks.lbfgs_attack(cnn_fn, xb, tb))
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            r = jax.block_until_ready(attacks.lbfgs_attack(cnn_fn, xb, tb))
            wall = time.perf_counter() - t0
            print(f"flax-style CNN, batch {b}: first call {first:.1f} s, {b / wall:.0f} images/s, success "
                  f"{float(r.success.mean()):.1%}, mean ‖r‖₂ {float(r.l2[r.success].mean()):.4f}, evaluations per "
                  f"image {float(r.grad_evals.mean()):.0f}", flush=True)
    t0 = time.perf_counter()
    res = attacks.attack_in_chunks(fn, mnist.test.images[img], tgt, chunk_size=32768)
    wall = time.perf_counter() - t0
    print(f"{len(labels)} test images × 9 targets ({len(tgt)} attacks, chunks of 32,768): {wall:.1f} s, "
          f"{len(tgt) / wall:.0f} attacks/s, success {float(np.mean(res.success)):.2%}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", metavar="DIR", help="on a CPU machine: write what the GPU run needs to DIR")
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--check", metavar="DIR", help="on the GPU machine: run the check with DIR's files")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 4096, 32768])
    p.add_argument("--sweep-images", type=int, default=10000, help="test images × 9 targets timed at the end")
    p.add_argument("--cnn-batches", type=int, nargs="*", default=[256, 4096], help="batches of the flax-style CNN")
    args = p.parse_args(argv)
    if args.prepare:
        prepare(pathlib.Path(args.prepare), args.workdir)
        return 0
    if args.check:
        return check(pathlib.Path(args.check), args.batches, args.sweep_images, args.cnn_batches)
    p.error("give --prepare DIR or --check DIR")


if __name__ == "__main__":
    sys.exit(main())
