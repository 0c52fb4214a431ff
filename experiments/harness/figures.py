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


def image_rows(path, rows, *, per_row: int = 8, title: str = "") -> None:
    """One captioned row of ``per_row`` images per ``(images, caption)`` in ``rows`` (Fig. 7-like)."""
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.0 * per_row, 1.3 * len(rows) + 0.2),
                             squeeze=False)
    for ax_row, (images, caption) in zip(axes, rows):
        for j, ax in enumerate(ax_row):
            if j < len(images):
                ax.imshow(np.asarray(images[j]).reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        ax_row[0].text(0, 1.06, caption, transform=ax_row[0].transAxes, ha="left", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - (0.6 if title else 0.25) / height,
                        wspace=0.06, hspace=0.35)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def histograms(path, samples: dict, *, xlabel: str, log: bool = False, bins: int = 40) -> None:
    """Overlaid step histograms, one per named sample (log-spaced bins if ``log``)."""
    values = [np.asarray(v, np.float64) for v in samples.values() if len(v)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if values:
        lo, hi = min(v.min() for v in values), max(v.max() for v in values)
        edges = np.geomspace(lo, hi * 1.0001, bins) if log and lo > 0 else np.linspace(lo, hi * 1.0001, bins)
        for name, v in samples.items():
            if len(v):
                ax.hist(np.asarray(v), bins=edges, histtype="step", label=name)
        if log and lo > 0:
            ax.set_xscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(path, histories: dict, *, keys: tuple[str, ...], xlabel: str = "epoch") -> None:
    """One panel per key; one line per named history (a list of dicts with ``epoch`` and the keys)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            pts = [(h["epoch"], h[key]) for h in hist if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 20 else None, label=name, linewidth=1)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(key.replace("_", " "), fontsize=8)
        if key.endswith("error"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def filters(path, kernel, *, num: int = 100, per_row: int = 10, title: str = "") -> None:
    """The first ``num`` columns of a dense kernel ``[784, units]`` as 28×28 images, each scaled to its own
    range (an autoencoder's filters: pen strokes when trained well, noise when not)."""
    k = np.asarray(kernel)[:, :num].T
    rows = -(-len(k) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(0.8 * per_row, 0.8 * rows + 0.3), squeeze=False)
    for ax, w in zip(axes.ravel(), k):
        ax.imshow(w.reshape(28, 28), cmap="gray", vmin=w.min(), vmax=w.max())
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / fig.get_figheight(), wspace=0.05,
                        hspace=0.05)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
