"""The reproduce pipelines end to end on tiny synthetic data: shapes, report, caching, resumption."""

import json
import re
import pathlib

import numpy as np
import pytest

from experiments import common, reproduce
from intriguing_jax import attacks, data, train
from experiments.harness import report
from tests.conftest import synthetic_mnist

MODELS = ("FC10(1e-4)", "FC100-100-10")
CROSS = (("FC10(1e-4)", "FC10(1e-4)", "p1"), ("FC100-100-10", "FC100-100-10", "p1"),
         ("FC10(1e-4)'", "FC10(1e-4)", "p2"))
ONLY = ["table1", "table2", "table3", "units"]  # spectral's full-size AlexNet table: tests/test_spectral.py
OVERRIDES = {"table1": {"model_names": MODELS}, "table2": {"model_names": MODELS},
             "table3": {"models": CROSS}, "units": {"layers": (("FC100-100-10", 1, "second hidden layer"),)}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    mnist = data._to_mnist(synthetic_mnist(), "synthetic")
    root = tmp_path_factory.mktemp("pipelines")
    ctx = common.Context(str(root / "work"), str(root / "results"), seed=0,
                         train_cfg=train.TrainConfig(epochs=1, batch_size=64, ae_epochs=1),
                         attack_cfg=attacks.AttackConfig(c_steps=4, maxiter=30, rescue_steps=0), num_images=6, chunk_size=4)
    report = reproduce.run_all(ctx, mnist, only=ONLY, **OVERRIDES)
    return ctx, mnist, report


def _files(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_has_every_table_and_verdicts(run):
    ctx, _, report = run
    for title in ("Table 1", "Table 2", "Table 3", "Table 4"):
        assert f"## {title}" in report
    verdicts = re.findall(r"\*\*[^*]+: (holds|does not hold)", report)
    # verdicts: Table 1: 1, Table 2: 3, Tables 3-4: 2, units: 1 (or "no verdict" if the floors fail)
    assert len(verdicts) + report.count("so no verdict") == 7 and report.count("Made by") == 4
    assert "## Unit analysis" in report
    assert (ctx.out / "REPORT.md").read_text() == report
    for fig in ("fig5_FC10(1e-4).png", "fig7_adversarial_vs_noise.png", "fig1_units_FC100-100-10.png",
                "fig2_random_FC100-100-10.png"):
        assert (ctx.out / "figures" / fig).stat().st_size > 1000


def test_tables_have_the_right_shapes(run):
    ctx, _, _ = run
    t2 = json.loads((ctx.out / "table2.json").read_text())
    assert t2["columns"] == list(MODELS) and t2["num_images"] == 6
    assert len(t2["matrix"]) == len(MODELS) + 4 + len(MODELS)  # adversarial, Gaussian (unclipped, clipped), matched
    assert abs(t2["rms"]["Gaussian noise, stddev 0.3"] - 0.3) < 0.01  # unclipped: the realised RMS is the stddev
    assert t2["rms"]["Gaussian noise, stddev 0.3, clipped"] < 0.29
    for name in MODELS:  # an example made for a model and reaching its (wrong) target is an error
        assert t2["matrix"][name][name] >= t2["attack_success"][name] - 1e-9
    t34 = json.loads((ctx.out / "table3_4.json").read_text())
    assert list(t34["table3"]) == [d for d, _, _ in CROSS]
    assert len(t34["matrix"]) == 3 + 2 + 3 + 2 + 3
    assert all(set(r) == {d for d, _, _ in CROSS} for r in t34["matrix"].values())
    mag = [v for k, v in t34["rms"].items() if "magnified" in k]
    assert np.allclose(mag, 0.1, atol=0.02)  # zero perturbations (already-target images) pull it down


def test_rerun_reuses_every_cached_step(run):
    ctx, mnist, report = run
    before = _files(pathlib.Path(ctx.workdir))
    again = reproduce.run_all(ctx, mnist, only=ONLY, **OVERRIDES)
    assert _files(pathlib.Path(ctx.workdir)) == before  # nothing retrained or re-attacked
    strip = lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("Made by"))  # noqa: E731
    assert strip(again) == strip(report)


def test_interrupted_run_resumes_to_the_same_tables(run):
    ctx, mnist, _ = run
    first = json.loads((ctx.out / "table3_4.json").read_text())
    chunks = sorted((pathlib.Path(ctx.workdir) / "attacks").rglob("chunk_*.npz"))
    chunks[-1].unlink()  # the chunk in flight when the run was killed
    (ctx.out / "table3_4.json").unlink()
    reproduce.run_all(ctx, mnist, only=["table3"], **OVERRIDES)
    second = json.loads((ctx.out / "table3_4.json").read_text())
    assert second["matrix"] == first["matrix"] and second["table3"] == first["table3"]
    assert "## Table 4" in (ctx.out / "REPORT.md").read_text()


def test_adversarial_training_study_picks_each_layer_sets_best_and_renders(tmp_path):
    from experiments import adversarial_training as adv
    mnist = data._to_mnist(synthetic_mnist(), "synthetic")
    ctx = common.Context(str(tmp_path / "work"), str(tmp_path / "results"), seed=0,
                         train_cfg=train.TrainConfig(epochs=1, batch_size=64),
                         attack_cfg=attacks.AttackConfig(c_steps=2, maxiter=10, rescue_steps=0), num_images=4, chunk_size=4)
    study = (adv.BASELINE, "input, mix 0.2", "input, mix 0.1")
    result = adv.run(ctx, mnist, study=study, seeds=(0,), study_seeds=(0,))
    assert [e["configuration"] for e in result["study"]] == list(study)
    best_input = min(study[1:], key=lambda n: next(e["test_error_mean"] for e in result["study"] if e["configuration"] == n))
    assert result["chosen"] == {adv.BASELINE: adv.BASELINE, "input pool": best_input}
    past = {"input pool, overshoot ×2", "input pool, fixed c = 1"}  # the chosen input pool, past the boundary
    assert set(result["summary"]) == {adv.BASELINE, "input pool"} | past  # no study entry for the other layer sets
    assert result["runs"]["input pool"][0]["adv_config"]["mix"] == adv.STUDY[best_input].mix
    over, fixed = (result["runs"][v][0]["adv_config"] for v in sorted(past, reverse=True))
    assert over["overshoot"] == 2.0 and over["mix"] == adv.STUDY[best_input].mix
    assert fixed["attack"]["c_steps"] == 1 and fixed["max_distortion"] is None and fixed["overshoot"] == 1.0
    assert all(r["population"] == 1 for v, rs in result["runs"].items() for r in rs if v != adv.BASELINE)  # harness.runs.runs
    md = (ctx.out / "adversarial_training.md").read_text()
    assert "### Study (3 configurations" in md
    verdict = r"\*\*Adversarial training with per-layer pools improves[^*]+: (holds|does not hold)"
    assert len(re.findall(verdict, md)) == 1  # the claim's verdict, once
    assert "The test error" not in md  # a trend needs three mixes: the two-mix study gives no trend reading
    saved = json.loads((ctx.out / "adversarial_training.json").read_text())
    assert saved["runs"]["input pool"][0]["test_error"] == result["runs"]["input pool"][0]["test_error"]


def test_training_study_groups_seeds_of_one_configuration():
    from experiments import training_study
    run = lambda seed, err, key="k1": {"study": "s", "model": "FC100-100-10", "split": "train", "seed": seed,  # noqa: E731
                                       "config_key": key, "train_error": 0.0, "test_error": err, "train_wall_s": 1.0}
    result = {"runs": {"FC100-100-10 / a, seed 0": run(0, 0.018), "FC100-100-10 / a, seed 1": run(1, 0.016),
                       "FC100-100-10 / b": run(0, 0.02, "k2")},
              "provenance": {"command": "x", "seed": 0, "wall_time_s": 1.0, "machine": "m", "date": "d",
                             "versions": {"jax": "j", "flax": "f", "optax": "o"}}}
    md = training_study.render(result)
    assert "| FC100-100-10 / a | 0, 1 | 1.70% | 1.60%–1.80% | 1.64% |" in md
    assert "| FC100-100-10 / b | 0 |" not in md  # one seed: not a group


def test_positive_controls_train_as_populations_and_join_the_pools_report(tmp_path):
    from experiments import adversarial_training as adv
    from experiments import advtrain_controls as controls
    mnist = data._to_mnist(synthetic_mnist(), "synthetic")
    ctx = common.Context(str(tmp_path / "work"), str(tmp_path / "results"), seed=0,
                         train_cfg=train.TrainConfig(epochs=1, batch_size=64),
                         attack_cfg=attacks.AttackConfig(c_steps=2, maxiter=10, rescue_steps=0), num_images=4, chunk_size=4)
    from experiments import table1
    t1 = table1.run(ctx, mnist, model_names=(adv.MODEL,))
    pools = adv.run(ctx, mnist, study=(adv.BASELINE, "input, mix 0.2"), seeds=(0,), study_seeds=(0,))
    result = controls.run(ctx, mnist, kinds=(controls.BASELINE, "FGSM"), seeds=(0,), more=(1,))
    # one model, one number: weight decay alone, seed 0, is Table 1's checkpoint in all three files
    label = common.model_label(adv.MODEL, "train", 0, 1)
    used = [r["provenance"]["models_used"][label] for r in (t1, pools, result)]
    assert used[0]["checkpoint_sha256"] == used[1]["checkpoint_sha256"] == used[2]["checkpoint_sha256"]
    assert t1["rows"][adv.MODEL]["test_error"] == pools["runs"][adv.BASELINE][0]["test_error"] \
        == result["controls"][controls.BASELINE]["test_errors"][0] == used[0]["test_error"]
    assert t1["provenance"]["code"]["commit"] is None or len(t1["provenance"]["code"]["commit"]) == 40
    assert {"walk_steps", "walk_gamma", "compile"} <= set(t1["provenance"]["attack_config"])
    best = min(("FGSM (epsilon 0.1)", "FGSM (epsilon 0.25)"), key=lambda n: result["study"][n]["test_error_mean"])
    assert set(result["controls"]) == {controls.BASELINE, best}
    fgsm = next(c for n, c in result["controls"].items() if n.startswith("FGSM"))
    assert fgsm["seeds"] == [0, 1] and len(fgsm["test_errors"]) == 2  # the best strength gets the extra seed
    merged = json.loads((ctx.out / "adversarial_training.json").read_text())
    assert merged["controls"] == result["controls"] and "runs" in merged  # the pools' result kept, controls added
    md = (ctx.out / "adversarial_training.md").read_text()
    assert "### Positive controls" in md and "What the positive controls say about the pools" in md
    again = controls.run(ctx, mnist, kinds=(controls.BASELINE, "FGSM"), seeds=(0,), more=(1,))
    assert again["controls"] == result["controls"]  # cached: nothing retrained



def test_other_datasets_tables_show_mnists_numbers_where_the_papers_stand(run):
    from experiments import cross_model, cross_training, table1
    ctx, _, _ = run
    for module, filename in ((table1, "table1.json"), (cross_model, "table2.json"), (cross_training, "table3_4.json")):
        ours = json.loads((ctx.out / filename).read_text())
        tables = module.render(ours, beside=ours).split("\n- **")[0]  # the verdicts below may cite the paper
        assert "MNIST" in tables and "[2nd]" not in tables and "[rec]" not in tables and "(paper" not in tables
    t1 = json.loads((ctx.out / "table1.json").read_text())
    mnist = {**t1, "rows": {k: {**r, "test_error": 0.4321} for k, r in t1["rows"].items()}}
    assert table1.render(t1, beside=mnist).count("43.21%") == len(t1["rows"])
    assert "(paper)" in table1.render(t1)


def test_recipe_study_chooses_by_its_rule_and_says_whether_the_registry_agrees(tmp_path, monkeypatch):
    from experiments import training_recipes, training_study
    from experiments.harness import verdicts
    from intriguing_jax import models
    mnist = data._to_mnist(synthetic_mnist(), "synthetic", "fashion_mnist")
    monkeypatch.setitem(training_recipes.RECIPE_CHALLENGERS, "FC10(1e-4)", ({"epochs": 2}, {"learning_rate": 0.1}))
    ctx = common.Context(str(tmp_path / "work"), str(tmp_path / "results"), dataset="fashion_mnist")
    result = training_study.run(ctx, mnist, ["recipes"], recipe_models=("FC10(1e-4)",))
    study = result["recipe_study"]["FC10(1e-4)"]
    assert list(study["candidates"]) == ["the registry's recipe", "epochs 2", "learning rate 0.1"]
    assert all(len(c["val_errors"]) == 3 and len(set(c["checkpoint_sha256"])) == 3 for c in study["candidates"].values())
    assert study["candidates"]["epochs 2"]["config"]["epochs"] == 2  # 2 passes over the full set: 2 over five sixths
    expected = verdicts.recipe_choice("FC10(1e-4)", study["candidates"]).numbers["changes"]
    assert result["chosen"] == {"FC10(1e-4)": expected}
    md = (ctx.out / "training_study.md").read_text()
    assert "## Recipe study on Fashion-MNIST" in md and "verdicts.recipe_choice" in md
    assert ("holds these choices" in md) == (models.DATASET_RECIPES["fashion_mnist"].get("FC10(1e-4)", {}) == expected)
    again = training_study.run(ctx, mnist, ["recipes"], recipe_models=("FC10(1e-4)",))
    for label, c in again["recipe_study"]["FC10(1e-4)"]["candidates"].items():  # cached: the same models
        assert c["checkpoint_sha256"] == study["candidates"][label]["checkpoint_sha256"]
    from experiments import reproduce  # what the dataset's report says of its recipes
    assert ("registry differs" in reproduce.recipe_status(ctx)) == (expected != {})
    monkeypatch.setitem(models.DATASET_RECIPES, "fashion_mnist", {"FC10(1e-4)": expected})
    assert reproduce.recipe_status(ctx).startswith("**Training recipes: as the recipe study chose**")


def test_the_registry_holds_what_each_committed_recipe_study_chose():
    from intriguing_jax import models
    root = pathlib.Path(__file__).resolve().parents[1] / "results"
    for name in data.DATASETS:
        path = root / ("" if name == "mnist" else name) / "training_study.json"
        chosen = json.loads(path.read_text()).get("chosen") if path.exists() else None
        if chosen is not None:
            assert chosen == {m: models.DATASET_RECIPES[name].get(m, {}) for m in chosen}, name


def test_spectral_sandwich_measures_the_attack_against_the_exact_minimum_on_softmax_regression(run):
    """The spectral pipeline's per-model sandwich (the step its tiny run above skips: the full run crashed
    there once), on a linear model: the attack against the exact box-constrained minimum."""
    from experiments import spectral
    ctx, mnist, _ = run
    linear = spectral.sandwich(ctx, mnist, "FC10(1e-4)")
    assert linear["exact"]["images"] > 0 and linear["exact"]["ratio_median"] >= 1 - 1e-3


def test_a_perturbation_panel_says_its_norm_or_why_it_is_flat():
    from experiments.harness import figures
    x = np.zeros(784, np.float32)
    assert figures.perturbation_caption(x, x, 10, 7) == "r = 0: x itself → 7"
    moved = x.copy()
    moved[:4] = 0.5
    assert figures.perturbation_caption(x, moved, 10, 7) == "r ×10, ‖r‖ 1.00"


def test_figure_titles_name_the_dataset():
    assert common.Context(dataset="fashion_mnist").dataset_title == "Fashion-MNIST"
    assert common.Context().dataset_title == "MNIST"
