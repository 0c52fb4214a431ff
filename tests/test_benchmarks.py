"""The benchmarks' own machinery: the model matrix's recipes and cache, AttackBench's optimality, and the
torch copies the PyTorch peers attack (where torch is installed: the ``bench`` extra)."""

import dataclasses

import numpy as np
import pytest

from benchmarks import attackbench, matrix
from intriguing_jax import data
from tests.conftest import synthetic_mnist

MNIST = data._to_mnist(synthetic_mnist(n_train=256, n_test=64), "synthetic")


def test_optimality_is_attackbench_s_measure_with_failures_at_the_largest_distance():
    d = {"a": np.array([1.0, 2.0, np.inf]), "b": np.array([2.0, 1.0, 3.0]), "c": np.array([1.0, 1.0, 3.0])}
    opt = attackbench.optimality(d)  # e = 3, best = [1, 1, 3]
    assert opt == pytest.approx({"a": 5 / 6, "b": 5 / 6, "c": 1.0})


def test_every_matrix_model_has_a_recipe_and_a_checkpoint_of_its_own(tmp_path):
    assert set(matrix.UNDEFENDED) | set(matrix.DEFENDED) == set(matrix.MATRIX) and len(matrix.DEFENDED) >= 3
    assert {matrix.MATRIX[n].defence for n in matrix.DEFENDED} == {"l2-pgd", "ibp"}
    assert any(matrix.MATRIX[n].architecture == "ConvNet" for n in matrix.DEFENDED)  # max pooling, defended
    paths = {matrix.checkpoint_path(n, tmp_path) for n in matrix.MATRIX}
    assert len(paths) == len(matrix.MATRIX)
    assert all("ε" in matrix.MATRIX[n].describe() for n in matrix.DEFENDED)


@pytest.mark.parametrize("name", ["ibp-mlp", "pgd-mlp"])
def test_a_defended_model_trains_by_its_recipe_once_and_loads_after(name, tmp_path, monkeypatch):
    monkeypatch.setitem(matrix.MATRIX, name, dataclasses.replace(matrix.MATRIX[name], epochs=1))
    model, params, meta = matrix.trained(name, MNIST, tmp_path)
    assert meta["recipe"] == matrix.MATRIX[name].describe() and 0 <= meta["test_error"] <= 1
    again = matrix.trained(name, MNIST, tmp_path)[2]
    assert again["checkpoint_sha256"] == meta["checkpoint_sha256"] and again["test_error"] == meta["test_error"]


@pytest.mark.parametrize("name", ["FC100-100-10", "relu-mlp", "ConvNet", "flax-cnn"])
def test_the_torch_copy_computes_the_jax_models_logits(name):
    torch = pytest.importorskip("torch")
    import jax
    model = matrix.model_of(name, MNIST)
    params = model.init(jax.random.key(1))
    x = MNIST.test.images[:5].reshape((-1, 28, 28, 1) if getattr(model, "nhwc", False) else (-1, 784))
    with torch.no_grad():
        got = attackbench.torch_copy(name, params)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, np.asarray(model.apply(params, x)), atol=1e-4)


def test_the_solver_cost_benchmark_writes_one_row_per_size(tmp_path, capsys):
    """``benchmarks.solver_cost``: a row per (rows, history) with both times positive and the solver's share
    between 0 and 1; a non-positive size is an error naming the flag."""
    import json
    from benchmarks import solver_cost
    out = tmp_path / "cost.json"
    solver_cost.main(["--rows", "4", "--history", "2", "3", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["rows"], r["history"]) for r in rows] == [(4, 2), (4, 3)]
    assert all(r["solver_ms"] > 0 and r["model_ms"] > 0 and 0 < r["solver_share"] < 1 for r in rows)
    with pytest.raises(SystemExit):
        solver_cost.main(["--rows", "0"])
    assert "--rows" in capsys.readouterr().err
