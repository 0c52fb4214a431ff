"""Attack speed against the strongest peers, side by side in one run, on MLPs and convolutional nets.

    pip install -e '.[bench]' && python -m benchmarks.attack_speed       # the four models below

For each model (FC100-100-10 and the ConvNet from the registry; a 784-100-100-10 ReLU MLP and a CNN in the
style of flax's ``examples/mnist``, NHWC, both trained here: held-out architectures, not used to choose
any default) and the same correctly classified MNIST test images,
weights and random wrong targets, prints for our ``lbfgs_attack`` (default config), foolbox 3's
``DDNAttack`` (the same JAX model, jitted, through EagerPy) and advertorch's ``LBFGSAttack`` (the same
weights in torch; MLPs only): our execution (one XLA loop, or stepped from the host), first call s
(compilation included), steady images/s (median of ``--repeats``, the methods alternating), evaluations per image,
success and mean ‖r‖₂, and the ratios to ours; also ours compiled ``"optimized"`` (the tier the default
``compile="auto"`` moves a program to once it has attacked ``FAST_ROWS`` images: what a long sweep runs).
Also our first call in a new process with the persistent
compilation cache cold and then warm. Then, on softmax regression, mean ‖r‖₂ / the exact QP minimum.
Pins the process to ``--threads`` cores before JAX loads (timings on 2 cores are fragile: another busy process slows small XLA ops 10–100×).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from benchmarks import matrix


def _pin(threads: int) -> None:
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def _import_advertorch():
    """advertorch 0.2.3 on current torch: restore ``zero_gradients`` and register stub
    ``torchvision``/``PIL`` modules before importing; site-packages are never edited. None if absent."""
    import types
    try:
        import torch
        import torch.autograd.gradcheck  # noqa: F401
    except ImportError:
        return None
    gradcheck = sys.modules["torch.autograd.gradcheck"]  # the attribute of that name is the function
    if not hasattr(gradcheck, "zero_gradients"):
        def zero_gradients(x):
            if isinstance(x, torch.Tensor):
                if x.grad is not None:
                    x.grad.detach_()
                    x.grad.zero_()
            else:
                for e in x:
                    zero_gradients(e)
        gradcheck.zero_gradients = zero_gradients
    for name in ("torchvision", "torchvision.transforms", "PIL", "PIL.Image"):
        if name not in sys.modules:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - missing or broken: a stub is enough for the attack
                sys.modules[name] = types.ModuleType(name)
    tv, transforms = sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    tv.transforms = transforms

    class _Unavailable:  # advertorch builds these at import time; the L-BFGS attack never calls them
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            raise RuntimeError("torchvision stub: not available in this benchmark")

    for name in ("ToPILImage", "ToTensor"):
        if not hasattr(transforms, name):
            setattr(transforms, name, _Unavailable)
    sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    try:
        from advertorch.attacks import LBFGSAttack
    except Exception as e:  # noqa: BLE001
        print(f"(advertorch not importable: {e!r})")
        return None
    return torch, LBFGSAttack


def _torch_mlp(torch, params, activation="sigmoid"):
    """The same MLP in torch, from our Flax params (kernels transposed)."""
    import numpy as np
    layers = []
    dense = sorted(params["params"], key=lambda k: int(k.split("_")[1]))
    for i, name in enumerate(dense):
        w = np.asarray(params["params"][name]["kernel"])
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(params["params"][name]["bias"]).copy()))
        layers.append(lin)
        if i < len(dense) - 1:
            layers.append(torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def _advertorch(adv, params, x, t, activation="sigmoid"):
    """(seconds, success rate, per-image l2) of advertorch's targeted LBFGSAttack, whole batch at once."""
    import time

    import numpy as np
    torch, LBFGSAttack = adv
    net = _torch_mlp(torch, params, activation)
    attack = LBFGSAttack(net, num_classes=10, batch_size=len(x), targeted=True)
    xt, tt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(t, np.int64))
    t0 = time.perf_counter()
    out = attack.perturb(xt, tt)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        success = (net(out).argmax(1) == tt).numpy()
    l2 = torch.linalg.vector_norm((out - xt).reshape(len(x), -1), dim=1).numpy()
    return wall, success, l2


def _import_foolbox():
    try:
        import foolbox
    except ImportError:
        return None
    return foolbox


def _ddn(fb, apply_fn, x, t):
    """(seconds, success, per-image l2) of one foolbox ``DDNAttack`` call (its defaults: 100 steps)."""
    import time

    import jax
    import jax.numpy as jnp
    fmodel = fb.JAXModel(apply_fn, bounds=(0, 1))
    xs, ts = jnp.asarray(x), jnp.asarray(t)
    t0 = time.perf_counter()
    _, adv, _ = fb.attacks.DDNAttack()(fmodel, xs, fb.criteria.TargetedMisclassification(ts), epsilons=None)
    jax.block_until_ready(adv)
    wall = time.perf_counter() - t0
    success = jnp.argmax(apply_fn(adv), -1) == ts
    return wall, success, jnp.linalg.norm((adv - xs).reshape(len(x), -1), axis=1)


def first_call(argv):
    """Child process: our first call (compilation included) with the persistent cache at argv[2]."""
    import time

    from jax.tree_util import Partial

    from intriguing_jax import attacks, compile_cache, data
    name, workdir, cache, n = argv[0], argv[1], argv[2], int(argv[3])
    compile_cache.enable(cache)
    mnist = data.load_mnist()
    model, params, x, t = matrix.problem(name, mnist, workdir, n)
    t0 = time.perf_counter()
    res = attacks.lbfgs_attack(Partial(model.apply, params), x, t)
    res.l2.block_until_ready()
    print(f"FIRST {time.perf_counter() - t0:.3f} {compile_cache.stats()['hits']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["FC100-100-10", "relu-mlp", "ConvNet", "flax-cnn"],
                   help="registry names, relu-mlp or flax-cnn (held-out architectures, trained here)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--qp-images", type=int, default=20, help="softmax-regression images compared with the exact minimum (0: skip)")
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--no-advertorch", action="store_true", help="skip advertorch (about 30 s per model)")
    p.add_argument("--first-call", nargs=4, metavar=("MODEL", "WORKDIR", "CACHE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _pin(args.threads)
    if args.first_call:
        return first_call(args.first_call)
    adv = None if args.no_advertorch else _import_advertorch()
    if adv is not None:
        adv[0].set_num_threads(args.threads)
    fb = _import_foolbox()

    import dataclasses
    import statistics
    import tempfile
    import time

    import jax
    import numpy as np
    from jax.tree_util import Partial

    from intriguing_jax import _attack_engine as _engine
    from intriguing_jax import attacks, data, provenance
    from intriguing_jax.exact import linear_min_l2

    mnist = data.load_mnist()
    cfg = attacks.AttackConfig()
    opt_cfg = dataclasses.replace(cfg, compile="optimized")
    print(f"# {provenance.machine()}, {args.threads} pinned thread(s), batch {args.batch}; jax {jax.__version__}"
          f", foolbox {getattr(fb, '__version__', 'absent')}; our config {cfg}")
    for name in args.models:
        model, params, x, t = matrix.problem(name, mnist, args.workdir, args.batch)
        fn = Partial(model.apply, params)
        b = len(x)
        mode = "stepped" if attacks._stepped(fn, jax.numpy.asarray(x), cfg) else "loop"
        firsts = {}
        for label, c in (("ours", cfg), ("optimized", opt_cfg)):
            jax.clear_caches()
            _engine._ATTACKED.clear()  # "auto" counts the images each program attacked in this process
            t0 = time.perf_counter()
            res = jax.block_until_ready(attacks.lbfgs_attack(fn, x, t, config=c))
            firsts[label] = time.perf_counter() - t0
        ours_first = firsts["ours"]
        jit_apply = jax.jit(model.apply)
        ddn_fn = Partial(jit_apply, params)
        rows = {"ours": [], "optimized": [], "DDN": []}
        if fb is not None:
            ddn_first, ddn_ok, ddn_l2 = _ddn(fb, ddn_fn, x, t)
        for _ in range(args.repeats):  # alternating, median
            t0 = time.perf_counter()
            res = jax.block_until_ready(attacks.lbfgs_attack(fn, x, t, config=cfg))
            rows["ours"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(attacks.lbfgs_attack(fn, x, t, config=opt_cfg))
            rows["optimized"].append(time.perf_counter() - t0)
            if fb is not None:
                rows["DDN"].append(_ddn(fb, ddn_fn, x, t)[0])
        ours = statistics.median(rows["ours"])
        ok = np.asarray(res.success)
        l2 = np.asarray(res.l2)
        print(f"\n## {model.name}, {b} images\n")
        print("| attack | execution | first call s | steady images/s | evaluations per image | success | "
              "mean ‖r‖₂ | median ‖r‖₂ | steady speed vs ours | first call vs ours |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| ours, `lbfgs_attack` default | {mode} | {ours_first:.2f} | "
              f"{b / ours:.1f} | {float(res.grad_evals.mean()):.1f} | {ok.mean():.1%} | {l2[ok].mean():.4f} | "
              f"{np.median(l2[ok]):.4f} | 1 | 1 |")
        optimized = statistics.median(rows["optimized"])
        print(f"| ours, `compile=\"optimized\"` (the tier \"auto\" moves to after {_engine.FAST_ROWS} images) | "
              f"{mode} | {firsts['optimized']:.2f} | {b / optimized:.1f} | (the same results) | | | | "
              f"ours {optimized / ours:.2f}× | ours {firsts['optimized'] / ours_first:.2f}× |")
        if fb is not None:
            ddn = statistics.median(rows["DDN"])
            dok, dl2 = np.asarray(ddn_ok), np.asarray(ddn_l2)
            print(f"| foolbox {fb.__version__} `DDNAttack` (100 steps) | – | {ddn_first:.2f} | {b / ddn:.1f} | 100 | "
                  f"{dok.mean():.1%} | {dl2[dok].mean():.4f} | {np.median(dl2[dok]):.4f} | ours {ddn / ours:.2f}× | "
                  f"ours {ddn_first / ours_first:.2f}× |")
            both = ok & dok
            print(f"\nper image, ours / DDN ‖r‖₂ on the {both.sum()} both solved: mean "
                  f"{(l2[both] / dl2[both]).mean():.4f}, median {np.median(l2[both] / dl2[both]):.4f}")
        if adv is not None and hasattr(model, "spec") and not model.spec.name.startswith("ConvNet"):
            activation = getattr(model.spec.module, "activation", "sigmoid")
            t_adv, ok_adv, l2_adv = _advertorch(adv, params, x, t, activation)
            print(f"| advertorch {__import__('advertorch').__version__} `LBFGSAttack` | – | {t_adv:.2f} | "
                  f"{b / t_adv:.1f} | – | {ok_adv.mean():.1%} | {l2_adv[ok_adv].mean():.4f} | "
                  f"{np.median(l2_adv[ok_adv]):.4f} | ours {t_adv / ours:.1f}× | ours {t_adv / ours_first:.1f}× |")
        # a new process, first with an empty persistent cache, then with the one it filled
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, "-m", "benchmarks.attack_speed", "--threads", str(args.threads),
                   "--first-call", name, args.workdir, cache, str(b)]
            firsts = []
            for _ in range(2):
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                line = [ln for ln in out.splitlines() if ln.startswith("FIRST")][0].split()
                firsts.append((float(line[1]), int(line[2])))
        print(f"\nours, first call in a new process: {firsts[0][0]:.2f} s with an empty compilation cache, "
              f"{firsts[1][0]:.2f} s with it filled ({firsts[1][1]} program(s) loaded from it)")

    if args.qp_images < 1:
        return 0
    # Softmax regression: the exact minimum is a convex QP.
    lin, lin_params, x, t = matrix.problem("FC10(1e-4)", mnist, args.workdir, args.qp_images)
    exact = np.array([linear_min_l2(np.asarray(lin_params["params"]["dense_0"]["kernel"], np.float64),
                                    np.asarray(lin_params["params"]["dense_0"]["bias"], np.float64), xi, ti)
                      for xi, ti in zip(x, t)])
    for label, c in (("default (cross-entropy)", cfg), ("loss='margin'", dataclasses.replace(cfg, loss="margin"))):
        res = attacks.lbfgs_attack(Partial(lin.apply, lin_params), x, t, config=c)
        ratio = np.asarray(res.l2) / exact
        print(f"\nsoftmax regression FC10(1e-4), {len(t)} test images, {label}: success "
              f"{float(res.success.mean()):.0%}, mean ‖r‖₂ / exact QP minimum = {ratio.mean():.4f} "
              f"(min {ratio.min():.4f}, max {ratio.max():.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
