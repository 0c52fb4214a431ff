"""intriguing_jax: Szegedy et al., "Intriguing properties of neural networks" (ICLR 2014) in JAX/Flax."""

__version__ = "0.1.0"

from intriguing_jax.attacks import (  # noqa: E402
    AttackConfig,
    AttackResult,
    distortion,
    lbfgs_attack,
    lbfgs_attack_untargeted,
)
from intriguing_jax import compile_cache, lbfgsb, storage  # noqa: E402
from intriguing_jax.noise import gaussian_noise, matched_noise  # noqa: E402
from intriguing_jax.data import load_mnist  # noqa: E402
from intriguing_jax.models import build  # noqa: E402

__all__ = ["AttackConfig", "AttackResult", "build", "compile_cache", "distortion", "gaussian_noise",
           "lbfgs_attack", "lbfgs_attack_untargeted", "lbfgsb", "load_mnist", "matched_noise", "storage",
           "__version__"]
