"""JAX's persistent compilation cache, switched on in one call, with a count of what it saved.

XLA compiles the attack once per program shape (several seconds on a CPU, ``benchmarks/RESULTS.md``). With
the cache on, a later process that runs the same program loads the compiled executable from disk instead:
tracing and lowering still run, XLA compilation does not.

    >>> from intriguing_jax import compile_cache
    >>> compile_cache.enable()            # doctest: +SKIP  ($INTRIGUING_JAX_COMPILE_CACHE, else ~/.cache/...)

References: https://docs.jax.dev/en/latest/persistent_compilation_cache.html
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib

import jax

ENV = "INTRIGUING_JAX_COMPILE_CACHE"
_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_counts: collections.Counter = collections.Counter()
_listening = False


def default_dir(workdir: str | os.PathLike | None = None) -> pathlib.Path:
    """``$INTRIGUING_JAX_COMPILE_CACHE`` if set, else ``<workdir>/jax_cache`` when a workdir is given,
    else ``~/.cache/intriguing_jax/jax_cache``."""
    if os.environ.get(ENV):
        return pathlib.Path(os.environ[ENV]).expanduser()
    if workdir is not None:
        return pathlib.Path(workdir) / "jax_cache"
    return pathlib.Path("~/.cache/intriguing_jax/jax_cache").expanduser()


def enable(path: str | os.PathLike | None = None, *, min_compile_time_secs: float = 0.5) -> pathlib.Path:
    """Turns on JAX's persistent compilation cache for this process.

    Args:
      path: cache directory (created if missing); None: ``default_dir()``.
      min_compile_time_secs: programs that compile faster than this are not stored.

    Returns:
      The cache directory in use.
    """
    global _listening
    path = pathlib.Path(path) if path is not None else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    return path


def _on_event(event: str, **kwargs) -> None:
    if event in _EVENTS:
        _counts[_EVENTS[event]] += 1


def stats() -> dict:
    """Programs served from the cache (``hits``) and compiled (``misses``) since ``enable``."""
    return {"hits": _counts["hits"], "misses": _counts["misses"]}


def log_stats(logger: logging.Logger | None = None) -> None:
    """Logs how many programs this process loaded from the cache and how many it compiled."""
    s = stats()
    (logger or logging.getLogger(__name__)).info("compilation cache: %d program(s) loaded, %d compiled",
                                                 s["hits"], s["misses"])
