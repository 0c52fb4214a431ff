import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from intriguing_jax import checkpoint, models, train, zoo


def test_weight_decay_formula():
    params = {"params": {"dense_0": {"kernel": jnp.ones((4, 5)), "bias": jnp.ones(5)},
                         "dense_1": {"kernel": 2 * jnp.ones((5, 2)), "bias": jnp.ones(2)}}}
    got = train.weight_decay(params, {"dense_0": 0.5, "dense_1": 1.0})
    np.testing.assert_allclose(got, 0.5 * 20 / 5 + 1.0 * 40 / 2)  # λ·Σw²/k, k = units of the layer
    sums = {"dense_0": 0.5, "dense_1": 1.0}
    np.testing.assert_allclose(train.weight_decay(params, sums, "sum"), 0.5 * 20 + 1.0 * 40)
    np.testing.assert_allclose(train.weight_decay(params, sums, "half_sum"), 0.5 * (0.5 * 20 + 1.0 * 40))
    with pytest.raises(ValueError, match="decay"):
        train.TrainConfig(decay="per_example")
    with pytest.raises(ValueError, match="optimizer"):
        train.TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize("name", ["FC10(1e-4)", "FC100-100-10", "AE400-10"])
def test_training_lowers_loss_and_error(name, key, tiny_mnist):
    model = models.build(name)
    before = train.error_rate(model.apply, model.init(jax.random.split(key, 3)[0]), tiny_mnist.test)
    cfg = train.TrainConfig(epochs=10, batch_size=50, learning_rate=3e-3, ae_epochs=10, ae_iterations=100)
    params, hist = train.fit(model, tiny_mnist.train, key, cfg)
    assert hist[-1] < hist[0]
    after = train.error_rate(model.apply, params, tiny_mnist.test)
    assert after < before - 0.2


def test_autoencoder_layer_stays_frozen(key, tiny_mnist):
    model = models.build("AE400-10")
    cfg = train.TrainConfig(epochs=1, batch_size=50, ae_epochs=1, ae_iterations=10)
    encoder, _ = train.pretrain_autoencoder(model, tiny_mnist.train, jax.random.split(key, 3)[1], cfg)
    params, _ = train.fit(model, tiny_mnist.train, key, cfg)
    np.testing.assert_array_equal(params["params"]["dense_0"]["kernel"], encoder["kernel"])


def test_checkpoint_roundtrip_corrupt_and_mismatch(tmp_path, key):
    model = models.build("FC100-100-10")
    params = model.init(key)
    path = tmp_path / "m.ckpt"
    checkpoint.save(path, params, {"model": model.name})
    loaded, meta = checkpoint.load(path, params)
    assert meta == {"model": model.name}
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "bad.ckpt").write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path / "bad.ckpt", params)
    (tmp_path / "short.ckpt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "short.ckpt", params)
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.load(path, models.build("FC200-200-10").init(key))


def test_zoo_trains_once_then_loads(tmp_path, tiny_mnist):
    cfg = train.TrainConfig(epochs=1, batch_size=50)
    _, p1, meta = zoo.trained("FC10(1e-2)", tiny_mnist, split="p1", cfg=cfg, workdir=tmp_path)
    assert set(meta) >= {"train_error", "test_error", "p1_error", "p2_error", "provenance"}
    assert meta["provenance"]["seed"] == 0 and "jax" in meta["provenance"]["versions"]
    _, p2, meta2 = zoo.trained("FC10(1e-2)", tiny_mnist, split="p1", cfg=cfg, workdir=tmp_path)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert meta2 == meta


def test_zoo_population_caches_each_seed_as_trained_would(tmp_path, tiny_mnist, monkeypatch):
    cfg = train.TrainConfig(epochs=1, batch_size=50)
    runs = zoo.trained_seeds("FC10(1e-2)", tiny_mnist, (0, 1), cfg=cfg, workdir=tmp_path)
    assert [m["provenance"]["seed"] for _, _, m in runs] == [0, 1]
    assert sorted(p.suffix for p in (tmp_path / "checkpoints").iterdir()) == [".ckpt", ".ckpt"]  # partial removed
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a cached seed was trained again"))
    _, params, meta = zoo.trained("FC10(1e-2)", tiny_mnist, seed=1, cfg=cfg, workdir=tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params, runs[1][1])
    assert meta["test_error"] == runs[1][2]["test_error"]


def test_processes_sharing_a_workdir_train_a_checkpoint_once(tmp_path, tiny_mnist, monkeypatch):
    """Two callers (threads here: ``flock`` separates open files as it separates processes) asking for the same
    uncached checkpoint at once: one trains it, the other waits and loads the same file."""
    import threading
    cfg, calls, real_fit = train.TrainConfig(epochs=1, batch_size=50), [], train.fit

    def slow_fit(*a, **k):
        calls.append(1)
        time.sleep(0.5)  # the second caller arrives while the first trains
        return real_fit(*a, **k)

    monkeypatch.setattr(train, "fit", slow_fit)
    out = [None, None]
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, zoo.trained(
        "FC10(1e-2)", tiny_mnist, cfg=cfg, workdir=tmp_path)[2]["checkpoint_sha256"])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and out[0] == out[1] is not None


def test_cache_key_follows_the_registry_defaults(monkeypatch):
    cfg = train.TrainConfig()
    key = zoo.config_key("FC100-100-10", cfg)
    spec = models.spec("FC100-100-10")
    assert zoo.config_key("FC100-100-10", train.TrainConfig(learning_rate=spec.learning_rate, epochs=spec.epochs)) == key
    monkeypatch.setitem(models.REGISTRY, "FC100-100-10", dataclasses.replace(spec, learning_rate=2e-2))
    assert zoo.config_key("FC100-100-10", cfg) != key  # an edited default never reuses the old run's cache
    monkeypatch.setitem(models.REGISTRY, "FC100-100-10", dataclasses.replace(spec, weight_decay={"dense_0": 1e-3}))
    assert zoo.config_key("FC100-100-10", cfg) != key


def test_a_half_of_the_training_set_takes_the_same_steps():
    """Default epochs count passes over the full set: P1/P2 runs get twice as many; explicit epochs are kept."""
    spec = models.spec("FC100-100-10")
    assert zoo.resolved_config("FC100-100-10", train.TrainConfig(), "p1").epochs == 2 * spec.epochs
    assert zoo.resolved_config("FC100-100-10", train.TrainConfig(), "train").epochs == spec.epochs
    assert zoo.resolved_config("FC100-100-10", train.TrainConfig(epochs=3), "p2").epochs == 3
    assert zoo.config_key("FC100-100-10", train.TrainConfig(), "p1") == zoo.config_key(
        "FC100-100-10", train.TrainConfig(epochs=2 * spec.epochs), "p1")
    with pytest.raises(ValueError, match="unknown training split 'test'"):
        zoo.config_key("FC100-100-10", train.TrainConfig(), "test")
    with pytest.raises(ValueError, match="share"):
        train.TrainConfig().for_model(spec, 0.0)


def test_every_entry_point_resolves_a_half_split_the_same_way(monkeypatch, tiny_mnist, key):
    """fit, the adversarial fit and the zoo give a P1-sized split twice the spec's epochs (one resolution)."""
    from intriguing_jax import adversarial_training as at
    p1 = tiny_mnist.split("p1")
    assert p1.share == 0.5 and tiny_mnist.train.share == 1.0 and p1.take(10).share == 0.5
    spec = models.spec("FC10(1e-4)")
    seen = []

    def record(loss_fn, state, tx, data, key, epochs, *args, **kwargs):
        seen.append(epochs)
        return train.TrainState(state.params, None, state.extra), []
    monkeypatch.setattr(train, "run_epochs", record)
    train.fit(models.build("FC10(1e-4)"), p1, key, train.TrainConfig(batch_size=64))
    at.fit(models.build("FC10(1e-4)"), p1, key, train.TrainConfig(batch_size=64), at.AdvTrainConfig(layers=()))
    expected = zoo.resolved_config("FC10(1e-4)", train.TrainConfig(), "p1").epochs
    assert seen == [expected, expected] == [2 * spec.epochs] * 2
    seen.clear()
    train.fit(models.build("FC10(1e-4)"), p1, key, zoo.resolved_config("FC10(1e-4)", train.TrainConfig(batch_size=64), "p1"))
    assert seen == [expected]  # the zoo hands fit an already resolved config: not scaled twice


def test_hook_extra_data_enters_the_loss_and_is_refreshed(key):
    """The one training loop: a hook's extra data reaches the loss; before_step replaces it."""
    seen = []

    class Shift(train.Hook):
        def before_step(self, step, k, params, extra):
            seen.append(step)
            return extra + 1.0 if step == 2 else extra

    def loss_fn(p, batch, extra, k):
        (x,) = batch
        return jnp.mean((p["w"] * x - extra) ** 2)

    data = (np.ones((8,), np.float32),)
    state, hist = train.run_epochs(loss_fn, train.TrainState({"w": jnp.zeros(())}, None, jnp.zeros(())),
                                   optax.sgd(0.1), data, key, 2, 4, hook=Shift())
    assert seen == [0, 1, 2, 3] and float(state.extra) == 1.0 and len(hist) == 2
    resumed, hist2 = train.run_epochs(loss_fn, state, optax.sgd(0.1), data, key, 3, 4, hook=Shift(),
                                      start_epoch=2)
    assert seen[-2:] == [4, 5] and len(hist2) == 1


def test_learning_rate_schedules():
    cos, const, step = (train.learning_rate_schedule(s, 100, 0.5) for s in ("cosine", "constant", "step"))
    assert float(cos(0)) == pytest.approx(0.5) and float(cos(100)) == pytest.approx(0.0, abs=1e-7)
    assert [float(const(i)) for i in (0, 99)] == [0.5, 0.5]
    assert [float(step(i)) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005, 0.005])
    with pytest.raises(ValueError, match="schedule must be one of"):
        train.TrainConfig(schedule="linear")


@pytest.mark.parametrize("name", ["FC100-100-10", "ConvNet"])
def test_initialisations_redraw_kernels_at_their_scale(key, name):
    model = models.build(name)
    flax_default = train.initial_params(model, key, train.TrainConfig())
    jax.tree.map(np.testing.assert_array_equal, flax_default, model.init(key))
    glorot = train.initial_params(model, key, train.TrainConfig(init="glorot_uniform"))
    he = train.initial_params(model, key, train.TrainConfig(init="he_normal"))
    for layer, p in glorot["params"].items():
        k = p["kernel"]
        receptive = int(np.prod(k.shape[:-2]))  # 1 for a dense kernel, the window for a convolution
        fan_in, fan_out = receptive * k.shape[-2], receptive * k.shape[-1]
        if k.size >= 2000:  # enough draws for the variance to be within 15%
            assert float(jnp.var(k)) == pytest.approx(2 / (fan_in + fan_out), rel=0.15)
            assert float(jnp.var(he["params"][layer]["kernel"])) == pytest.approx(2 / fan_in, rel=0.15)
        np.testing.assert_array_equal(p["bias"], 0)
        assert k.shape == flax_default["params"][layer]["kernel"].shape
    with pytest.raises(ValueError, match="init must be one of"):
        train.TrainConfig(init="orthogonal")


def test_a_population_member_trains_as_it_would_alone(tiny_mnist):
    """Members of one jitted population — seeds, a learning rate, a weight-decay scale — end where ``fit``
    ends for each alone (float tolerance)."""
    model = models.build("FC100-100-10")
    cfg = train.TrainConfig(epochs=2, batch_size=64)
    keys = jnp.stack([jax.random.key(s) for s in (3, 4, 5)])
    pop, history = train.fit_population(model, tiny_mnist.train, keys, cfg, learning_rates=[1e-2, 1e-2, 3e-3],
                                        decay_scales=[1.0, 100.0, 1.0])
    assert len(history) == 2 and len(history[0]) == 3
    strong = dataclasses.replace(model.spec, weight_decay={k: 100 * v for k, v in model.spec.weight_decay.items()})
    alone = [train.fit(model, tiny_mnist.train, keys[0], cfg),
             train.fit(models.build(strong), tiny_mnist.train, keys[1], cfg),
             train.fit(model, tiny_mnist.train, keys[2], dataclasses.replace(cfg, learning_rate=3e-3))]
    for m, (params, losses) in enumerate(alone):
        for a, b in zip(jax.tree.leaves(train.member(pop, m)), jax.tree.leaves(params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose([h[m] for h in history], losses, rtol=1e-3)
    with pytest.raises(ValueError, match="one value per member"):
        train.fit_population(model, tiny_mnist.train, keys, cfg, learning_rates=[1e-2])


def test_a_killed_training_resumes_after_its_last_epoch(tiny_mnist, tmp_path):
    model = models.build("FC10(1e-4)")
    cfg = train.TrainConfig(epochs=3, batch_size=64)
    full, full_hist = train.fit(model, tiny_mnist.train, jax.random.key(0), cfg)

    def kill_after_second(epoch, loss):
        if epoch == 1:
            raise KeyboardInterrupt
    path = tmp_path / "run.partial"
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, tiny_mnist.train, jax.random.key(0), cfg, kill_after_second, checkpoint_path=path)
    seen = []
    resumed, hist = train.fit(model, tiny_mnist.train, jax.random.key(0), cfg, lambda e, l: seen.append(e),
                              checkpoint_path=path)
    assert seen == [2] and len(hist) == 3  # only the third epoch ran again; the history is whole
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hist, full_hist, rtol=1e-5)


def test_a_zoo_checkpoint_does_not_depend_on_the_seeds_trained_beside_it(tmp_path, tiny_mnist):
    cfg = train.TrainConfig(epochs=2, batch_size=64)
    (_, alone, _), = zoo.trained_seeds("FC100-100-10", tiny_mnist, [1], cfg=cfg, workdir=tmp_path / "a")
    _, (_, grouped, meta), _ = zoo.trained_seeds("FC100-100-10", tiny_mnist, [0, 1, 2], cfg=cfg, workdir=tmp_path / "b")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(grouped)))
    assert meta["checkpoint_sha256"] != zoo.trained_seeds("FC100-100-10", tiny_mnist, [0], cfg=cfg,
                                                               workdir=tmp_path / "b")[0][2]["checkpoint_sha256"]


def test_a_dataset_recipe_changes_what_every_entry_point_resolves_and_only_on_that_dataset(monkeypatch, tiny_mnist, key):
    """``models.DATASET_RECIPES``: a run on that dataset (its splits say which) trains with its recipe, and
    its cache key differs; MNIST's runs keep the registry's."""
    from intriguing_jax import adversarial_training as at
    monkeypatch.setitem(models.DATASET_RECIPES, "fashion_mnist", {"FC10(1e-4)": {"epochs": 3, "learning_rate": 5e-3}})
    cfg = train.TrainConfig(batch_size=64)
    fashion = zoo.resolved_config("FC10(1e-4)", cfg, "p1", "fashion_mnist")
    assert (fashion.epochs, fashion.learning_rate) == (6, 5e-3)  # half the set: twice the passes, as on MNIST
    assert zoo.resolved_config("FC10(1e-4)", cfg, "p1").epochs == 2 * models.spec("FC10(1e-4)").epochs
    assert zoo.config_key("FC10(1e-4)", cfg, "train", "fashion_mnist") != zoo.config_key("FC10(1e-4)", cfg, "train")
    assert zoo.config_key("FC100-100-10", cfg, "train", "fashion_mnist") == zoo.config_key("FC100-100-10", cfg, "train")
    seen = []

    def record(loss_fn, state, tx, data, key, epochs, *args, **kwargs):
        seen.append(epochs)
        return train.TrainState(state.params, None, state.extra), []
    monkeypatch.setattr(train, "run_epochs", record)
    p1 = dataclasses.replace(tiny_mnist.split("p1"), dataset="fashion_mnist")
    train.fit(models.build("FC10(1e-4)"), p1, key, cfg)
    at.fit(models.build("FC10(1e-4)"), p1, key, cfg, at.AdvTrainConfig(layers=()))
    train.fit(models.build("FC10(1e-4)"), tiny_mnist.split("p1"), key, cfg)
    assert seen == [6, 6, 2 * models.spec("FC10(1e-4)").epochs]
