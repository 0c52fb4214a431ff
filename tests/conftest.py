import jax
import numpy as np
import pytest

from intriguing_jax import data


@pytest.fixture
def key():
    return jax.random.key(0)


def synthetic_mnist(n_train=600, n_test=200, seed=0) -> dict:
    """uint8 arrays shaped like MNIST: class-dependent blobs, so tiny models can learn them."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, size=(10, 784))

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.clip(protos[y] * 0.7 + rng.uniform(0, 76, size=(n, 784)), 0, 255).astype(np.uint8)
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


@pytest.fixture
def tiny_mnist() -> data.MNIST:
    return data._to_mnist(synthetic_mnist(), "synthetic")
