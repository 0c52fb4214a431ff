"""What made an artifact: command, seed, code (git commit), versions, machine and wall time.

Recorded in every checkpoint the zoo writes and every result file the experiments write, so a file can be
tied to the code and the run that made it.
"""

from __future__ import annotations

import datetime
import functools
import os
import pathlib
import platform
import subprocess
import sys
from importlib import metadata

_PACKAGES = ("intriguing_jax", "jax", "jaxlib", "flax", "optax", "jaxopt", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def machine() -> str:
    import jax
    devs = jax.devices()
    return f"{platform.machine()} {os.cpu_count()} CPU cores; jax devices: {len(devs)}x {devs[0].device_kind}"


def now() -> str:
    """The current UTC time as ``record`` writes it; cached steps store it as ``computed_at``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@functools.cache
def code() -> dict:
    """The git state of the source tree this package was imported from: ``{"commit": sha or None,
    "dirty": True if tracked files outside ``results*/`` differ from the commit (None when not in a git
    checkout)}``. Results are outputs, not code: a run that rewrites them (or one beside it) stays clean. Read
    once per process: a result records the code it started with."""
    root = pathlib.Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results*")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def record(seed: int | None, wall_time_s: float, **extra) -> dict:
    """The provenance block stored in every result file and checkpoint: ``command``, ``seed``,
    ``wall_time_s``, ``code`` (git commit and whether the tree was dirty), ``versions``, ``machine``,
    ``date`` (UTC, when it was written), and ``extra``."""
    argv0 = sys.argv[0]
    if argv0.endswith(".py") and os.path.abspath(argv0).startswith(os.getcwd()):
        argv0 = "-m " + os.path.relpath(argv0)[:-3].replace(os.sep, ".")  # run as python -m ...
    return {"command": " ".join(["python", argv0] + sys.argv[1:]), "seed": seed,
            "wall_time_s": round(wall_time_s, 2), "code": code(), "versions": versions(), "machine": machine(),
            "date": now(), **extra}
