"""PNG figures for people (matplotlib, headless)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def adversarial_grid(path, images, adversarial, labels, predictions, *, magnify: float = 10.0,
                     title: str = "", max_rows: int = 8) -> None:
    """Fig. 5-like grid: original | perturbation × ``magnify`` (grey = 0) | adversarial, one row each."""
    n = min(len(images), max_rows)
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.45 * n + 0.4), squeeze=False)
    for i in range(n):
        x, a = np.asarray(images[i]).reshape(28, 28), np.asarray(adversarial[i]).reshape(28, 28)
        panels = [(x, f"label {labels[i]}"), (np.clip(0.5 + magnify * (a - x), 0, 1), f"r ×{magnify:g}"),
                  (a, f"→ {predictions[i]}")]
        for ax, (img, text) in zip(axes[i], panels):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(text, fontsize=7, pad=2)
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
