"""What made a result: command, seed, versions, machine and wall time, recorded beside every result."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
from importlib import metadata

from intriguing_jax.checkpoint import atomic_write_bytes

_PACKAGES = ("intriguing_jax", "jax", "jaxlib", "flax", "optax", "jaxopt", "numpy")


def config_hash(cfg) -> str:
    """A short stable hash of a (dataclass) config, for cache keys (Python's hash() is salted)."""
    blob = json.dumps(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


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


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
