"""The configurations ``experiments/training_study.py`` trains: each study a dict of
``label -> (registry model, training split, TrainConfig)``, and the per-row λ scan for FC10."""

from __future__ import annotations

from intriguing_jax import train

# The recipe before this study (Adam 1e-3, λ·Σw²/k, Adam-trained autoencoder with ρ 0.05), which the
# first studies vary; "fc3" checks the two best rates with the chosen convention on FC200 and P1. Chosen
# (train.TrainConfig / ModelSpec defaults): half_sum, Adam 1e-2 for the MLPs, the L-BFGS autoencoder.
BEFORE = dict(learning_rate=1e-3, decay="per_unit", ae_solver="adam", ae_sparsity=0.05)


def T(**changes) -> train.TrainConfig:
    return train.TrainConfig(**{**BEFORE, **changes})


def _fc(model, split, recipes) -> dict:
    return {f"{model}{' on P1' if split == 'p1' else ''} / {name}": (model, split, cfg) for name, cfg in recipes.items()}


STUDIES = {
    "fc10": {f"{m} / {d}": (m, "train", T(decay=d)) for d in train.DECAY_CONVENTIONS
             for m in ("FC10(1e-4)", "FC10(1e-2)", "FC10(1)")},
    "fc": _fc("FC100-100-10", "train", {
        "adam 1e-3, per_unit": T(), "adam 1e-3, sum": T(decay="sum"), "adam 1e-3, half_sum": T(decay="half_sum"),
        "momentum 0.1, per_unit": T(optimizer="momentum", learning_rate=0.1),
        "momentum 0.1, half_sum": T(optimizer="momentum", learning_rate=0.1, decay="half_sum"),
        "adam 3e-3, half_sum": T(learning_rate=3e-3, decay="half_sum")}),
    "fc2": _fc("FC100-100-10", "train", {
        "adam 3e-3, sum": T(learning_rate=3e-3, decay="sum"), "adam 1e-2, half_sum": T(learning_rate=1e-2, decay="half_sum"),
        "adam 3e-3, half_sum, batch 64": T(learning_rate=3e-3, decay="half_sum", batch_size=64),
        "adam 3e-3, half_sum, 120 epochs": T(learning_rate=3e-3, decay="half_sum", epochs=120)}),
    "fc3": {label: run for m, split in (("FC200-200-10", "train"), ("FC100-100-10", "p1")) for label, run in _fc(
        m, split, {"adam 3e-3, half_sum, L-BFGS AE": train.TrainConfig(learning_rate=3e-3),
                   "adam 1e-2, half_sum, L-BFGS AE": train.TrainConfig(learning_rate=1e-2)}).items()},
    "ae": _fc("AE400-10", "train", {
        "adam AE (before)": T(),
        "L-BFGS AE, rho 0.1, half_sum 3e-3": T(ae_solver="lbfgs", ae_sparsity=0.1, decay="half_sum")}),
}


# per-row λ scan for FC10 under one convention: what λ would each row need to meet the paper's train error
LAMBDA_SCAN = {"FC10(1)": (0.5, 0.7, 0.85), "FC10(1e-2)": (0.007, 0.015)}
