"""intriguing_jax: Szegedy et al., "Intriguing properties of neural networks" (ICLR 2014) in JAX/Flax."""

__version__ = "0.1.0"
