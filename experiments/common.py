"""Shared CLI plumbing for the experiment scripts: logging, data, progress bars."""

from __future__ import annotations

import argparse
import logging

from tqdm.auto import tqdm

from intriguing_jax import data


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default="workdir", help="checkpoints and caches (never committed)")
    p.add_argument("--results", default="results", help="where JSON/Markdown/PNG results go")
    p.add_argument("--data-source", default="auto", choices=("auto",) + data.SOURCES,
                   help="MNIST source (auto tries cache, IDX dir, TFDS, then the offline PyPI wheel)")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args) -> data.MNIST:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return data.load_mnist(args.data_source)


def epoch_bar(total: int, desc: str):
    """A tqdm bar advanced once per epoch, showing the epoch's mean loss; returns (bar, callback)."""
    bar = tqdm(total=total, desc=desc, unit="epoch", leave=False)

    def on_epoch(epoch: int, loss: float):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    return bar, on_epoch
