"""The paper's MNIST models as pure ``(init, apply)`` pairs, in a registry by the paper's names.

Every model maps flat images ``[N, 784]`` in [0, 1] to logits ``[N, 10]`` and exposes its hidden layers:
``activations(params, x)`` returns each layer's output (hidden layers, then logits) and
``from_layer(params, h, k)`` runs the layers above layer ``k`` (``k = 0`` is the input), which unit
analysis and per-layer adversarial training need. Each module also says what other modules ask of it:
``layer_bounds(params, key, iters)`` (per-layer Lipschitz bounds, ``spectral``) and ``pool_spaces()``
(the layers whose space can hold an adversarial pool, ``adversarial_training``). A new model is a module
with these methods and one ``REGISTRY`` entry.

References: Szegedy et al. 2014, Sec. 2 and 4.2 (models), Table 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from intriguing_jax import spectral

NUM_PIXELS, NUM_CLASSES = 784, 10


class MLP(nn.Module):
    """Dense layers with a nonlinearity after each hidden layer; no hidden layer = softmax regression."""

    hidden: Sequence[int]
    num_classes: int = NUM_CLASSES
    activation: str = "sigmoid"

    def setup(self):
        widths = list(self.hidden) + [self.num_classes]
        self.layers = [nn.Dense(w, name=f"dense_{i}") for i, w in enumerate(widths)]

    def _act(self, z):
        return {"sigmoid": nn.sigmoid, "relu": nn.relu}[self.activation](z)

    def activations(self, x):
        outs, h = [], x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self._act(h)
            outs.append(h)
        return tuple(outs)

    def from_layer(self, h, k: int):
        for i in range(k, len(self.layers)):
            h = self.layers[i](h)
            if i < len(self.layers) - 1:
                h = self._act(h)
        return h

    def __call__(self, x):
        return self.activations(x)[-1]

    def layer_bounds(self, params, *, key, iters: int) -> list[dict]:
        p = params["params"]
        rows = []
        for i in range(len(self.hidden)):
            rows += [spectral.dense_row(f"dense_{i}", p[f"dense_{i}"]["kernel"]), spectral.activation_row(self.activation)]
        return rows + [spectral.dense_row(f"dense_{len(self.hidden)}", p[f"dense_{len(self.hidden)}"]["kernel"])]

    def pool_spaces(self) -> tuple[int, ...]:
        """The input, and each hidden layer when bounded (sigmoid: the attack's box is [0, 1])."""
        return (0,) + (tuple(range(1, len(self.hidden) + 1)) if self.activation == "sigmoid" else ())


def conv_with_fast_input_grad(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, precision=None):
    """``lax.conv_general_dilated`` (a drop-in for ``nn.Conv(conv_general_dilated=...)``) whose input
    gradient, for stride-1 "SAME" convolutions with odd kernels, is an ordinary convolution with the
    spatially flipped, in/out-swapped kernel. Same values; the reason is speed: inside a while loop (the
    attack's solver) XLA:CPU computes the autodiff input gradient with the kernel in a slow layout — one
    value-and-grad of ConvNet at batch 16 took 43 ms in a loop vs 8 ms outside (``benchmarks/RESULTS.md``).
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)

    def conv(x, k):
        return lax.conv_general_dilated(x, k, window_strides, padding, lhs_dilation, rhs_dilation, dn,
                                        feature_group_count, precision=precision)

    spatial = dn.rhs_spec[2:]
    simple = (padding == "SAME" and all(s == 1 for s in window_strides) and feature_group_count == 1
              and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
              and all(rhs.shape[a] % 2 == 1 for a in spatial) and dn.lhs_spec == dn.out_spec)
    if not simple:
        return conv(lhs, rhs)

    @jax.custom_vjp
    def f(x, k):
        return conv(x, k)

    def fwd(x, k):
        return conv(x, k), (x, k)

    def bwd(res, g):
        x, k = res
        k_t = jnp.swapaxes(jnp.flip(k, spatial), dn.rhs_spec[0], dn.rhs_spec[1])
        gx = lax.conv_general_dilated(g, k_t, window_strides, padding, None, None, dn, precision=precision)
        return gx, jax.vjp(lambda k: conv(x, k), k)[1](g)[0]

    f.defvjp(fwd, bwd)
    return f(lhs, rhs)


class ConvNet(nn.Module):
    """A small MNIST conv net (the paper does not give its architecture): conv5x5-16, pool, conv5x5-32,
    pool, dense-128 (the last feature layer, used for unit analysis), dense-10. ReLU throughout.
    Sized for CPU: one epoch over 60k images takes ~30 s on 2 cores (conv 32/64 took ~70 s)."""

    num_classes: int = NUM_CLASSES

    def setup(self):
        self.conv_0 = nn.Conv(16, (5, 5), padding="SAME", conv_general_dilated=conv_with_fast_input_grad)
        self.conv_1 = nn.Conv(32, (5, 5), padding="SAME", conv_general_dilated=conv_with_fast_input_grad)
        self.dense_0 = nn.Dense(128)
        self.dense_1 = nn.Dense(self.num_classes)

    def activations(self, x):
        h = x.reshape(x.shape[0], 28, 28, 1)
        h = nn.max_pool(nn.relu(self.conv_0(h)), (2, 2), (2, 2))
        h1 = nn.max_pool(nn.relu(self.conv_1(h)), (2, 2), (2, 2)).reshape(x.shape[0], -1)
        h2 = nn.relu(self.dense_0(h1))
        return (h1, h2, self.dense_1(h2))

    def from_layer(self, h, k: int):
        if k == 0:
            return self(h)
        if k == 1:
            h = nn.relu(self.dense_0(h))
        return self.dense_1(h)

    def __call__(self, x):
        return self.activations(x)[-1]

    def layer_bounds(self, params, *, key, iters: int) -> list[dict]:
        p = params["params"]
        rows = []
        for name, size in (("conv_0", 28), ("conv_1", 14)):
            rows += [spectral.conv_row(name, p[name]["kernel"], size, key, iters), spectral.activation_row("relu"),
                     spectral.activation_row("maxpool", spectral.maxpool_bound(2, 2))]
        return rows + [spectral.dense_row("dense_0", p["dense_0"]["kernel"]), spectral.activation_row("relu"),
                       spectral.dense_row("dense_1", p["dense_1"]["kernel"])]

    def pool_spaces(self) -> tuple[int, ...]:
        """None: per-layer pools are implemented for the MLPs (ReLU features are unbounded)."""
        return ()


class SparseAutoencoder(nn.Module):
    """Sigmoid autoencoder whose encoder has the same parameter path (``dense_0``) as the MLP it feeds."""

    hidden: int = 400

    @nn.compact
    def __call__(self, x):
        code = nn.sigmoid(nn.Dense(self.hidden, name="dense_0")(x))
        return code, nn.sigmoid(nn.Dense(NUM_PIXELS, name="decoder")(code))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the module, per-layer weight decay λ_k (penalty λ_k·Σw²/units_k), frozen layers,
    and the autoencoder to pre-train (AE400-10 only)."""

    name: str
    module: nn.Module
    weight_decay: dict[str, float]
    frozen: tuple[str, ...] = ()
    autoencoder: SparseAutoencoder | None = None
    epochs: int = 30  # our default training length in passes over the 60,000 training images (the paper gives
    # none); a run on half of them takes twice as many passes (TrainConfig.for_model)
    learning_rate: float = 1e-2  # our default peak Adam rate (results/training_study.md)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static argument of jitted steps
class Model:
    """Pure functions of a registry model. ``apply(params, x) -> logits``."""

    spec: ModelSpec
    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]
    activations: Callable[[dict, jax.Array], tuple]
    from_layer: Callable[[dict, jax.Array, int], jax.Array]

    @property
    def name(self) -> str:
        return self.spec.name


def _fc10(label: str) -> ModelSpec:
    return ModelSpec(f"FC10({label})", MLP(()), {"dense_0": float(label)}, epochs=30)


def _fc(h1: int, h2: int, epochs: int) -> ModelSpec:
    return ModelSpec(f"FC{h1}-{h2}-10", MLP((h1, h2)),
                     {"dense_0": 1e-5, "dense_1": 1e-5, "dense_2": 1e-6}, epochs=epochs)


REGISTRY: dict[str, ModelSpec] = {s.name: s for s in [
    _fc10("1e-4"), _fc10("1e-2"), _fc10("1"),
    # epochs by the training study's seed means: FC100-100-10 1.63% at 100 against 1.82% at 60 (fc4, three
    # seeds); FC200-200-10 1.57% at 60 against 1.63% at 100 (fc5 + fc7, five seeds); FC123-456-10 as FC100-100-10
    _fc(100, 100, 100), _fc(200, 200, 60), _fc(123, 456, 100),
    ModelSpec("AE400-10", MLP((400,)), {"dense_1": 1e-6}, frozen=("dense_0",),
              autoencoder=SparseAutoencoder(400), epochs=60),
    ModelSpec("ConvNet", ConvNet(), {"dense_0": 1e-5, "dense_1": 1e-5}, epochs=4, learning_rate=1e-3),
]}
# Training recipes on other datasets: a registry model's ``epochs`` / ``learning_rate`` where the rule of
# ``experiments.training_study --dataset NAME`` (results/NAME/training_study.md) chose values other than
# the registry's, which MNIST's training study chose; a model a dataset does not list keeps the registry's.
# Fashion-MNIST (2026-12-07, three seeds, validation error): FC100-100-10 11.23% at 30 epochs against 11.92%
# at 100, FC200-200-10 10.78% at 30 against 11.45% at 60; the FC10s and AE400-10 keep the registry's.
DATASET_RECIPES: dict[str, dict[str, dict]] = {
    "mnist": {},
    "fashion_mnist": {"FC100-100-10": {"epochs": 30}, "FC200-200-10": {"epochs": 30}},
}
_ALIASES = {"FC10(0.0001)": "FC10(1e-4)", "FC10(0.01)": "FC10(1e-2)", "FC10(1.0)": "FC10(1)"}


def names() -> list[str]:
    return list(REGISTRY)


def spec(name: str) -> ModelSpec:
    """The registry entry of ``name`` (or an alias such as ``FC10(0.01)``); KeyError names the known ones."""
    key = _ALIASES.get(name, name)
    if key not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def recipe(s: ModelSpec, dataset: str = "mnist") -> ModelSpec:
    """``s`` with ``dataset``'s training defaults (``DATASET_RECIPES``): what a run on that dataset uses."""
    changes = DATASET_RECIPES.get(dataset, {}).get(s.name, {})
    return dataclasses.replace(s, **changes) if changes else s


def canonical_name(name: str) -> str:
    """The registry's spelling of ``name``."""
    return spec(name).name


def build(name_or_spec: str | ModelSpec) -> Model:
    """Registry lookup -> ``Model`` of pure functions. ``init(key)`` gives the parameter pytree.

    A registry name always gives the same ``Model`` object, so its functions keep their identity and
    whatever is jitted over them (``jax.jit`` caches by function) compiles once per process.
    """
    if isinstance(name_or_spec, str):
        return _build_registered(spec(name_or_spec).name)
    return _build(name_or_spec)


@functools.lru_cache(maxsize=None)
def _build_registered(name: str) -> Model:
    return _build(REGISTRY[name])


def _build(s: ModelSpec) -> Model:
    m = s.module
    return Model(
        spec=s,
        init=lambda key: m.init(key, jnp.zeros((1, NUM_PIXELS), jnp.float32)),
        apply=m.apply,
        activations=lambda params, x: m.apply(params, x, method=type(m).activations),
        from_layer=lambda params, h, k: m.apply(params, h, k, method=type(m).from_layer),
    )
