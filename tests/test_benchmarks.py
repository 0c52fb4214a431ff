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


@pytest.fixture(scope="module")
def linear():
    import jax

    from intriguing_jax import models, train
    model = models.build("FC10(1e-4)")
    params, _ = train.fit(model, MNIST.train, jax.random.key(1), train.TrainConfig(epochs=10, batch_size=50))
    return model, params


@pytest.mark.parametrize("targeted", [False, True])
def test_alma_polish_shortens_a_long_adversarial_toward_the_exact_minimum(linear, targeted):
    """``polish.alma_polish`` from an adversarial example 1.5× too long, on softmax regression (where the
    exact minimum is ``exact.linear_min_l2`` toward the target, untargeted the smallest over wrong
    classes): every result adversarial, never longer than its start, never below the minimum, and most of
    the excess gone."""
    import jax.numpy as jnp
    from jax.tree_util import Partial

    from benchmarks.polish import alma_polish
    from intriguing_jax import attacks, exact, train
    model, params = linear
    ok = np.flatnonzero(train.predict(model.apply, params, MNIST.test.images) == MNIST.test.labels)[:8]
    x, y = MNIST.test.images[ok], MNIST.test.labels[ok]
    t = ((y + 1 + np.arange(len(y)) % 9) % 10).astype(np.int32)
    fn = Partial(model.apply, params)
    res = attacks.lbfgs_attack(fn, x, t) if targeted else attacks.lbfgs_attack_untargeted(fn, x, y)
    start = np.clip(x + 1.5 * (np.asarray(res.adversarial) - x), 0, 1)
    pred = np.asarray(train.predict(model.apply, params, start))
    keep = pred == t if targeted else pred != y
    x, y, t, start = x[keep], y[keep], t[keep], start[keep]
    assert len(x) >= 4
    goal = t if targeted else y
    adv, l2 = alma_polish(fn, jnp.asarray(x), jnp.asarray(goal, jnp.int32), jnp.asarray(start), steps=100,
                          lr_init=0.01, targeted=targeted)
    adv, l2 = np.asarray(adv), np.asarray(l2)
    W = np.asarray(params["params"]["dense_0"]["kernel"], np.float64)
    b = np.asarray(params["params"]["dense_0"]["bias"], np.float64)
    classes = [[t[i]] if targeted else [j for j in range(10) if j != y[i]] for i in range(len(x))]
    minimum = np.array([min(exact.linear_min_l2(W, b, x[i], j) for j in classes[i]) for i in range(len(x))])
    start_l2 = np.linalg.norm((start - x).reshape(len(x), -1), axis=1)
    pred = np.asarray(train.predict(model.apply, params, adv))
    assert (pred == t).all() if targeted else (pred != y).all()
    np.testing.assert_allclose(l2, np.linalg.norm((adv - x).reshape(len(x), -1), axis=1), rtol=1e-5)
    assert (l2 <= start_l2 + 1e-6).all() and (l2 >= minimum * (1 - 1e-3)).all()
    assert ((l2 - minimum) / (start_l2 - minimum)).mean() < 0.2, (l2 / minimum, start_l2 / minimum)


def test_one_then_nearest_redoes_only_where_the_class_differs_and_never_lengthens(linear):
    """``attackbench.one_then_nearest``: adversarial everywhere, per image no longer than the one solve's,
    its evaluations the one solve's plus K plus the redone images' (only theirs grow further)."""
    from jax.tree_util import Partial

    from intriguing_jax import attacks, train
    model, params = linear
    ok = np.flatnonzero(train.predict(model.apply, params, MNIST.test.images) == MNIST.test.labels)[:12]
    x, y = MNIST.test.images[ok], MNIST.test.labels[ok]
    fn = Partial(model.apply, params)
    cfg = attacks.AttackConfig()
    got = attackbench.one_then_nearest(fn, x, y, cfg)
    one = attacks.lbfgs_attack_untargeted(fn, x, y, config=cfg, search="one")
    d = np.linalg.norm((got.adversarial - x).reshape(len(x), -1), axis=1)
    assert (np.asarray(train.predict(model.apply, params, got.adversarial)) != y).all()
    assert (d <= np.asarray(one.l2) * (1 + 1e-6)).all()
    extra = got.grad_evals - np.asarray(one.grad_evals) - 10
    assert (extra >= 0).all() and (extra > 0).sum() == got.redone
