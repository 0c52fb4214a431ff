"""Every command the README lists runs: each experiment's and benchmark's ``main()`` at a tiny size on
synthetic data, or with ``--help`` where even a tiny run needs the real MNIST, a peer library or minutes.
A removed or renamed function that a command calls fails here."""

import importlib
import json
import pathlib
import re

import pytest

from intriguing_jax import data
from tests.conftest import synthetic_mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]

HELP_ONLY = ("experiments.sweep",  # sets the CPU device count, which must precede the backend's start
             "experiments.training_study", "experiments.advtrain_controls",
             "benchmarks.attack_settings", "benchmarks.attack_speed", "benchmarks.device_check",
             "benchmarks.minimal_l2", "benchmarks.sweep_scaling", "benchmarks.train_speed",
             "benchmarks.untargeted_memory")
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
    """The CLIs' MNIST replaced by a tiny synthetic set; workdir and results under ``tmp_path``."""
    mnist = data._to_mnist(synthetic_mnist(), "synthetic")
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: mnist)
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


def test_reproduce_command_one_pipeline_then_render(tiny, tmp_path, capsys):
    reproduce = importlib.import_module("experiments.reproduce")
    reproduce.main(["--quick", "--only", "units", "--num-images", "4"] + tiny)
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert "## Unit analysis" in report
    reproduce.main(["--render"] + tiny)
    assert (tmp_path / "results" / "REPORT.md").read_text() == report
    assert "re-rendered" in capsys.readouterr().out
