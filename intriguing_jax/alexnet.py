"""An AlexNet-shaped Flax model with the layer shapes and strides of the paper's Table 5, for spectral
analysis. Its weights are random unless an ``.npz`` of real ones is loaded (the paper's 2013 weights are
not available: compare trends, not numbers).

Input 227×227×3. conv1 11×11×96 stride 4 (VALID) → 55, max-pool 3/2 → 27; conv2 5×5×256 (SAME) → pool
→ 13; conv3 3×3×384, conv4 3×3×384, conv5 3×3×256 (SAME) → pool → 6×6×256 = 9216; FC 4096, 4096, 1000.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from intriguing_jax import spectral


class ConvLayer(NamedTuple):
    name: str
    kernel: tuple[int, int, int, int]  # kh, kw, C, D
    stride: int
    padding: str
    input_hw: int


# Table 5's layers: (name, kernel HWIO, stride, padding, input size)
CONVS = (ConvLayer("conv1", (11, 11, 3, 96), 4, "VALID", 227), ConvLayer("conv2", (5, 5, 96, 256), 1, "SAME", 27),
         ConvLayer("conv3", (3, 3, 256, 384), 1, "SAME", 13), ConvLayer("conv4", (3, 3, 384, 384), 1, "SAME", 13),
         ConvLayer("conv5", (3, 3, 384, 256), 1, "SAME", 13))
DENSES = (("fc1", 9216, 4096), ("fc2", 4096, 4096), ("fc3", 4096, 1000))
POOL = (3, 2)  # overlapping max-pooling, window 3, stride 2


class AlexNet(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):  # x: [N, 227, 227, 3]
        for i, layer in enumerate(CONVS):
            x = nn.relu(nn.Conv(layer.kernel[3], layer.kernel[:2], layer.stride, padding=layer.padding,
                                name=layer.name)(x))
            if i in (0, 1, 4):
                x = nn.max_pool(x, (POOL[0], POOL[0]), (POOL[1], POOL[1]))
        x = x.reshape(x.shape[0], -1)
        for j, (name, _, width) in enumerate(DENSES):
            x = nn.Dense(width if j < 2 else self.num_classes, name=name)(x)
            if j < 2:
                x = nn.relu(x)
        return x


def init(key: jax.Array) -> dict:
    """Random (Flax default) weights, shapes only: initialised abstractly, then sampled layer by layer."""
    return AlexNet().init(key, jnp.zeros((1, 227, 227, 3), jnp.float32))


def load_npz(path) -> dict:
    """Weights from an ``.npz`` with keys ``conv1/kernel``, ``conv1/bias``, …, ``fc3/bias`` (HWIO and
    [in, out] layouts). Missing keys, extra keys or wrong shapes raise ``ValueError`` naming them."""
    template = traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(0))["params"], sep="/")
    try:
        with np.load(pathlib.Path(path)) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read AlexNet weights from {path}: {e}") from e
    missing, extra = sorted(set(template) - set(arrays)), sorted(set(arrays) - set(template))
    if missing or extra:
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {extra}")
    for k, t in template.items():
        if arrays[k].shape != t.shape:
            raise ValueError(f"{path}: {k} has shape {arrays[k].shape}, expected {t.shape}")
    return {"params": traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()},
                                                   sep="/")}


def bounds_table(params, key: jax.Array, iters: int = 60) -> list[dict]:
    """Table 5: per layer, the upper Lipschitz bound (Fourier formula or largest singular value) beside
    the exact operator norm of the layer as applied (power iteration, ``iters`` steps)."""
    p = params["params"]
    rows = []
    for layer in CONVS:
        k = np.asarray(p[layer.name]["kernel"])
        fn = lambda x, k=k, s=layer.stride, pad=layer.padding: spectral.conv_apply(k, x, s, pad)  # noqa: E731
        shape = (1, layer.input_hw, layer.input_hw, layer.kernel[2])
        rows.append({"layer": layer.name, "size": "×".join(map(str, (layer.kernel[2],) + layer.kernel[:2]
                                                                 + (layer.kernel[3],))),
                     "stride": layer.stride, "padding": layer.padding,
                     "bound": spectral.conv_bound(k, (layer.input_hw,) * 2, layer.stride, layer.padding),
                     "power_iteration": spectral.operator_norm(fn, shape, key, iters)})
    for name, n_in, n_out in DENSES:
        b = spectral.dense_bound(p[name]["kernel"])
        rows.append({"layer": name, "size": f"{n_in}×{n_out}", "stride": None, "padding": None, "bound": b,
                     "power_iteration": b})
    return rows
