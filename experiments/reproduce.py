"""Reproduce the paper's MNIST results (Tables 1–5, Figs. 1, 2, 5, 7, units, adversarial training) in results/.

    python -m experiments.reproduce            # full run (about 2 h 30 min on a 2-core CPU)
    python -m experiments.reproduce --quick    # smoke run: 1 epoch, 16 images, into results_quick/
    python -m experiments.reproduce --only table2   # one pipeline; REPORT.md is re-assembled

Every pipeline reuses what is cached under --workdir (checkpoints, attack chunks), so an interrupted run
resumes where it stopped and a repeated run only re-renders. REPORT.md is assembled from the JSON
results present in --results, so it always shows every section computed so far.
"""

from __future__ import annotations

import json
import time

from experiments import adversarial_training, common, cross_model, cross_training, spectral, table1, units
from intriguing_jax import attacks, storage, train

# name -> (module with run/render, JSON file it writes); run in this order.
PIPELINES = {
    "table1": (table1, "table1.json"),
    "table2": (cross_model, "table2.json"),
    "table3": (cross_training, "table3_4.json"),
    "units": (units, "units.json"),
    "spectral": (spectral, "spectral.json"),
    "advtrain": (adversarial_training, "adversarial_training.json"),
}
# this 2-core machine: the other pipelines ~21 min (models trained 21 min of it: 1,287 s summed) + the
# adversarial-training pipeline's 53 runs, 131 min of summed run wall times (study 46, final runs at 100 epochs 85)
FULL_RUN_MINUTES = 150

HEADER = """# intriguing_jax: the paper's MNIST results, reproduced

Our measurement beside the paper's for each table, with the paper value's provenance mark from
`../shared/PAPER.md`: [text] stated in the paper, [2nd] quoted by independent reimplementations, [rec]
recalled (approximate). Each section ends with the command, seed, versions, machine and wall time that
made it; JSON beside this file holds every number. Verdict rules are stated with each verdict.
"""


def context(args) -> common.Context:
    if args.quick:
        return common.Context(args.workdir, args.results, args.seed, train.TrainConfig(epochs=1, ae_epochs=1, ae_iterations=20),
                              attacks.AttackConfig.smoke(), args.num_images or 16)
    return common.Context(args.workdir, args.results, args.seed, num_images=args.num_images or 1000)


def run_all(ctx: common.Context, mnist, only=None, **overrides) -> str:
    """Runs the selected pipelines in order (``overrides[name]`` are extra keyword arguments for one
    pipeline's ``run``, e.g. fewer models in tests), then assembles and writes REPORT.md."""
    for name, (module, _) in PIPELINES.items():
        if only and name not in only:
            continue
        t0 = time.time()
        module.run(ctx, mnist, **overrides.get(name, {}))
        print(f"[{name}] done in {time.time() - t0:.0f} s")
    return write_report(ctx)


def write_report(ctx: common.Context) -> str:
    sections = []
    for name, (module, filename) in PIPELINES.items():
        path = ctx.out / filename
        if path.exists():
            try:
                sections.append(module.render(json.loads(path.read_text())))
            except (KeyError, TypeError, ValueError) as e:  # written by an older version of the pipeline
                sections.append(f"## {name}\n\n`{path}` does not match this version ({e!r}); rerun "
                                f"`python -m experiments.reproduce --only {name}`.\n")
    text = HEADER + "\n" + "\n".join(sections)
    storage.write_text(ctx.out / "REPORT.md", text)
    return text


def main(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 training epoch, 16 images per attack")
    p.add_argument("--num-images", type=int, default=None, help="images attacked per model (default 1000)")
    p.add_argument("--only", nargs="+", choices=list(PIPELINES), help="run only these pipelines")
    p.add_argument("--alexnet-weights", default=None,
                   help="AlexNet weights (.npz, keys conv1/kernel ... fc3/bias) for the spectral table; "
                        "default: random initialisation")
    args = p.parse_args(argv)
    if args.quick and args.results == "results":
        args.results = "results_quick"
    print(f"Full run: about {FULL_RUN_MINUTES} minutes on a 2-core CPU from scratch; cached steps are "
          "skipped." if not args.quick else "Quick smoke run (not the paper's numbers).")
    mnist = common.setup(args)
    ctx = context(args)
    t0 = time.time()
    run_all(ctx, mnist, only=args.only, spectral={"alexnet_weights": args.alexnet_weights})
    print(f"wrote {ctx.out / 'REPORT.md'} in {time.time() - t0:.0f} s")
    common.log_compile_cache()


if __name__ == "__main__":
    main()
