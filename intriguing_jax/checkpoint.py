"""Checkpoints: flax msgpack serialisation behind a checksummed header, written atomically.

File layout: ``MAGIC`` line, a sha256 hex line of the payload, then the msgpack payload
``{"meta": <json str>, "params": <state dict>}``. Loading verifies the checksum (corrupt or truncated
files) and the parameter tree against the model's own (mismatched checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import jax
import numpy as np
from flax import serialization

from intriguing_jax.storage import atomic_write_bytes

MAGIC = b"INTRIGUING_JAX_CHECKPOINT v1\n"


class CheckpointError(RuntimeError):
    """A checkpoint file is corrupt, truncated, or does not match the model it is loaded into."""


def save(path: str | os.PathLike, params, meta: dict | None = None) -> None:
    """Writes ``params`` (any pytree of arrays) and JSON-able ``meta`` atomically, with a checksum."""
    state = jax.tree.map(np.asarray, serialization.to_state_dict(params))
    payload = serialization.msgpack_serialize({"meta": json.dumps(meta or {}), "params": state})
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a checkpoint file's bytes: the identity a result records for the model it used."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def params_sha256(params) -> str:
    """The sha256 of a parameter pytree's serialised arrays (no metadata): the identity of weights that
    were never saved, or are compared across files whose metadata differ."""
    state = jax.tree.map(np.asarray, serialization.to_state_dict(params))
    return hashlib.sha256(serialization.msgpack_serialize(state)).hexdigest()


def load(path: str | os.PathLike, template) -> tuple[dict, dict]:
    """Loads ``(params, meta)``; ``template`` is a params pytree of the expected structure and shapes."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an intriguing_jax checkpoint (bad header); delete it")
    digest, _, payload = raw[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path} is corrupt or truncated (checksum mismatch); delete it and retrain")
    blob = serialization.msgpack_restore(payload)
    want = serialization.to_state_dict(template)
    got = blob["params"]
    want_shapes = jax.tree.map(lambda a: tuple(np.shape(a)), want)
    got_shapes = jax.tree.map(lambda a: tuple(np.shape(a)), got)
    if jax.tree.structure(want_shapes) != jax.tree.structure(got_shapes) or want_shapes != got_shapes:
        raise CheckpointError(f"{path} does not match the model: checkpoint has {got_shapes}, "
                              f"model expects {want_shapes}")
    return serialization.from_state_dict(template, got), json.loads(blob["meta"])
