import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intriguing_jax import adversarial_training as at
from intriguing_jax import attacks, models, train

TINY = models.build(models.ModelSpec("tiny", models.MLP((8, 6)), {}, epochs=2))
FAST = attacks.AttackConfig(c_steps=2, maxiter=10, rescue_steps=0)
CFG = train.TrainConfig(epochs=2, batch_size=50)


def _adv(layers, **kw):
    return at.AdvTrainConfig(layers=layers, pool_size=40, refresh_every=5, refresh_count=10, pool_batch=8,
                             attack=FAST, **kw)


def test_replace_fills_empty_slots_first_and_writes_only_valid_points(key):
    pool = at.empty_pool(10, 3)
    pool = pool._replace(valid=pool.valid.at[:6].set(True), labels=pool.labels.at[:6].set(1))
    fresh = at.Pool(jnp.ones((4, 3)), jnp.full(4, 7, jnp.int32), jnp.array([True, True, True, False]))
    out = at.replace(pool, fresh, key)
    labels, valid = np.asarray(out.labels), np.asarray(out.valid)
    assert (labels == 7).sum() == 3 and valid.sum() == 9  # 3 of the 4 empty slots filled, nothing evicted
    assert (labels[:6] == 1).all()
    assert np.array_equal(np.asarray(out.points).sum(1) == 3, labels == 7)


def test_generate_keeps_only_successful_attacks_unless_asked(tiny_mnist, key):
    params = TINY.init(key)
    x, y = tiny_mnist.train.images[:16], tiny_mnist.train.labels[:16]
    weak = attacks.AttackConfig(c_steps=1, maxiter=2, c_init=10.0, rescue_steps=0)  # too short to reach most targets
    pool, stats = at.generate(TINY, params, 0, x, y, key, weak)
    targets = np.asarray(attacks.random_wrong_targets(key, y))
    reached = np.asarray(TINY.apply(params, pool.points)).argmax(1) == targets
    np.testing.assert_array_equal(np.asarray(pool.valid), reached)
    assert 0 < stats.success < 1 and stats.kept == stats.success
    kept_all, _ = at.generate(TINY, params, 0, x, y, key, weak, keep_failed=True)
    assert np.asarray(kept_all.valid).all()
    capped, st = at.generate(TINY, params, 0, x, y, key, weak, keep_failed=True, max_distortion=1e-4)
    near = np.asarray(attacks.distortion(x, capped.points)) <= 1e-4
    assert 0 < near.sum() < len(near)
    np.testing.assert_array_equal(np.asarray(capped.valid), near)
    far, _ = at.generate(TINY, params, 0, x, y, key, weak, overshoot=2.0)  # past the boundary, in the box
    r, r_far = np.asarray(pool.points) - x, np.asarray(far.points) - x
    np.testing.assert_allclose(r_far, np.clip(x + 2 * r, 0, 1) - x, atol=1e-6)
    assert np.abs(r_far).sum() > np.abs(r).sum()
    with pytest.raises(ValueError, match="overshoot"):
        at.AdvTrainConfig(overshoot=0.5)


@pytest.mark.parametrize("layer,width", [(0, 784), (1, 8), (2, 6)])
def test_generate_makes_adversarial_points_in_each_layers_space(tiny_mnist, key, layer, width):
    params = TINY.init(key)
    x, y = tiny_mnist.train.images[:12], tiny_mnist.train.labels[:12]
    pool, stats = at.generate(TINY, params, layer, x, y, key, attacks.AttackConfig(c_steps=4, maxiter=30, rescue_steps=0))
    pts = np.asarray(pool.points)
    assert pts.shape == (12, width) and pts.min() >= 0 and pts.max() <= 1
    np.testing.assert_array_equal(np.asarray(pool.labels), y)
    clean = np.asarray(at.layer_inputs(TINY, params, x, layer))
    assert np.abs(pts - clean).max() > 0  # perturbed, in the layer's own space
    pred = np.asarray(TINY.from_layer(params, pool.points, layer)).argmax(1)
    assert np.mean(pred != y) >= 0.5  # most now classified wrongly by the layers above
    assert stats.success == pytest.approx(float(np.mean(np.asarray(pool.valid)))) and stats.distortion >= 0


def test_a_hidden_pool_trains_only_the_layers_above(tiny_mnist, key):
    params, hist = at.fit(TINY, tiny_mnist.train, key, CFG, _adv((2,), mix=1.0))
    init = TINY.init(jax.random.split(key, 3)[0])
    for name in ("dense_0", "dense_1"):  # below the pool's layer: untouched when only the pool is trained
        np.testing.assert_array_equal(np.asarray(params["params"][name]["kernel"]),
                                      np.asarray(init["params"][name]["kernel"]))
    assert not np.array_equal(np.asarray(params["params"]["dense_2"]["kernel"]),
                              np.asarray(init["params"]["dense_2"]["kernel"]))
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)
    assert hist[-1]["pool2_filled"] > 0 and 0 <= hist[-1]["pool2_success"] <= 1  # pool statistics recorded


def test_mixing_changes_training_and_interrupted_runs_resume_identically(tiny_mnist, key, tmp_path):
    plain, _ = at.fit(TINY, tiny_mnist.train, key, CFG, at.AdvTrainConfig(layers=()))
    mixed, _ = at.fit(TINY, tiny_mnist.train, key, CFG, _adv((0, 1)))
    assert not np.allclose(np.asarray(plain["params"]["dense_0"]["kernel"]),
                           np.asarray(mixed["params"]["dense_0"]["kernel"]))

    losses = []

    def stop_after_first(epoch, params, loss):
        losses.append(loss)
        if epoch == 1:
            raise KeyboardInterrupt
    ckpt = tmp_path / "adv.ckpt"
    with pytest.raises(KeyboardInterrupt):
        at.fit(TINY, tiny_mnist.train, key, CFG, _adv((0, 1)), checkpoint_path=ckpt, on_epoch=stop_after_first)
    resumed, hist = at.fit(TINY, tiny_mnist.train, key, CFG, _adv((0, 1)), checkpoint_path=ckpt)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert losses[0] == hist[0]["loss"] and losses[0] > 0  # on_epoch gets the epoch's real training loss
    assert all(h["seconds"] > 0 for h in hist)  # the epoch before the interruption keeps its time
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(mixed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_config_and_model_checks(tiny_mnist, key):
    with pytest.raises(ValueError, match="distinct"):
        at.AdvTrainConfig(layers=(0, 0))
    with pytest.raises(ValueError, match="mix"):
        at.AdvTrainConfig(mix=1.5)
    with pytest.raises(ValueError, match="max_distortion"):
        at.AdvTrainConfig(max_distortion=0.0)
    with pytest.raises(ValueError, match="hidden layers"):
        at.fit(TINY, tiny_mnist.train, key, CFG, _adv((3,)))
    with pytest.raises(TypeError, match="MLP"):
        at.fit(models.build("ConvNet"), tiny_mnist.train, key, CFG, _adv((0,)))


def test_a_population_member_is_the_run_alone_and_resumes_after_a_kill(tiny_mnist, tmp_path):
    """Two members with their own keys, mix and overshoot (their pools refreshed by one attack call per
    layer) end where ``fit`` alone ends with the same settings; a killed population resumes identically."""
    adv = _adv((0, 1))
    keys = jnp.stack([jax.random.key(3), jax.random.key(4)])
    settings = {"mixes": [0.5, 0.2], "overshoots": [1.0, 1.5]}
    pop, hists = at.fit_population(TINY, tiny_mnist.train, keys, CFG, adv, **settings)
    for m, (mix, over) in enumerate(zip(*settings.values())):
        alone, hist = at.fit(TINY, tiny_mnist.train, keys[m], CFG, dataclasses.replace(adv, mix=mix, overshoot=over))
        for a, b in zip(jax.tree.leaves(train.member(pop, m)), jax.tree.leaves(alone)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
        assert hists[m][-1]["pool0_success"] == pytest.approx(hist[-1]["pool0_success"])
        assert hists[m][-1]["loss"] == pytest.approx(hist[-1]["loss"], rel=1e-4)
    assert not np.allclose(np.asarray(hists[0][-1]["loss"]), np.asarray(hists[1][-1]["loss"]))

    def stop(epoch, params, losses):
        if epoch == 1:
            raise KeyboardInterrupt
        return [{"n": m} for m in range(2)]
    ckpt = tmp_path / "pop.ckpt"
    with pytest.raises(KeyboardInterrupt):
        at.fit_population(TINY, tiny_mnist.train, keys, CFG, adv, **settings, checkpoint_path=ckpt, on_epoch=stop)
    resumed, rh = at.fit_population(TINY, tiny_mnist.train, keys, CFG, adv, **settings, checkpoint_path=ckpt)
    assert [h["epoch"] for h in rh[1]] == [1, 2] and rh[1][0]["n"] == 1  # the epoch before the kill kept
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(pop)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="overshoot"):
        at.fit_population(TINY, tiny_mnist.train, keys, CFG, adv, overshoots=[1.0, 0.5])
