"""The benchmark model matrix: every model the attack benchmarks draw from, undefended and defended, each
trained once by a recorded recipe and cached under ``--workdir`` like the zoo (one checkpoint per recipe;
its meta holds the recipe, test error, training wall time and the checkpoint's sha256).

Undefended: FC100-100-10 (the registry's sigmoid MLP, the zoo's checkpoint), a 784-100-100-10 ReLU MLP,
the registry ConvNet (two 5×5 convolutions with ReLU and 2×2 max pooling) and a CNN in the style of flax's
``examples/mnist`` (3×3 convolutions, average pooling, NHWC). Defended (``robust_training``): FC100-100-10
by L2 PGD at ε = 1 and at ε = 2 (adversarial training, Madry et al. 2018), the ConvNet (max pooling) by L2
PGD at ε = 2, and the ReLU MLP by interval bound propagation at ε = 0.5 (certified training, Gowal et al.
2018). None of them chose any default of the attack except FC100-100-10, the ConvNet and ``pgd-mlp``
(``benchmarks.untargeted_search``); the others are held out.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
import types


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a benchmark model is made: an architecture, a defence and its strength, the training length."""

    architecture: str  # "FC100-100-10" / "ConvNet" (registry), "relu-mlp", "flax-cnn"
    defence: str = "none"  # "none", "l2-pgd" (robust_training.L2PGDLoss), "ibp" (robust_training.IBPLoss)
    epsilon: float = 0.0  # the defence's L2 radius over the 784 pixels
    epochs: int | None = None  # None: the architecture's default training
    seed: int = 0
    warmup_epochs: int = 0  # IBP: plain epochs first, then ε ramps up linearly over ramp_epochs (Gowal et al.)
    ramp_epochs: int = 0

    @property
    def defended(self) -> bool:
        return self.defence != "none"

    def describe(self) -> str:
        if not self.defended:
            return f"{self.architecture}, undefended"
        loss = {"l2-pgd": "L2 PGD (7 steps of 0.25ε)",
                "ibp": f"IBP (κ 1 → 0.5; {self.warmup_epochs} plain epoch(s), then ε ramped over {self.ramp_epochs})"}[self.defence]
        return f"{self.architecture}, {loss} at ε = {self.epsilon:g}, {self.epochs} epochs, seed {self.seed}"


MATRIX: dict[str, Recipe] = {
    "FC100-100-10": Recipe("FC100-100-10"),
    "relu-mlp": Recipe("relu-mlp", seed=7),
    "ConvNet": Recipe("ConvNet"),
    "flax-cnn": Recipe("flax-cnn"),
    "pgd-mlp": Recipe("FC100-100-10", "l2-pgd", 1.0, 20),
    "pgd-mlp-eps2": Recipe("FC100-100-10", "l2-pgd", 2.0, 10),
    "pgd-convnet": Recipe("ConvNet", "l2-pgd", 2.0, 4),
    "ibp-mlp": Recipe("relu-mlp", "ibp", 0.5, 20, warmup_epochs=1, ramp_epochs=10),
}
UNDEFENDED = tuple(n for n, r in MATRIX.items() if not r.defended)
DEFENDED = tuple(n for n, r in MATRIX.items() if r.defended)


def _relu_mlp_model():
    from intriguing_jax import models
    return models.build(models.ModelSpec("ReLU-MLP-100-100", models.MLP((100, 100), activation="relu"), {}, epochs=10))


def _flax_cnn_model(mnist):
    import flax.linen as nn
    import jax

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for features in (32, 64):
                x = nn.avg_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), (2, 2))
            return nn.Dense(10)(nn.relu(nn.Dense(256)(x.reshape((x.shape[0], -1)))))

    net = CNN()
    init = net.init(jax.random.key(0), mnist.train.images[:1].reshape(1, 28, 28, 1))
    return types.SimpleNamespace(name="flax-style CNN (held out)", apply=net.apply, nhwc=True, init=lambda key: init)


def _train_flax_cnn(model, mnist):
    """One epoch of Adam 1e-3 at batch 128 (flax's example's optimiser)."""
    import jax
    import optax

    from intriguing_jax import train
    params = model.init(None)
    tx = optax.adam(1e-3)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(lambda p: train.cross_entropy(model.apply(p, x), y))(p)
        u, s = tx.update(g, s)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    x, y = mnist.train.images.reshape(-1, 28, 28, 1), mnist.train.labels
    for i in range(0, len(x) - 127, 128):
        params, state = step(params, state, x[i:i + 128], y[i:i + 128])
    return params


def model_of(name: str, mnist):
    """The untrained model of matrix entry ``name``: an object with ``apply`` (and ``nhwc`` for the flax CNN)."""
    from intriguing_jax import models
    arch = MATRIX[name].architecture
    if arch == "relu-mlp":
        return _relu_mlp_model()
    if arch == "flax-cnn":
        return _flax_cnn_model(mnist)
    return models.build(arch)


def checkpoint_path(name: str, workdir) -> pathlib.Path:
    from intriguing_jax import storage
    return pathlib.Path(workdir) / "checkpoints" / f"bench_{storage.safe_name(name)}_{storage.cache_key(MATRIX[name])}.ckpt"


def trained(name: str, mnist, workdir="workdir"):
    """``(model, params, meta)`` of matrix entry ``name``, trained by its recipe on the first call and loaded
    from its checkpoint after. ``meta``: recipe, test error, training wall time, checkpoint sha256."""
    import jax
    import jax.numpy as jnp

    from intriguing_jax import checkpoint, robust_training, train, zoo
    recipe = MATRIX[name]
    if recipe.architecture in ("FC100-100-10", "ConvNet") and not recipe.defended:
        model, params, meta = zoo.trained(recipe.architecture, mnist, workdir=workdir, seed=recipe.seed)
        return model, params, {**meta, "recipe": recipe.describe()}
    model, path = model_of(name, mnist), checkpoint_path(name, workdir)
    try:
        params, meta = checkpoint.load(path, model.init(jax.random.key(0)))
        return model, params, {**meta, "checkpoint_sha256": checkpoint.file_sha256(path)}
    except (FileNotFoundError, checkpoint.CheckpointError):
        pass
    t0, images = time.time(), mnist.test.images.reshape(-1, 28, 28, 1) if getattr(model, "nhwc", False) else mnist.test.images
    if recipe.architecture == "flax-cnn":
        params = _train_flax_cnn(model, mnist)
    elif not recipe.defended:
        params, _ = train.fit(model, mnist.train, jax.random.key(recipe.seed))
    else:
        cfg = train.TrainConfig(epochs=recipe.epochs)
        if recipe.defence == "ibp":
            steps = len(mnist.train) // cfg.batch_size
            loss, settings = robust_training.IBPLoss(model), {"epsilon": [0.0], "kappa": [1.0]}
            hook = robust_training.EpsilonRamp([recipe.epsilon], recipe.warmup_epochs * steps, recipe.ramp_epochs * steps)
        else:
            loss, settings, hook = robust_training.L2PGDLoss(model), {"epsilon": [recipe.epsilon]}, None
        pop, _ = train.fit_population(model, mnist.train, jnp.stack([jax.random.key(recipe.seed)]), cfg, loss=loss,
                                      settings=settings, hook=hook)
        params = train.member(pop, 0)
    meta = {"recipe": recipe.describe(), "recipe_fields": dataclasses.asdict(recipe),
            "test_error": train.error_rate(model.apply, params, type(mnist.test)(images, mnist.test.labels)),
            "train_wall_s": time.time() - t0}
    checkpoint.save(path, params, meta)
    return model, params, {**meta, "checkpoint_sha256": checkpoint.file_sha256(path)}


def problem(name, mnist, workdir, n):
    """``(model, params, x, targets)``: matrix entry ``name`` (or any registry model) and ``attack_images``."""
    from intriguing_jax import zoo
    model, params, _ = trained(name, mnist, workdir) if name in MATRIX else zoo.trained(name, mnist, workdir=workdir)
    return (model, params) + attack_images(model, params, mnist, n)


def attack_images(model, params, mnist, n):
    """``(x, targets)``: the model's first ``n`` correctly classified test images (NHWC for the flax CNN)
    with seeded random wrong targets."""
    import jax
    import numpy as np

    from intriguing_jax import attacks, train
    images = mnist.test.images.reshape(-1, 28, 28, 1) if getattr(model, "nhwc", False) else mnist.test.images
    pred = train.predict(model.apply, params, images)
    ok = np.flatnonzero(pred == mnist.test.labels)[:n]
    x, y = images[ok], mnist.test.labels[ok]
    return x, np.asarray(attacks.random_wrong_targets(jax.random.key(0), y))
