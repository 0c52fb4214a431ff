"""How the attack runs, not what it finds: compilation (once per shape, two tiers that agree bit for bit, a
rejected tier's fallback), the solver slots examples stream through, the loop or the host-stepped loop,
chunks that resume, jit, and the rescue in either execution. (Split from ``test_attacks``, whose fixtures it
shares, so the two files run on separate pytest-xdist workers.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from intriguing_jax import _attack_engine as _engine
from intriguing_jax import attacks, models
from tests.test_attacks import correctly_classified, mlp, mnist  # noqa: F401 (fixtures)


def test_jittable_public_function(mlp, mnist):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 2)
    cfg = attacks.AttackConfig.smoke()
    jitted = jax.jit(lambda p, x, t: attacks.lbfgs_attack(Partial(model.apply, p), x, t, config=cfg))
    out = jitted(params, x, t)
    ref = attacks.lbfgs_attack(Partial(model.apply, params), x, t, config=cfg)
    np.testing.assert_allclose(out.l2, ref.l2, rtol=1e-4)


def test_attack_in_chunks_matches_one_call_and_resumes(mlp, mnist, tmp_path):
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 5)
    fn = Partial(model.apply, params)
    cfg = attacks.AttackConfig.smoke()
    seen = []
    res = attacks.attack_in_chunks(fn, x, t, config=cfg, chunk_size=2, cache_dir=tmp_path, progress=seen.append)
    assert seen == [2, 2, 1] and sorted(p.name for p in tmp_path.iterdir()) == [
        "chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    for i in range(len(t)):  # padding the last chunk does not change its examples
        one = attacks.lbfgs_attack(fn, x[i:i + 1], t[i:i + 1], config=cfg)
        np.testing.assert_allclose(res.l2[i], one.l2[0], rtol=1e-3)
    (tmp_path / "chunk_00001.npz").write_bytes(b"damaged")  # an interrupted or corrupt chunk is redone
    stamp = (tmp_path / "chunk_00000.npz").stat().st_mtime_ns
    again = attacks.attack_in_chunks(fn, x, t, config=cfg, chunk_size=2, cache_dir=tmp_path)
    assert (tmp_path / "chunk_00000.npz").stat().st_mtime_ns == stamp  # finished chunks are reused
    jax.tree.map(np.testing.assert_array_equal, res, again)


def test_examples_stream_through_fewer_slots_with_the_same_result(mlp, mnist):
    """With block_size < N the examples queue for solver rows; each still gets its own search."""
    model, params = mlp
    fn = Partial(model.apply, params)
    x, y = mnist.test.images[:7], mnist.test.labels[:7]
    t = attacks.random_wrong_targets(jax.random.key(3), y)
    cfg = attacks.AttackConfig.smoke()
    whole = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, block_size=7))
    streamed = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, block_size=3))
    assert streamed.adversarial.shape == whole.adversarial.shape
    np.testing.assert_array_equal(np.asarray(streamed.success), np.asarray(whole.success))
    np.testing.assert_allclose(np.asarray(streamed.l2), np.asarray(whole.l2), rtol=2e-3, atol=1e-4)
    assert np.all(np.asarray(streamed.grad_evals) > 0)
    with pytest.raises(ValueError, match="block_size"):
        attacks.AttackConfig(block_size=0)


def test_compiles_once_for_new_weights(mlp, mnist):
    """New weights bound with Partial are arguments of the compiled attack, not constants: one
    compilation serves every set of weights."""
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 4)
    cfg = dataclasses.replace(attacks.AttackConfig.smoke(), c_steps=2, maxiter=5)
    def compiled():
        return sum(f._cache_size() for f in _engine._STREAMING.values())

    before = compiled()
    attacks.lbfgs_attack(Partial(model.apply, params), x, t, config=cfg)
    assert compiled() == before + 1
    for scale in (0.9, 1.1, 0.8):
        p = jax.tree.map(lambda a, s=scale: a * s, params)
        res = attacks.lbfgs_attack(Partial(model.apply, p), x, t, config=cfg)
        assert res.l2.shape == (4,)
    assert compiled() == before + 1


def test_compile_tiers_agree_bitwise_and_auto_switches_once(mlp, mnist, monkeypatch):
    """The fast and the optimized compilation run the same arithmetic: identical results, bit for bit,
    in the loop and stepped from the host; "auto" serves a program fast until it has attacked
    ``FAST_ROWS`` images in this process, then compiles it once, optimized."""
    model, params = mlp
    fn = Partial(model.apply, params)
    x, _, t = correctly_classified(model, params, mnist.test, 6)
    cfg = dataclasses.replace(attacks.AttackConfig.smoke(), block_size=4, walk_steps=0)  # smaller programs
    for execution in ("loop", "stepped"):
        fast, opt = (attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, execution=execution, compile=c))
                     for c in ("fast", "optimized"))
        for a, b in zip(fast, opt):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.setattr(_engine, "FAST_ROWS", 10)
    monkeypatch.setattr(_engine, "_ATTACKED", {})
    auto = dataclasses.replace(cfg, execution="loop", c_steps=3)  # a program not compiled yet
    sizes = lambda: {k: f._cache_size() for k, f in _engine._STREAMING.items()}  # noqa: E731
    start = sizes()
    served = []
    for _ in range(4):  # 6, 12, 18, 24 images attacked
        before = sizes()
        attacks.lbfgs_attack(fn, x, t, config=auto)
        served.append(next((k for k in before if sizes()[k] > before[k]), "cached"))
    assert served == (["fast", "optimized", "cached", "cached"] if jax.default_backend() == "cpu" else
                      ["optimized", "cached", "cached", "cached"])
    assert sum(sizes().values()) == sum(start.values()) + len(set(served) - {"cached"})
    with pytest.raises(ValueError, match="compile"):
        attacks.AttackConfig(compile="eager")


def _tiny_cnn():
    import flax.linen as nn

    class CNN(nn.Module):  # flax examples/mnist style, NHWC
        @nn.compact
        def __call__(self, x):
            x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
            return nn.Dense(10)(x.reshape((x.shape[0], -1)))
    net = CNN()
    return net, net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_host_stepped_and_single_loop_execution_agree(mnist):
    """The same solver iteration run as one XLA loop or stepped from the host: the same examples reached,
    the same distortions to float precision; "auto" steps a model with a convolution on CPU."""
    net, params = _tiny_cnn()
    fn = Partial(net.apply, params)
    x = mnist.test.images[:6].reshape(-1, 28, 28, 1)
    t = (np.asarray(jnp.argmax(net.apply(params, x), -1)) + 3) % 10
    cfg = dataclasses.replace(attacks.AttackConfig.smoke(), block_size=4, walk_steps=6)  # the walk stepped too
    loop = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, execution="loop"))
    stepped = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, execution="stepped"))
    assert bool(loop.success.all()) and loop.adversarial.shape == x.shape
    np.testing.assert_array_equal(np.asarray(stepped.success), np.asarray(loop.success))
    # two programs, so XLA may round differently (~1 ulp), but every decision of the search is the same
    np.testing.assert_array_equal(np.asarray(stepped.grad_evals), np.asarray(loop.grad_evals))
    np.testing.assert_allclose(np.asarray(stepped.adversarial), np.asarray(loop.adversarial), atol=1e-5)
    np.testing.assert_allclose(np.asarray(stepped.l2), np.asarray(loop.l2), rtol=1e-5)
    example = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    assert attacks._stepped(fn, jnp.asarray(x), cfg) == (jax.default_backend() == "cpu")
    assert _engine.has_convolution(fn, example)
    model = models.build("FC100-100-10")
    mlp_fn = Partial(model.apply, model.init(jax.random.key(0)))
    assert not _engine.has_convolution(mlp_fn, jax.ShapeDtypeStruct((2, 784), jnp.float32))
    with pytest.raises(ValueError, match="execution"):
        attacks.AttackConfig(execution="threads")


def test_a_rejected_fast_tier_falls_back_once_and_says_so(monkeypatch, mlp):
    """An XLA that no longer knows the fast tier's option: every call compiles optimized, one warning."""
    model, params = mlp
    monkeypatch.setattr(_engine, "FAST_COMPILE", {"xla_option_this_xla_does_not_know": False})
    _engine.fast_tier_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="rejected the attack's fast compilation tier") as record:
            assert _engine.tier("auto", ("sig",), 1) == "optimized"
            assert _engine.tier("fast", ("sig",), 1) == "optimized"
        assert len(record) == 1
        x = np.random.default_rng(0).uniform(0, 1, (3, 784)).astype(np.float32)
        t = np.array([1, 2, 3], np.int32)
        fn = Partial(model.apply, params)
        cfg = attacks.AttackConfig(c_steps=2, maxiter=10, walk_steps=0)
        fast = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, compile="fast"))
        opt = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, compile="optimized"))
        np.testing.assert_array_equal(np.asarray(fast.adversarial), np.asarray(opt.adversarial))
    finally:
        _engine.fast_tier_available.cache_clear()


def test_examples_the_c_search_leaves_unsuccessful_are_rescued_in_either_execution(mnist, mlp, monkeypatch):
    """A search that cannot succeed (one solve of one iteration at a huge c) leaves failures; the rescue
    finds them from the clean image and leaves the successes as they were: on the host (the failures alone,
    after the loop or the stepped loop) and inside an outer jit alike. The images a call attacks count once
    toward the fast tier's budget, rescued or not."""
    model, params = mlp
    x, _, t = correctly_classified(model, params, mnist.test, 8)
    fn = Partial(model.apply, params)
    cfg = attacks.AttackConfig(c_init=1e2, c_steps=1, maxiter=1, walk_steps=0, rescue_steps=0, block_size=4)
    plain = attacks.lbfgs_attack(fn, x, t, config=cfg)
    failed = ~np.asarray(plain.success)
    assert failed.sum() >= 4
    monkeypatch.setattr(_engine, "_ATTACKED", {})
    loop = attacks.lbfgs_attack(fn, x, t, config=dataclasses.replace(cfg, rescue_steps=40, execution="loop"))
    assert bool(loop.success.all())
    assert list(_engine._ATTACKED.values()) == ([len(x)] if jax.default_backend() == "cpu" else [])
    np.testing.assert_array_equal(np.asarray(loop.adversarial)[~failed], np.asarray(plain.adversarial)[~failed])
    np.testing.assert_array_equal(np.asarray(loop.grad_evals), np.asarray(plain.grad_evals) + np.where(failed, 41, 0))
    jitted = jax.jit(lambda xx: attacks.lbfgs_attack(fn, xx, t, config=dataclasses.replace(cfg, rescue_steps=40)))(x)
    # on the host, the failures alone (after the loop or the stepped loop: one code); under jit, inside
    np.testing.assert_array_equal(np.asarray(jitted.success), np.asarray(loop.success))
    np.testing.assert_array_equal(np.asarray(jitted.grad_evals), np.asarray(loop.grad_evals))
    np.testing.assert_allclose(np.asarray(jitted.l2), np.asarray(loop.l2), rtol=1e-4)
