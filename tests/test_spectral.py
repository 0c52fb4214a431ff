import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from intriguing_jax import alexnet, attacks, models, spectral, train


@pytest.mark.parametrize("seed,c,d,size,k", [(0, 2, 3, 8, 3), (1, 3, 2, 10, 5), (2, 1, 4, 6, 1)])
def test_fourier_bound_equals_power_iteration_for_circular_stride1(seed, c, d, size, k):
    kernel = jax.random.normal(jax.random.key(seed), (k, k, c, d))
    exact = spectral.operator_norm(lambda x: spectral.conv_apply(kernel, x, 1, "CIRCULAR"),
                                   (1, size, size, c), jax.random.key(9), iters=2000)
    assert spectral.conv_bound(kernel, (size, size), 1, "CIRCULAR") == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("stride,padding", [(2, "CIRCULAR"), (1, "SAME"), (2, "SAME"), (2, "VALID"), (3, "VALID")])
def test_fourier_bound_with_stride_or_zero_padding(stride, padding):
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 2, 3))
    size = 12
    fn = lambda x: spectral.conv_apply(kernel, x, stride, padding)  # noqa: E731
    exact = spectral.operator_norm(fn, (1, size, size, 2), jax.random.key(4), iters=2000)
    dense = jax.jacfwd(lambda v: fn(v.reshape(1, size, size, 2)).ravel())(jnp.zeros(size * size * 2))
    assert exact == pytest.approx(np.linalg.norm(np.asarray(dense), 2), rel=1e-3)  # power iteration is right
    bound = spectral.conv_bound(kernel, (size, size), stride, padding)
    if padding == "CIRCULAR":
        assert bound == pytest.approx(exact, rel=1e-3)  # exact through the aliased blocks
    else:
        assert bound >= exact * (1 - 1e-4)


def test_dense_and_other_layer_bounds():
    w = np.random.default_rng(0).normal(size=(30, 7))
    assert spectral.dense_bound(w) == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-9)
    assert spectral.dense_bound(w.T) == pytest.approx(spectral.dense_bound(w), rel=1e-9)
    assert spectral.contrast_norm_bound(0.5, 1.0) == 2.0
    assert spectral.maxpool_bound(2, 2) == 1.0 and spectral.maxpool_bound(3, 2) == 2.0
    with pytest.raises(ValueError):
        spectral.contrast_norm_bound(0.5, 0.2)
    with pytest.raises(ValueError, match="divisible"):
        spectral.conv_bound(np.ones((3, 3, 1, 1)), (7, 7), 2, "CIRCULAR")


def test_certified_radius_is_exact_for_a_linear_model():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(5, 4)), rng.normal(size=4)
    x = rng.normal(size=(6, 5))
    z = x @ w + b
    p = z.argmax(1)
    targets = (p + 1) % 4
    _, radius = spectral.certified_radius(z, 1.0, w, targets)
    # the closest point where the target's logit ties the prediction's lies exactly at that radius
    for i in range(6):
        dw = w[:, p[i]] - w[:, targets[i]]
        x_star = x[i] - radius[i] * dw / np.linalg.norm(dw)
        zs = x_star @ w + b
        assert zs[p[i]] == pytest.approx(zs[targets[i]], abs=1e-9)


def test_no_certified_radius_exceeds_an_adversarial_found_and_the_check_can_fail(tiny_mnist, key):
    model = models.build("FC100-100-10")
    params, _ = train.fit(model, tiny_mnist.train, key, train.TrainConfig(epochs=3, batch_size=64))
    rows = spectral.model_layers(model, params)
    x = tiny_mnist.test.images[:16]
    targets = attacks.random_wrong_targets(key, tiny_mnist.test.labels[:16])
    res = attacks.lbfgs_attack(Partial(model.apply, params), x, targets,
                               config=attacks.AttackConfig(c_steps=6, maxiter=60))
    logits = np.asarray(model.apply(params, x))
    last = params["params"]["dense_2"]["kernel"]
    ok = np.asarray(res.success) & (logits.argmax(1) != np.asarray(targets))
    assert ok.sum() >= 8
    _, certified = spectral.certified_radius(logits, spectral.tail_bound(rows), last, targets)
    assert np.all(np.asarray(res.l2)[ok] >= certified[ok])
    # a wrong (too small) Lipschitz constant gives radii beyond what the attack found: caught
    _, wrong = spectral.certified_radius(logits, spectral.tail_bound(rows) / 1e3, last, targets)
    assert np.any(np.asarray(res.l2)[ok] < wrong[ok])


def test_convnet_layer_bounds_dominate_power_iteration(key):
    model = models.build("ConvNet")
    rows = spectral.model_layers(model, model.init(key), iters=200)
    convs = [r for r in rows if r["kind"].startswith("conv")]
    assert len(convs) == 2 and all(r["bound"] >= r["exact"] * (1 - 1e-4) for r in convs)
    assert [r["kind"] for r in rows][-1] == "dense"


def test_alexnet_table_renders(monkeypatch, tmp_path):
    from experiments import spectral as pipeline
    small = tuple(layer._replace(kernel=layer.kernel[:2] + (min(layer.kernel[2], 4), 4))
                  for layer in alexnet.CONVS)
    monkeypatch.setattr(alexnet, "CONVS", small)
    monkeypatch.setattr(alexnet, "DENSES", (("fc1", 144, 8), ("fc2", 8, 8), ("fc3", 8, 1000)))
    rows = alexnet.bounds_table(alexnet.init(jax.random.key(8)), jax.random.key(9), iters=20)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "fc3"]
    assert all(r["bound"] >= r["power_iteration"] * (1 - 1e-3) for r in rows)
    table = {"weights": "random initialisation", "rows": rows, "maxpool_bound": 2.0, "power_iterations": 20}
    md = pipeline.render({"alexnet": table, "mnist_bounds": {}, "sandwich": {}, "figure": "f.png",
                          "provenance": {"command": "x", "seed": 0, "wall_time_s": 1.0, "machine": "m",
                                         "date": "d", "versions": {"jax": "1", "flax": "1", "optax": "1"}}})
    assert "| conv1 | 3×11×11×4 | 4 |" in md and "random initialisation" in md


def test_alexnet_npz_loader_names_the_problem(tmp_path):
    bad = tmp_path / "w.npz"
    np.savez(bad, **{"conv1/kernel": np.zeros((11, 11, 3, 96), np.float32)})
    with pytest.raises(ValueError, match="missing keys"):
        alexnet.load_npz(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        alexnet.load_npz(tmp_path / "junk.npz")
