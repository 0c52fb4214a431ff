import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intriguing_jax import models


@pytest.mark.parametrize("name", models.names())
def test_shapes_and_layers(name, key):
    model = models.build(name)
    params = model.init(key)
    x = jax.random.uniform(key, (3, 784))
    logits = model.apply(params, x)
    assert logits.shape == (3, 10)
    acts = model.activations(params, x)
    np.testing.assert_allclose(acts[-1], logits, rtol=1e-6)
    for k in range(len(acts)):
        h = x if k == 0 else acts[k - 1]
        np.testing.assert_allclose(model.from_layer(params, h, k), logits, rtol=1e-5, atol=1e-5)


def test_paper_names_and_layers():
    assert {"FC10(1e-4)", "FC10(1e-2)", "FC10(1)", "FC100-100-10", "FC200-200-10", "FC123-456-10",
            "AE400-10", "ConvNet"} <= set(models.names())
    assert models.spec("FC10(0.01)").name == "FC10(1e-2)"
    assert models.spec("FC10(1)").weight_decay == {"dense_0": 1.0}
    params = models.build("FC123-456-10").init(jax.random.key(0))
    assert params["params"]["dense_1"]["kernel"].shape == (123, 456)
    with pytest.raises(KeyError, match="unknown model"):
        models.spec("FC7")


def test_sigmoid_hidden_units(key):
    model = models.build("FC100-100-10")
    acts = model.activations(model.init(key), jnp.ones((2, 784)))
    assert acts[0].shape == (2, 100) and float(acts[0].min()) > 0 and float(acts[0].max()) < 1


def test_public_api_exports():
    import intriguing_jax
    for name in intriguing_jax.__all__:
        assert hasattr(intriguing_jax, name), name


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])  # (2, 2): falls back to lax's own gradient
def test_conv_with_fast_input_grad_equals_lax(strides):
    from jax import lax

    from intriguing_jax.models import conv_with_fast_input_grad
    x = jax.random.normal(jax.random.key(0), (3, 9, 9, 4))
    k = jax.random.normal(jax.random.key(1), (5, 5, 4, 6))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, "SAME", dimension_numbers=dn)))

    for a, b in zip(jax.grad(loss(conv_with_fast_input_grad), (0, 1))(x, k),
                    jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, k)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
