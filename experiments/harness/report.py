"""Markdown rendering of result tables (ours beside the paper's), and publishing a result as JSON + Markdown."""

from __future__ import annotations

import pathlib

from intriguing_jax import storage


def pct(x: float | None, digits: int = 2) -> str:
    """A rate as a percentage (``–`` for None)."""
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals (``–`` for None)."""
    return "–" if x is None else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance_line(p: dict) -> str:
    """The "Made by ..." line of a result's provenance block (command, seed, wall time, machine, versions)."""
    v = p["versions"]
    return (f"Made by `{p['command']}` (seed {p['seed']}, {p['wall_time_s']:.0f} s wall, {p['machine']}; "
            f"jax {v['jax']}, flax {v['flax']}, optax {v['optax']}; {p['date']}).")


def publish(out_dir, json_name: str, md_name: str, result: dict, render) -> dict:
    """Writes a result as JSON (machines) and ``render(result)`` as Markdown (people) under ``out_dir``;
    returns ``result``."""
    storage.write_json(pathlib.Path(out_dir) / json_name, result)
    storage.write_text(pathlib.Path(out_dir) / md_name, render(result))
    return result
