"""Reproduce the paper's MNIST results (Tables 1–5, Figs. 1, 2, 5, 7, units, adversarial training) in results/.

    python -m experiments.reproduce            # full run (hours on a 2-core CPU; it prints what results/ records)
    python -m experiments.reproduce --jobs 2   # the same, two pipelines at a time (one process per core)
    python -m experiments.reproduce --quick    # smoke run: 1 epoch, 16 images, into results_quick/
    python -m experiments.reproduce --only table2   # one pipeline; REPORT.md is re-assembled
    python -m experiments.reproduce --render        # no computation: Markdown re-rendered from the JSON
    python -m experiments.reproduce --dataset fashion_mnist   # the same pipelines into results/fashion_mnist/
    python -m experiments.reproduce --dataset mnist fashion_mnist --jobs 2   # both, one queue of pipelines

Pipelines reuse what is cached under --workdir (checkpoints, attack chunks): an interrupted run resumes
where it stopped. REPORT.md is assembled from every JSON result present in --results; a run of every
pipeline also writes run.json there (its command, commit, wall time and each pipeline's seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import pathlib
import subprocess
import sys
import time

from experiments import adversarial_training, advtrain_controls, common, cross_model, cross_training, spectral, table1, units
from experiments.harness import cross_dataset, runtime, summary
from experiments.training_recipes import changes_label
from intriguing_jax import attacks, compile_cache, data, models, provenance, storage, train

# name -> (module with run/render, JSON file it writes, its Markdown section); run in this order.
PIPELINES = {"table1": (table1, "table1.json", "table1_models.md"),
             "table2": (cross_model, "table2.json", "table2_cross_model.md"),
             "table3": (cross_training, "table3_4.json", "table3_4_cross_training.md"),
             "units": (units, "units.json", "units.md"), "spectral": (spectral, "spectral.json", "spectral.md"),
             "advtrain": (adversarial_training, "adversarial_training.json", "adversarial_training.md"),
             "controls": (advtrain_controls, "adversarial_training_controls.json", "adversarial_training_controls.md")}
# the order a parallel run (--jobs) starts them in: the longest first, so the others fill the remaining cores
LONGEST_FIRST = ("advtrain", "controls", "table1", "spectral", "table3", "units", "table2")
# pipelines whose independent steps a helper process can share (experiments.harness.sharing)
HELPED = ("advtrain", "controls")
RUN_RECORD = "run.json"

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
    run_pipelines(ctx, mnist, only, **overrides)
    return write_report(ctx)


def run_pipelines(ctx: common.Context, mnist, only=None, **overrides) -> dict[str, float]:
    """Runs the selected pipelines in order in this process; returns each one's seconds."""
    seconds = {}
    for name, (module, _, _) in ((n, p) for n, p in PIPELINES.items() if not only or n in only):
        t0 = time.time()
        module.run(ctx, mnist, **overrides.get(name, {}))
        seconds[name] = round(time.time() - t0, 1)
        print(f"[{name}] done in {seconds[name]:.0f} s")
    return seconds


def run_parallel(names, jobs: int, command, logs: pathlib.Path, poll_s: float = 1.0, helper=None) -> dict[str, float]:
    """Runs one process per pipeline, ``command(name, core)`` (an argv), at most ``jobs`` at once, started in
    the order of ``names``; where this process may use at least ``jobs`` cores, each gets a core of its own to
    pin itself to (two XLA processes sharing cores slow each other's small ops many-fold), else ``core`` is
    None. (The child pins itself: pinning between fork and exec would fork a multithreaded JAX process.) Each process's output goes to
    ``logs/<name>.log``. Processes share the workdir: a checkpoint two of them need is trained once
    (``zoo.trained_seeds``). A failure does not stop the others (what they compute is kept).

    Once no pipeline waits for a core, a free core gets a helper: ``helper(name, core)`` (an argv, or None
    where pipeline ``name`` has no steps to share) for the running pipeline with the fewest helpers, earliest
    in ``names`` first; it computes the steps the pipeline has not started (``harness.sharing``), its log
    ``logs/<name>.helper<k>.log``. A helper's failure is reported, not raised: the pipeline computes what
    the helper left.

    Returns:
      Each pipeline's seconds (its own process's, not its helpers').

    Raises:
      RuntimeError: naming every pipeline whose process failed and its log.
    """
    logs.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pending, running, free, seconds, failed = list(names), {}, list(range(jobs)), {}, []
    helpers, exhausted = {}, set()  # pipeline -> helpers started for it; pipelines a helper of which ended

    def start(name, argv, slot, log_name, role):
        core = cores[slot] if jobs > 1 and len(cores) >= jobs else None
        log = open(logs / log_name, "w")
        proc = subprocess.Popen(argv(core), stdout=log, stderr=subprocess.STDOUT)
        running[proc] = (name, slot, time.time(), log, role)
        print(f"[{name}] {'started' if role == 'pipeline' else 'helper started'}"
              + (f" on core {core}" if core is not None else "") + f"; log: {logs / log_name}")

    def helped():  # running pipelines with something to share, fewest helpers first, in the order of names
        mains = [n for n, _, _, _, role in running.values() if role == "pipeline"]
        return sorted((n for n in mains if n not in exhausted and helper(n, None) is not None),
                      key=lambda n: (helpers.get(n, 0), names.index(n)))

    try:
        while pending or any(role == "pipeline" for *_, role in running.values()):
            while pending and free:
                name = pending.pop(0)
                start(name, lambda core, name=name: command(name, core), free.pop(0), f"{_log_stem(name)}.log", "pipeline")
            while not pending and free and helper is not None and helped():
                name = helped()[0]
                helpers[name] = helpers.get(name, 0) + 1
                start(name, lambda core, name=name: helper(name, core), free.pop(0),
                      f"{_log_stem(name)}.helper{helpers[name]}.log", "helper")
            time.sleep(poll_s)
            for proc in [p for p in running if p.poll() is not None]:
                if proc not in running:  # a helper already stopped with its pipeline
                    continue
                name, slot, t0, log, role = running.pop(proc)
                log.close()
                free.append(slot)
                if role == "helper":  # it ends once every step is done (or it failed): no second one
                    exhausted.add(name)
                    print(f"[{name}] helper {'failed (exit %d; the pipeline computes what it left)' % proc.returncode if proc.returncode else 'done'}")
                    continue
                seconds[name] = round(time.time() - t0, 1)
                if proc.returncode:
                    failed.append(name)
                for other in [p for p, (n, _, _, _, r) in running.items() if n == name and r == "helper"]:
                    _, other_slot, _, other_log, _ = running.pop(other)  # its pipeline is done: nothing left to share
                    other.terminate()
                    other.wait()
                    other_log.close()
                    free.append(other_slot)
                print(f"[{name}] {'failed (exit %d)' % proc.returncode if proc.returncode else 'done'} in {seconds[name]:.0f} s")
    finally:  # every pipeline ended (its helpers have nothing left to compute) or interrupted: stop the rest
        for proc, (_, _, _, log, _) in running.items():  # (their finished steps stay cached)
            proc.terminate()
            proc.wait()
            log.close()
    if failed:
        raise RuntimeError("pipeline(s) failed: " + ", ".join(f"{n} (see {logs / (_log_stem(n) + '.log')})" for n in failed))
    return seconds


def _log_stem(name: str) -> str:
    return name.replace("/", ".")


def child_command(args, name: str, core: int | None = None, helper: bool = False) -> list[str]:
    """The argv of the process that runs pipeline ``name`` of a parallel run: this run's settings (``args``
    as given, before the dataset's subfolders are added), that pipeline only, no report, pinned to ``core``.
    A ``helper`` shares the workdir and writes its results under ``<workdir>/helper_results`` (thrown away:
    what it is for is the steps it caches, ``harness.sharing``)."""
    results = str(pathlib.Path(args.workdir) / "helper_results") if helper else args.results
    argv = [sys.executable, "-m", "experiments.reproduce", "--only", name, "--no-report", "--workdir", args.workdir,
            "--results", results, "--dataset", args.dataset, "--data-source", args.data_source,
            "--seed", str(args.seed)]
    argv += ["--quick"] * args.quick + ["--no-compile-cache"] * args.no_compile_cache
    argv += ["--num-images", str(args.num_images)] if args.num_images is not None else []
    argv += ["--cpu", str(core)] if core is not None else []
    return argv + (["--alexnet-weights", args.alexnet_weights] if args.alexnet_weights else [])


def run_record(ctx: common.Context, t0: float, seconds: dict[str, float], jobs: int) -> dict:
    """Writes ``run.json``: the provenance of a run of every pipeline (command, commit, versions, machine, its
    wall time) with each pipeline's seconds and the processes that ran them at once."""
    record = {"pipelines": seconds, "jobs": jobs,
              "provenance": provenance.record(ctx.seed, time.time() - t0, dataset=ctx.dataset)}
    storage.write_json(ctx.out / RUN_RECORD, record)
    return record


def run_line(ctx: common.Context) -> str:
    """REPORT.md's line on the run that made every file (``run.json``), or "" where none is recorded."""
    path = ctx.out / RUN_RECORD
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    p, code = r["provenance"], r["provenance"].get("code") or {}
    made = {json.loads((ctx.out / f).read_text()).get("provenance", {}).get("code", {}).get("commit")
            for _, f, _ in PIPELINES.values() if (ctx.out / f).exists()}
    same = made == {code.get("commit")} and code.get("commit") is not None
    return (f"**The run:** `{p['command']}` at commit `{str(code.get('commit'))[:10]}`"
            f"{' (dirty tree)' if code.get('dirty') else ''}: {p['wall_time_s'] / 60:.0f} min wall, "
            f"{r['jobs']} pipeline(s) at a time, {p['machine']}, {p['date'][:10]}; "
            + ("every result file here was made by that commit." if same else
               f"the result files here were made by {len(made)} commit(s): read each with its own \"Made by\" line.") + "\n")


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
    line = run_line(ctx)
    header += "\n" + line if line else ""
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
    p = common.base_parser(__doc__.splitlines()[0], several_datasets=True)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 training epoch, 16 images per attack")
    p.add_argument("--num-images", type=int, default=None, help="images attacked per model (default 1000)")
    p.add_argument("--only", nargs="+", choices=list(PIPELINES), help="run only these pipelines")
    p.add_argument("--render", action="store_true", help="compute nothing: re-render the Markdown from the JSON")
    p.add_argument("--jobs", type=int, default=1,
                   help="pipelines run at once, each in its own process (pinned to a core of its own where there "
                        "are enough; once no pipeline waits, a free core helps a running one: adversarial training "
                        "and its controls share their steps); with several datasets, one queue for all; "
                        "1: in order, in this process")
    p.add_argument("--no-report", action="store_true",
                   help="compute the pipelines only: leave REPORT.md, run.json and the README block alone "
                        "(what --jobs gives each of its processes)")
    p.add_argument("--cpu", type=int, default=None,
                   help="run pinned to this CPU core (what --jobs gives each of its processes)")
    p.add_argument("--alexnet-weights", default=None,
                   help="AlexNet weights (.npz, keys conv1/kernel ... fc3/bias) for the spectral table; "
                        "default: random initialisation")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.cpu is not None:  # before the first computation starts XLA's threads
        try:
            os.sched_setaffinity(0, {args.cpu})
        except (AttributeError, OSError) as e:
            p.error(f"--cpu {args.cpu}: cannot pin this process to that core ({e})")
    if args.quick and args.results == "results":
        args.results = "results_quick"
    datasets = list(dict.fromkeys(args.dataset))
    # per dataset, the run as given (what a child is given) and with the dataset's subfolders added
    given = {d: argparse.Namespace(**{**vars(args), "dataset": d}) for d in datasets}
    dirs = {d: common.dataset_dirs(argparse.Namespace(**vars(g))) for d, g in given.items()}
    ctxs = {d: context(a) for d, a in dirs.items()}
    if args.render:
        for d in datasets:
            write_report(ctxs[d])
            print(f"re-rendered {ctxs[d].out}/*.md from the JSON")
            refresh_readme(ctxs[d])
        return None
    for d in datasets:
        print("Quick smoke run (not the paper's numbers)." if args.quick else full_run_line(ctxs[d]))
    t0 = time.time()
    if args.jobs > 1:
        for d in datasets:  # loads (and caches) the data once, before any child starts
            common.setup(dirs[d])
        order = [n for n in LONGEST_FIRST if not args.only or n in args.only]
        jobs = {(f"{d}/{n}" if len(datasets) > 1 else n): (d, n) for n in order for d in datasets}
        logs = pathlib.Path(args.workdir if len(datasets) > 1 else dirs[datasets[0]].workdir) / "logs"
        seconds = run_parallel(list(jobs), args.jobs, lambda j, core: child_command(given[jobs[j][0]], jobs[j][1], core), logs,
                               helper=lambda j, core: (child_command(given[jobs[j][0]], jobs[j][1], core, helper=True)
                                                       if jobs[j][1] in HELPED else None))
        per_dataset = {d: {n: seconds[j] for j, (dd, n) in jobs.items() if dd == d and j in seconds} for d in datasets}
        for d in datasets:
            advtrain_controls.join_pools_report(ctxs[d].out)  # the two finished in either order
    else:
        per_dataset = {}
        for d in datasets:
            per_dataset[d] = run_pipelines(ctxs[d], common.setup(dirs[d]), only=args.only,
                                           spectral={"alexnet_weights": args.alexnet_weights})
        compile_cache.log_stats()  # with --jobs, each process that compiled logs its own
    if args.no_report:
        return None
    for d in datasets:
        if not args.only or set(args.only) >= set(PIPELINES):
            run_record(ctxs[d], t0, per_dataset[d], args.jobs)
        write_report(ctxs[d])
        print(f"wrote {ctxs[d].out / 'REPORT.md'} in {time.time() - t0:.0f} s")
    for d in datasets:  # after every report: MNIST's cross-dataset table reads the others
        refresh_readme(ctxs[d])


def full_run_line(ctx: common.Context) -> str:
    """What a full run costs, as the results directory records it: the last full run's wall time
    (``run.json``), else the computation its files record (``runtime.recorded_minutes``)."""
    path = ctx.out / RUN_RECORD
    if path.exists():
        r = json.loads(path.read_text())
        return (f"Full run: the run that wrote {ctx.out}/ took {r['provenance']['wall_time_s'] / 60:.0f} minutes wall, "
                f"{r['jobs']} pipeline(s) at a time (fewer where steps are cached under --workdir).")
    return (f"Full run: {runtime.recorded_minutes([ctx.out / f for _, f, _ in PIPELINES.values()]):.0f} minutes of "
            f"computation recorded in {ctx.out}/ by the runs that made it (fewer where steps are cached under --workdir).")


if __name__ == "__main__":
    main()
