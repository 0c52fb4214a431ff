"""Every command the README lists runs: each experiment's and benchmark's ``main()`` at a tiny size on
synthetic data, or with ``--help`` where even a tiny run needs the real MNIST, a peer library or minutes.
A removed or renamed function that a command calls fails here."""

import functools
import importlib
import json
import pathlib
import re

import pytest

from intriguing_jax import data
from tests.conftest import synthetic_mnist
from tests.test_data import write_idx_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]

HELP_ONLY = ("experiments.sweep",  # sets the CPU device count, which must precede the backend's start
             "experiments.training_study", "experiments.advtrain_controls",
             "benchmarks.attack_settings", "benchmarks.attack_speed", "benchmarks.device_check",
             "benchmarks.minimal_l2", "benchmarks.sweep_scaling", "benchmarks.train_speed",
             "benchmarks.untargeted_memory", "benchmarks.untargeted_search",
             "benchmarks.untargeted_peers", "benchmarks.attackbench", "benchmarks.first_call",
             "benchmarks.polish")
RUN = ("experiments.train", "experiments.attack", "experiments.reproduce")


def test_the_readme_lists_no_command_this_file_does_not_run():
    listed = set(re.findall(r"python -m ((?:experiments|benchmarks)\.[a-z_0-9]+)", (ROOT / "README.md").read_text()))
    assert listed <= set(HELP_ONLY) | set(RUN), listed - set(HELP_ONLY) - set(RUN)


@pytest.mark.parametrize("module", HELP_ONLY + RUN)
def test_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Tiny synthetic IDX files for each dataset, served by the real loader (its IDX route, any size
    accepted); an empty cache; workdir and results under ``tmp_path``."""
    for name, env, seed in (("mnist", "INTRIGUING_JAX_IDX_DIR", 0), ("fashion_mnist", "INTRIGUING_JAX_FASHION_MNIST_IDX_DIR", 1)):
        write_idx_dir(tmp_path / f"{name}_idx", synthetic_mnist(seed=seed), compress=True)
        monkeypatch.setenv(env, str(tmp_path / f"{name}_idx"))
    monkeypatch.setenv("INTRIGUING_JAX_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "load", functools.partial(data.load, sizes=None, tfds_download=False))
    return ["--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--no-compile-cache"]


def test_train_command(tiny, tmp_path):
    meta = importlib.import_module("experiments.train").main(["--model", "FC10(1e-4)", "--epochs", "1"] + tiny)
    (out,) = (tmp_path / "results" / "train").glob("*.json")
    saved = json.loads(out.read_text())
    assert saved["test_error"] == meta["test_error"] and len(saved["checkpoint_sha256"]) == 64


def test_attack_command(tiny, tmp_path):
    summary = importlib.import_module("experiments.attack").main(
        ["--model", "FC10(1e-4)", "--num-images", "3", "--c-steps", "3", "--maxiter", "20"] + tiny)
    assert summary["n"] == 3 and (tmp_path / "results" / "attack").is_dir()
    assert summary["images"] == "MNIST test set, first 3"


def test_reproduce_command_one_pipeline_then_render(tiny, tmp_path, capsys):
    reproduce = importlib.import_module("experiments.reproduce")
    reproduce.main(["--quick", "--only", "units", "--num-images", "4"] + tiny)
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert "## Unit analysis" in report
    reproduce.main(["--render"] + tiny)
    assert (tmp_path / "results" / "REPORT.md").read_text() == report
    assert "re-rendered" in capsys.readouterr().out


def test_reproduce_on_fashion_mnist_writes_its_own_results_and_the_cross_dataset_table(tiny, tmp_path):
    reproduce = importlib.import_module("experiments.reproduce")
    reproduce.main(["--quick", "--only", "units", "--num-images", "4"] + tiny)  # MNIST first
    assert "The claims on each dataset" not in (tmp_path / "results" / "REPORT.md").read_text()  # one dataset
    reproduce.main(["--dataset", "fashion_mnist", "--quick", "--only", "units", "--num-images", "4"] + tiny)
    mnist_report = (tmp_path / "results" / "REPORT.md").read_text()
    table = mnist_report[mnist_report.index("## The claims on each dataset"):]
    assert "| Claim | Paper (MNIST) | Ours, MNIST | Ours, Fashion-MNIST | Verdicts |" in table
    assert "claimed (Sec. 3)" in table
    out = tmp_path / "results" / "fashion_mnist"
    assert "on Fashion-MNIST" in (out / "REPORT.md").read_text()
    assert "**Training recipes: MNIST's.** No recipe study is recorded" in (out / "REPORT.md").read_text()
    units = json.loads((out / "units.json").read_text())
    assert units["provenance"]["dataset"] == "fashion_mnist"
    assert json.loads((tmp_path / "results" / "units.json").read_text())["provenance"]["dataset"] == "mnist"
    assert (tmp_path / "work" / "fashion_mnist" / "checkpoints").is_dir()
    used = units["provenance"]["models_used"]
    assert used and all(len(m["checkpoint_sha256"]) == 64 for m in used.values())
    assert (tmp_path / "cache" / "fashion_mnist.npz").exists()


def test_the_readmes_results_block_is_what_the_committed_results_render():
    from experiments import reproduce
    from experiments.harness import summary
    assert summary.current(ROOT / "README.md") == reproduce.readme_block(ROOT / "results"), (
        "README.md's results block is stale: run `python -m experiments.reproduce --render`")


def test_the_results_block_names_every_files_run_and_each_claims_verdict(tmp_path):
    from experiments import reproduce
    from experiments.harness import summary
    (tmp_path / "README.md").write_text(f"# x\n\n{summary.BEGIN}\nold\n{summary.END}\n\ntail\n")
    assert summary.rewrite(tmp_path / "README.md", "new") and summary.current(tmp_path / "README.md") == "new"
    assert (tmp_path / "README.md").read_text().endswith("\n\ntail\n")
    assert "No results yet" in reproduce.readme_block(tmp_path / "none")


def test_a_parallel_run_keeps_at_most_jobs_processes_and_names_a_failed_pipeline(tmp_path, capsys):
    """``reproduce --jobs``: one process per pipeline, started in the given order, never more than ``jobs`` at
    once; a failure does not stop the others and is reported with its log."""
    import sys
    from experiments import reproduce
    marks = tmp_path / "marks"
    marks.mkdir()
    script = ("import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); n = sys.argv[2]; "
              "(d / (n + '.start')).write_text(str(time.time())); time.sleep(0.6); "
              "(d / (n + '.end')).write_text(str(time.time())); print('ran', n); sys.exit(n == 'bad')")
    command = lambda name, core: [sys.executable, "-c", script, str(marks), name]  # noqa: E731
    names = ["a", "b", "bad", "c"]
    with pytest.raises(RuntimeError, match=r"bad \(see .*bad\.log\)"):
        reproduce.run_parallel(names, 2, command, tmp_path / "logs", poll_s=0.05)
    span = {n: (float((marks / f"{n}.start").read_text()), float((marks / f"{n}.end").read_text())) for n in names}
    for n in names:  # at no process's start were two others running
        assert sum(s <= span[n][0] < e for m, (s, e) in span.items() if m != n) <= 1
    assert re.findall(r"\[(\w+)\] started", capsys.readouterr().out) == names  # launched in the given order
    assert (tmp_path / "logs" / "c.log").read_text() == "ran c\n"


def test_a_parallel_runs_processes_get_the_run_as_given(tmp_path):
    """Each process of ``--jobs`` gets this run's settings and its dataset as given (its own subfolders are
    added once, by the process), its pipeline alone and no report."""
    import argparse
    from experiments import reproduce
    given = argparse.Namespace(workdir="w", results="r", dataset="fashion_mnist", data_source="auto", seed=3,
                               quick=True, no_compile_cache=False, num_images=8, alexnet_weights=None)
    argv = reproduce.child_command(given, "units", core=1)
    assert argv[1:] == ["-m", "experiments.reproduce", "--only", "units", "--no-report", "--workdir", "w",
                        "--results", "r", "--dataset", "fashion_mnist", "--data-source", "auto", "--seed", "3",
                        "--quick", "--num-images", "8", "--cpu", "1"]
    for bad in (["--jobs", "0"], ["--cpu", "100000"]):  # no such core: an error naming it, not a silent run
        with pytest.raises(SystemExit):
            reproduce.main(bad)


def test_a_free_core_helps_a_running_pipeline_until_it_ends(tmp_path, capsys):
    """Once no pipeline waits for a core, a free one gets a helper for a running pipeline that has steps to
    share (earliest first), never a second after a helper ended, and helpers stop with their pipeline;
    only the pipelines' seconds are returned."""
    import sys
    from experiments import reproduce
    marks = tmp_path / "marks"
    marks.mkdir()
    script = ("import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); n = sys.argv[2]; "
              "(d / (n + '.start')).write_text(str(time.time())); time.sleep(float(sys.argv[3])); "
              "(d / (n + '.end')).write_text(str(time.time()))")
    length = {"long": 2.0, "short": 0.3}
    command = lambda name, core: [sys.executable, "-c", script, str(marks), name, str(length[name])]  # noqa: E731
    helper = lambda name, core: ([sys.executable, "-c", script, str(marks), name + "-helper", "30"]  # noqa: E731
                                 if name == "long" else None)
    seconds = reproduce.run_parallel(["long", "short"], 2, command, tmp_path / "logs", poll_s=0.05, helper=helper)
    assert set(seconds) == {"long", "short"}
    started = float((marks / "long-helper.start").read_text())
    assert started >= float((marks / "short.end").read_text())  # only once short was done and its core free
    assert not (marks / "long-helper.end").exists()  # stopped with its pipeline, not left running
    out = capsys.readouterr().out
    assert out.count("[long] helper started") == 1 and (tmp_path / "logs" / "long.helper1.log").exists()


def test_several_datasets_make_one_queue_longest_pipelines_first(tmp_path, monkeypatch):
    """``--dataset mnist fashion_mnist --jobs 2``: one queue of (dataset, pipeline) processes, each
    pipeline's datasets side by side in the longest-first order, each process given its own dataset;
    helpers only for the pipelines that share steps, writing their results under the workdir."""
    from experiments import common, reproduce
    seen = {}

    def fake_run_parallel(names, jobs, command, logs, poll_s=1.0, helper=None):
        seen.update(names=list(names), command={n: command(n, None) for n in names},
                    helper={n: helper(n, None) for n in names}, logs=logs)
        return {n: 1.0 for n in names}
    monkeypatch.setattr(reproduce, "run_parallel", fake_run_parallel)
    monkeypatch.setattr(common, "setup", lambda args: None)
    reproduce.main(["--dataset", "mnist", "fashion_mnist", "--jobs", "2", "--no-report", "--only", "units", "advtrain",
                    "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    assert seen["names"] == ["mnist/advtrain", "fashion_mnist/advtrain", "mnist/units", "fashion_mnist/units"]
    argv = seen["command"]["fashion_mnist/units"]
    assert argv[argv.index("--dataset") + 1] == "fashion_mnist" and argv[argv.index("--only") + 1] == "units"
    assert argv[argv.index("--workdir") + 1] == str(tmp_path / "w")  # the child adds the dataset's subfolder
    assert seen["helper"]["mnist/units"] is None
    h = seen["helper"]["fashion_mnist/advtrain"]
    assert h[h.index("--results") + 1] == str(tmp_path / "w" / "helper_results") and "fashion_mnist" in h
    assert seen["logs"] == tmp_path / "w" / "logs"

