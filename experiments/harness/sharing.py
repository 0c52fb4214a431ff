"""Steps of a pipeline computed once by whichever process sharing the workdir reaches them first.

``reproduce --jobs`` starts a helper beside a long pipeline once no other pipeline is waiting for a core
(``reproduce.run_parallel``): a second process running the same pipeline on the same workdir, its own
results thrown away. Where a pipeline's steps are independent and cached (each adversarial-training
configuration, each control population), ``each`` lets the processes split them: a process computes the
steps no other process holds, skips those another is computing, then waits for those and reads what they
cached. Every process gets the same results, in the same order, as one process alone would; a step whose
process died is computed by the next one that reaches it.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Callable, TypeVar

from intriguing_jax import storage

log = logging.getLogger(__name__)
T = TypeVar("T")


def lock_path(workdir, phase: str, name: str) -> pathlib.Path:
    """The lock file of step ``name`` of ``phase`` (e.g. "advtrain study") under ``<workdir>/locks``."""
    return pathlib.Path(workdir) / "locks" / f"{storage.safe_name(phase)}__{storage.safe_name(name)}.lock"


def each(steps: dict[str, Callable[[], T]], workdir, phase: str) -> dict[str, T]:
    """Runs every step once across the processes sharing ``workdir``.

    Args:
      steps: name -> a call that computes the step, or reads it where it is cached (a second call after a
        first one finished must read, not recompute: e.g. ``harness.runs.runs``).
      workdir: the workdir the processes share (its ``locks/`` holds one lock per step).
      phase: names this list of steps among the pipeline's (the locks' names).

    Returns:
      name -> the step's result, in the order of ``steps``.
    """
    done, skipped = {}, []
    for name, step in steps.items():
        with storage.claimed(lock_path(workdir, phase, name)) as mine:
            if mine:
                done[name] = step()
            else:
                skipped.append(name)
    for name in skipped:  # another process is computing it: wait for it, then read what it cached
        log.info("%s: %s computed by another process; waiting for it", phase, name)
        with storage.exclusive(lock_path(workdir, phase, name)):
            done[name] = steps[name]()
    return {name: done[name] for name in steps}
