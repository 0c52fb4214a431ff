"""PNG figures for people (matplotlib, headless)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def adversarial_grid(path, images, adversarial, labels, predictions, *, magnify: float = 10.0,
                     title: str = "", max_rows: int = 8) -> None:
    """Fig. 5-like grid: original | perturbation × ``magnify`` (grey = 0) | adversarial, one row each. The
    perturbation's title gives its ‖r‖₂, or says r = 0 (a flat grey panel: the original is already in the
    class shown)."""
    n = min(len(images), max_rows)
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.45 * n + 0.4), squeeze=False)
    for i in range(n):
        x, a = np.asarray(images[i]).reshape(28, 28), np.asarray(adversarial[i]).reshape(28, 28)
        panels = [(x, f"label {labels[i]}"), (np.clip(0.5 + magnify * (a - x), 0, 1), perturbation_caption(x, a, magnify, predictions[i])),
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


def perturbation_caption(image, adversarial, magnify: float, prediction) -> str:
    """The title of a perturbation panel: its magnification and ‖r‖₂, or (r = 0, a flat grey panel) the
    class the model already gives the original."""
    norm = float(np.linalg.norm(np.asarray(adversarial, np.float64) - np.asarray(image, np.float64)))
    return f"r ×{magnify:g}, ‖r‖ {norm:.2f}" if norm > 0 else f"r = 0: x itself → {prediction}"


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


def _save(fig, path) -> None:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def seed_bands(path, runs: dict, *, panels: dict[str, str], xlabel: str = "epoch", title: str = "") -> None:
    """One panel per history key (``panels``: key -> axis label); per configuration (``runs``: name -> its
    seeds' runs, each with ``history``, a list of dicts with ``epoch``), the mean over seeds as a line
    and the seeds' range (min–max) as a band; a configuration measured at one epoch only (a model trained
    without the per-epoch evaluation) as a dashed horizontal line at the seeds' mean with their range
    shaded. Colour and marker distinguish
    configurations; the legend sits below the panels. The y-axis fits the values after the first 10% of
    the epochs (the first epochs' transients would squash the range that matters)."""
    colours = plt.get_cmap("tab10").colors
    markers = "osD^v<>ph*"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    handles = {}
    for ax, (key, label) in zip(axes[0], panels.items()):
        shown = []
        for i, (name, rs) in enumerate(runs.items()):
            style = dict(color=colours[i % 10], marker=markers[i % len(markers)], markersize=4, linewidth=1.3)
            series = [{h["epoch"]: h[key] for h in r["history"] if h.get(key) is not None} for r in rs]
            epochs = sorted(set.intersection(*(set(s_) for s_ in series))) if series else []
            if len(epochs) == 1:
                v = np.array([s_[epochs[0]] for s_ in series])
                line = ax.axhline(v.mean(), linestyle="--", color=style["color"], linewidth=1.3)
                ax.axhspan(v.min(), v.max(), color=style["color"], alpha=0.12, linewidth=0)
                shown += [v.min(), v.max()]
            elif epochs:
                v = np.array([[s_[e] for e in epochs] for s_ in series])
                (line,) = ax.plot(epochs, v.mean(0), markevery=max(1, len(epochs) // 8), **style)
                ax.fill_between(epochs, v.min(0), v.max(0), color=style["color"], alpha=0.18, linewidth=0)
                late = np.asarray(epochs) > 0.1 * max(epochs)
                shown += [v[:, late].min(), v[:, late].max()] if late.any() else [v.min(), v.max()]
            else:
                continue
            handles.setdefault(name, line)
        if shown:
            lo, hi = min(shown), max(shown)
            ax.set_ylim(lo - 0.08 * (hi - lo + 1e-12), hi + 0.08 * (hi - lo + 1e-12))
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, len(handles)), fontsize=8, frameon=False)
    _save(fig, path)


def ratio_ranges(path, ratios: dict[tuple[str, str], np.ndarray], *, xlabel: str, reference: float = 1.0,
                 title: str = "") -> None:
    """Per (group, method) — e.g. (model, bound) — the distribution of a positive ratio on a log axis: the
    median as a marker, the 10–90% range as a thick bar, the full range as a thin line; one row each,
    colour by group and marker by method, a vertical line at ``reference``."""
    groups = list(dict.fromkeys(g for g, _ in ratios))
    methods = list(dict.fromkeys(m for _, m in ratios))
    colours = {g: plt.get_cmap("tab10").colors[i % 10] for i, g in enumerate(groups)}
    markers = {m: "os^Dv"[i % 5] for i, m in enumerate(methods)}
    rows = [(g, m) for g in groups for m in methods if (g, m) in ratios]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    for y, (g, m) in enumerate(rows):
        v = np.asarray(ratios[(g, m)], np.float64)
        v = v[np.isfinite(v) & (v > 0)]
        if not len(v):
            continue
        lo, p10, med, p90, hi = np.quantile(v, [0, 0.1, 0.5, 0.9, 1])
        ax.plot([lo, hi], [y, y], color=colours[g], linewidth=0.8)
        ax.plot([p10, p90], [y, y], color=colours[g], linewidth=4, alpha=0.5, solid_capstyle="butt")
        ax.plot([med], [y], marker=markers[m], color=colours[g], markersize=7, markeredgecolor="black",
                markeredgewidth=0.5, linestyle="none")
    ax.axvline(reference, color="grey", linewidth=1, linestyle=":")
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [f"{g}, {m}" for g, m in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3, which="both")
    legend = [plt.Line2D([], [], marker=markers[m], color="grey", linestyle="none", label=f"{m} (median)") for m in methods]
    legend.append(plt.Line2D([], [], color="grey", linewidth=4, alpha=0.5, label="10–90% of images"))
    ax.legend(handles=legend, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(legend), frameon=False)
    if title:
        ax.set_title(title, fontsize=9, pad=24)
    fig.tight_layout()
    _save(fig, path)


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
