"""What is written to disk and read back: atomic writes, checksummed array files, chunk caches, cache
keys and file-safe names.

Every file is written to a temp file in its directory and renamed into place (``os.replace``), so a
reader never sees half a file and an interrupted run leaves either the old file or the new one. Files get
the permissions the process umask gives (``0o666 & ~umask``), not the temp file's 0600, so that hosts
running as different users can share a sweep's output directory. Array files carry a SHA-256 of their
arrays; a missing, truncated or corrupt file reads back as ``None`` and is recomputed by its caller.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import contextlib
import tempfile
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T", bound=tuple)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory and ``os.replace``: readers
    never see half a file. The file gets the permissions the umask gives a new file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` through ``atomic_write_bytes``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block: processes that
    share a workdir (``experiments.reproduce --jobs``) compute a cached file once, the second waiting for the
    first and then reading its result. POSIX ``flock``; where the platform has none, no lock is taken."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per workdir
        yield
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def claimed(path: str | os.PathLike) -> Iterator[bool]:
    """Tries to take the exclusive advisory lock on ``path`` (created if missing) without waiting: yields
    True, holding it for the ``with`` block, or False where another process holds it (then nothing is held).
    Processes sharing a workdir split a list of cached steps this way: each computes the steps it claims
    and skips those another is computing. POSIX ``flock``; where the platform has none, always True."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per workdir
        yield True
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_json(path, obj) -> None:
    """``obj`` as indented JSON (one trailing newline), written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_text(path, text: str) -> None:
    """``text`` (UTF-8), written atomically."""
    atomic_write_bytes(path, text.encode())


def checksum(arrays: dict) -> str:
    """SHA-256 over named arrays (names, dtypes, shapes and bytes), independent of their order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def save_arrays(path, record: tuple) -> None:
    """A NamedTuple of arrays (e.g. an ``AttackResult``) as an atomically written ``.npz`` carrying the
    checksum of its arrays."""
    arrays = {f: np.asarray(a) for f, a in record._asdict().items()}
    atomic_write_npz(path, checksum=np.asarray(checksum(arrays)), **arrays)


def load_arrays(path, kind: type[T], n: int) -> T | None:
    """A ``kind`` (NamedTuple of arrays, rows first) written by ``save_arrays``; None if missing,
    unreadable, corrupt (checksum) or not of ``n`` rows, so that the caller recomputes it."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            arrays = {f: z[f] for f in kind._fields}
            stored = str(z["checksum"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed
        log.warning("unreadable result %s (%s); recomputing", path.name, e)
        return None
    if stored != checksum(arrays) or len(arrays[kind._fields[0]]) != n:
        log.warning("corrupt result %s (checksum or size mismatch); recomputing", path.name)
        return None
    return kind(**arrays)


def pad_rows(a, size: int):
    """``a`` (numpy or JAX, rows first) extended to ``size`` rows by repeating its last row, so that a
    ragged last batch has the compiled shape; callers drop the extra rows from the result."""
    import jax
    import jax.numpy as jnp
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.concatenate([a, xp.repeat(a[-1:], size - len(a), axis=0)])


def concat(parts: Sequence[T]) -> T:
    """Row-wise concatenation of NamedTuples of arrays."""
    return type(parts[0])(*(np.concatenate(f) for f in zip(*parts)))


def cached_chunks(compute: Callable[[int, int], T], n: int, chunk_size: int, kind: type[T], cache_dir=None,
                  progress: Callable[[int], None] | None = None) -> T:
    """``compute(start, stop)`` over ``[0, n)`` in chunks of ``chunk_size`` rows, concatenated.

    With ``cache_dir`` each finished chunk is written atomically as ``chunk_<i>.npz`` and reused on the
    next call (an interrupted run loses at most the chunk in flight). The cache is keyed by the caller:
    one directory per computation (``cache_key``).
    """
    parts = []
    for i, start in enumerate(range(0, n, chunk_size)):
        stop = min(start + chunk_size, n)
        path = pathlib.Path(cache_dir) / f"chunk_{i:05d}.npz" if cache_dir is not None else None
        part = load_arrays(path, kind, stop - start) if path is not None else None
        if part is None:
            part = kind(*(np.asarray(a) for a in compute(start, stop)))
            if path is not None:
                save_arrays(path, part)
        parts.append(part)
        if progress is not None:
            progress(stop - start)
    return concat(parts)


def cache_key(obj, length: int = 8) -> str:
    """A short stable hash of a (dataclass) config or JSON-able object, for cache keys (Python's hash()
    is salted per process). A dataclass's fields named in its ``NOT_IN_CACHE_KEY`` (settings that never
    change a result) are left out, also in nested dataclasses."""
    blob = json.dumps(_key_view(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _key_view(obj):
    """``obj`` as ``dataclasses.asdict`` would give it, less each dataclass's ``NOT_IN_CACHE_KEY`` fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        skip = getattr(obj, "NOT_IN_CACHE_KEY", ())
        return {f.name: _key_view(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip}
    if isinstance(obj, (list, tuple)):
        return [_key_view(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _key_view(v) for k, v in obj.items()}
    return obj


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
