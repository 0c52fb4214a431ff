"""Reproduce the paper's MNIST results (Tables 1–5, Figs. 1, 2, 5, 7, units, adversarial training) in results/.

    python -m experiments.reproduce            # full run (hours on a 2-core CPU; it prints what results/ records)
    python -m experiments.reproduce --quick    # smoke run: 1 epoch, 16 images, into results_quick/
    python -m experiments.reproduce --only table2   # one pipeline; REPORT.md is re-assembled
    python -m experiments.reproduce --render        # no computation: Markdown re-rendered from the JSON
    python -m experiments.reproduce --dataset fashion_mnist   # the same pipelines into results/fashion_mnist/

Pipelines reuse what is cached under --workdir (checkpoints, attack chunks): an interrupted run resumes
where it stopped. REPORT.md is assembled from every JSON result present in --results.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import time

from experiments import adversarial_training, common, cross_model, cross_training, spectral, table1, units
from experiments.harness import cross_dataset, runtime, summary
from experiments.training_recipes import changes_label
from intriguing_jax import attacks, compile_cache, data, models, storage, train

# name -> (module with run/render, JSON file it writes, its Markdown section); run in this order.
PIPELINES = {"table1": (table1, "table1.json", "table1_models.md"),
             "table2": (cross_model, "table2.json", "table2_cross_model.md"),
             "table3": (cross_training, "table3_4.json", "table3_4_cross_training.md"),
             "units": (units, "units.json", "units.md"), "spectral": (spectral, "spectral.json", "spectral.md"),
             "advtrain": (adversarial_training, "adversarial_training.json", "adversarial_training.md")}

HEADER = """# intriguing_jax: the paper's MNIST results, reproduced

Our measurement beside the paper's for each table, with the paper value's provenance mark from
`experiments/harness/paper.py`: [text] stated in the paper, [2nd] quoted by independent reimplementations, [rec]
recalled (approximate). Each section ends with the command, seed, versions, machine and wall time that
made it; JSON beside this file holds every number. Verdict rules are stated with each verdict.
"""


def context(args) -> common.Context:
    if args.quick:
        return common.Context(args.workdir, args.results, args.seed, train.TrainConfig(epochs=1, ae_epochs=1, ae_iterations=20),
                              attacks.AttackConfig.smoke(), args.num_images or 16, dataset=args.dataset)
    return common.Context(args.workdir, args.results, args.seed, num_images=args.num_images or 1000, dataset=args.dataset)


def run_all(ctx: common.Context, mnist, only=None, **overrides) -> str:
    """Runs the selected pipelines in order (``overrides[name]`` are extra keyword arguments for one
    pipeline's ``run``, e.g. fewer models in tests), then assembles and writes REPORT.md."""
    for name, (module, _, _) in ((n, p) for n, p in PIPELINES.items() if not only or n in only):
        t0 = time.time()
        module.run(ctx, mnist, **overrides.get(name, {}))
        print(f"[{name}] done in {time.time() - t0:.0f} s")
    return write_report(ctx)


def write_report(ctx: common.Context) -> str:
    """Renders every section from the JSON present in ``ctx.out`` (rewriting its Markdown file) and
    assembles REPORT.md."""
    sections, mnist_out = [], ctx.out.parent if ctx.dataset != "mnist" else None
    for name, (module, filename, md) in PIPELINES.items():
        path = ctx.out / filename
        if path.exists():
            try:
                result = json.loads(path.read_text())
                beside = mnist_out / filename if mnist_out is not None else None
                if beside is not None and beside.exists() and "beside" in inspect.signature(module.render).parameters:
                    sections.append(module.render(result, beside=json.loads(beside.read_text())))
                else:
                    sections.append(module.render(result))
                storage.write_text(ctx.out / md, sections[-1])
            except (KeyError, TypeError, ValueError) as e:  # written by an older version of the pipeline
                sections.append(f"## {name}\n\n`{path}` does not match this version ({e!r}); rerun "
                                f"`python -m experiments.reproduce --only {name}`.\n")
    header = HEADER if ctx.dataset == "mnist" else HEADER.replace(
        "the paper's MNIST results, reproduced", f"the paper's experiments on {data.spec(ctx.dataset).title}").replace(
        "Our measurement beside the paper's for each table",
        "Our measurement for each table; where MNIST's results (ours, `results/`) exist, Tables 1–4 show MNIST's "
        "number in brackets, and elsewhere the paper's MNIST value stands beside ours").replace(
        "the paper value's provenance mark", "a paper value's provenance mark") + "\n" + recipe_status(ctx) + "\n"
    if ctx.dataset == "mnist":
        sections.append(cross_dataset.section({n: (m, f) for n, (m, f, _) in PIPELINES.items()}, ctx.out,
                                              {n: s.title for n, s in data.DATASETS.items()}))
    text = header + "\n" + "\n".join(s for s in sections if s)
    storage.write_text(ctx.out / "REPORT.md", text)
    if ctx.dataset != "mnist" and (ctx.out.parent / "REPORT.md").exists():  # MNIST's report: its cross-dataset table
        write_report(dataclasses.replace(ctx, results=str(ctx.out.parent), dataset="mnist"))
    return text


def readme_block(results) -> str:
    """The README's results block for the MNIST results in ``results`` (``harness.summary``)."""
    return summary.block(pathlib.Path(results), {n: (m, f) for n, (m, f, _) in PIPELINES.items()})


def refresh_readme(ctx: common.Context) -> None:
    """Rewrites the results block of ./README.md when this run wrote the repository's MNIST results."""
    readme = pathlib.Path("README.md")
    if ctx.dataset == "mnist" and pathlib.Path(ctx.results).resolve() == pathlib.Path("results").resolve() and readme.exists():
        if summary.rewrite(readme, readme_block(ctx.results)):
            print("rewrote the results block of README.md")


def recipe_status(ctx: common.Context) -> str:
    """On a dataset other than MNIST, which training recipes its models use: those its recipe study chose
    (``training_study --dataset``), or, where no study is recorded or the registry differs from it, say so."""
    path = ctx.out / "training_study.json"
    chosen = json.loads(path.read_text()).get("chosen") if path.exists() else None
    registry = models.DATASET_RECIPES.get(ctx.dataset, {})
    if chosen is None:
        return (f"**Training recipes: MNIST's.** No recipe study is recorded in `{path}`: every model trains with the "
                f"registry's recipe (chosen on MNIST), changed only where `models.DATASET_RECIPES` says so "
                f"({len(registry)} model(s)).")
    differ = [m for m in chosen if chosen[m] != registry.get(m, {})]
    if differ:
        return (f"**Training recipes: the registry differs from the recipe study** for {', '.join(differ)} "
                "(`training_study.md`); the models here were trained with the registry's.")
    changed = [f"{m} ({changes_label(c)})" for m, c in chosen.items() if c]
    return ("**Training recipes: as the recipe study chose** (`training_study.md`): "
            + (", ".join(changed) if changed else "the registry's recipe for every model it studied") + ".")


def main(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 training epoch, 16 images per attack")
    p.add_argument("--num-images", type=int, default=None, help="images attacked per model (default 1000)")
    p.add_argument("--only", nargs="+", choices=list(PIPELINES), help="run only these pipelines")
    p.add_argument("--render", action="store_true", help="compute nothing: re-render the Markdown from the JSON")
    p.add_argument("--alexnet-weights", default=None,
                   help="AlexNet weights (.npz, keys conv1/kernel ... fc3/bias) for the spectral table; "
                        "default: random initialisation")
    args = p.parse_args(argv)
    if args.quick and args.results == "results":
        args.results = "results_quick"
    args = common.dataset_dirs(args)
    ctx = context(args)
    if args.render:
        write_report(ctx)
        print(f"re-rendered {ctx.out}/*.md from the JSON")
        return refresh_readme(ctx)
    print("Quick smoke run (not the paper's numbers)." if args.quick else
          f"Full run: {runtime.recorded_minutes([ctx.out / f for _, f, _ in PIPELINES.values()]):.0f} minutes of computation recorded in {args.results}/ by "
          "the run that made it (fewer where steps are cached under --workdir).")
    mnist, t0 = common.setup(args), time.time()
    run_all(ctx, mnist, only=args.only, spectral={"alexnet_weights": args.alexnet_weights})
    print(f"wrote {ctx.out / 'REPORT.md'} in {time.time() - t0:.0f} s")
    refresh_readme(ctx)
    compile_cache.log_stats()


if __name__ == "__main__":
    main()
