"""What made a result: command, seed, versions, machine and wall time, recorded beside every result."""

from __future__ import annotations

import datetime
import json
import pathlib
import os
import platform
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


def record(seed: int | None, wall_time_s: float, **extra) -> dict:
    """The provenance block stored in every result file."""
    argv0 = sys.argv[0]
    if argv0.endswith(".py") and os.path.abspath(argv0).startswith(os.getcwd()):
        argv0 = "-m " + os.path.relpath(argv0)[:-3].replace(os.sep, ".")  # run as python -m ...
    return {"command": " ".join(["python", argv0] + sys.argv[1:]), "seed": seed,
            "wall_time_s": round(wall_time_s, 2), "versions": versions(), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


# sections a recorded study command merges into a pipeline's result file: computed by that command, not
# by the pipeline (``experiments.advtrain_controls``)
MERGED_STUDIES = ("controls", "controls_provenance")


def recorded_minutes(paths) -> float:
    """The computation the result files ``paths`` record, in minutes: each pipeline's wall time, plus what its
    cached steps took when they were computed (models' ``train_wall_s``, adversarial-training runs'
    ``wall_s``; a study entry counts ``wall_s_mean`` once per seed), leaving out the sections study
    commands merged in (``MERGED_STUDIES``). 0 if nothing is recorded."""
    def walk(x) -> float:
        if isinstance(x, list):
            return sum(walk(v) for v in x)
        if not isinstance(x, dict):
            return 0.0
        own = sum(float(x[k]) for k in ("train_wall_s", "wall_s", "wall_time_s") if isinstance(x.get(k), (int, float)))
        if "wall_s_mean" in x and "test_errors" in x and x["wall_s_mean"] is not None:
            own += x["wall_s_mean"] * len(x["test_errors"])
        return own + sum(walk(v) for k, v in x.items() if k not in MERGED_STUDIES)
    return sum(walk(json.loads(pathlib.Path(p).read_text())) for p in paths if pathlib.Path(p).exists()) / 60
