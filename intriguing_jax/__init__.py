"""intriguing_jax: Szegedy et al., "Intriguing properties of neural networks" (ICLR 2014) in JAX/Flax.

The entry points a user looks for first are here; every module is reachable as an attribute
(``intriguing_jax.units``, ``intriguing_jax.spectral``, ...). Modules with a leading underscore are
internal. The reproduction harness (the paper's values, verdict rules, report rendering, figures, run
caches) lives in ``experiments.harness``: importing the library loads none of it.
"""

__version__ = "0.1.0"

from intriguing_jax import (  # noqa: E402
    adversarial_training,
    attacks,
    bounds,
    compile_cache,
    data,
    exact,
    lbfgsb,
    models,
    noise,
    refine,
    robust_training,
    spectral,
    storage,
    sweep,
    train,
    transfer,
    units,
    zoo,
)
from intriguing_jax.attacks import (  # noqa: E402
    AttackConfig,
    AttackResult,
    attack_in_chunks,
    distortion,
    lbfgs_attack,
    lbfgs_attack_untargeted,
    random_wrong_targets,
)
from intriguing_jax.data import load_mnist  # noqa: E402
from intriguing_jax.models import build  # noqa: E402
from intriguing_jax.noise import gaussian_noise, matched_noise  # noqa: E402
from intriguing_jax.train import TrainConfig, fit, fit_population  # noqa: E402
from intriguing_jax.zoo import trained  # noqa: E402

__all__ = [
    # modules
    "adversarial_training", "attacks", "bounds", "compile_cache", "data", "exact", "lbfgsb", "models",
    "noise", "refine", "robust_training", "spectral", "storage", "sweep", "train", "transfer", "units", "zoo",
    # the attack
    "AttackConfig", "AttackResult", "attack_in_chunks", "distortion", "lbfgs_attack", "lbfgs_attack_untargeted",
    "random_wrong_targets",
    # data, models, training
    "TrainConfig", "build", "fit", "fit_population", "load_mnist", "trained",
    # the paper's controls
    "gaussian_noise", "matched_noise",
    "__version__",
]
