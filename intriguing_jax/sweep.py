"""Sharded, resumable attack sweeps: models × images × targets × attack configs.

A ``SweepSpec`` expands into fixed-size work shards. Each shard's batch is laid out over the local
devices with a ``NamedSharding`` on a 1-D ``Mesh`` (axis ``"batch"``) and attacked under ``shard_map``,
each device running ``lbfgs_attack`` on its own fixed-size block (so results are bitwise independent of
the device count: letting XLA partition one big batch changes GEMM shapes and the last bits). Across processes
(``jax.distributed``), shard ``g`` belongs to process ``g mod process_count``; after a barrier, process
0 assembles the result from the shard files (so several hosts need a shared output directory).

Every finished shard is written atomically (temp file + rename) with a SHA-256 of its arrays, under a
directory named by the spec's hash, beside a manifest. A restarted sweep skips valid shards and
recomputes missing or corrupt ones, so the final result is identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Callable, Literal, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from intriguing_jax import _attack_engine as _engine
from intriguing_jax import attacks, storage, validate


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What to attack. ``targets="all"``: every wrong label of every image (9 per MNIST image);
    ``"random"``: one seeded random wrong label per image. Images are the first ``num_images`` of the
    set given to ``run_sweep``; ``shard_size`` examples per shard, attacked in blocks of ``device_batch``
    per device (results do not depend on the device count; throughput grows with it)."""

    models: tuple[str, ...]
    configs: tuple[attacks.AttackConfig, ...] = (attacks.AttackConfig(),)
    num_images: int = 100
    targets: Literal["all", "random"] = "all"
    num_classes: int = 10
    shard_size: int = 256
    device_batch: int = 64
    seed: int = 0

    def __post_init__(self):
        if not self.models or not self.configs:
            raise ValueError("a sweep needs at least one model and one attack config")
        if self.targets not in ("all", "random"):
            raise ValueError(f"targets must be 'all' or 'random', got {self.targets!r}")
        if self.num_images < 1 or self.device_batch < 1 or self.shard_size % self.device_batch:
            raise ValueError("need num_images >= 1 and shard_size a positive multiple of device_batch")

    def digest(self) -> str:
        return storage.cache_key(self, 12)


class Shard(NamedTuple):
    index: int  # global shard number (the work order)
    model: str
    config: int  # index into spec.configs
    part: int  # shard number within (model, config)
    image_index: np.ndarray  # [<= shard_size] which images
    targets: np.ndarray  # [<= shard_size] target labels


def work_items(spec: SweepSpec, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(image_index, target)`` for every example of one (model, config) pair, in a fixed order."""
    labels = np.asarray(labels)[: spec.num_images]
    if len(labels) < spec.num_images:
        raise ValueError(f"spec wants {spec.num_images} images, only {len(labels)} given")
    idx = np.arange(spec.num_images)
    if spec.targets == "all":
        shift = np.arange(1, spec.num_classes)
        return np.repeat(idx, len(shift)), ((labels[:, None] + shift[None]) % spec.num_classes).ravel()
    return idx, np.asarray(attacks.random_wrong_targets(jax.random.key(spec.seed), labels, spec.num_classes))


def expand(spec: SweepSpec, labels) -> list[Shard]:
    """All shards of the sweep, models outermost, then configs, then fixed-size slices of the items."""
    img, tgt = work_items(spec, labels)
    shards = []
    for model in spec.models:
        for c in range(len(spec.configs)):
            for part, start in enumerate(range(0, len(img), spec.shard_size)):
                sl = slice(start, start + spec.shard_size)
                shards.append(Shard(len(shards), model, c, part, img[sl], tgt[sl]))
    return shards


def sharded_attack(logits_fn, images, targets, config: attacks.AttackConfig, devices=None,
                   device_batch: int | None = None) -> attacks.AttackResult:
    """``lbfgs_attack`` over ``devices`` (default: this process's local devices) with ``shard_map``: each
    device attacks its own block of ``device_batch`` examples (default: an equal split), in rounds until
    the batch is done. The per-device program depends only on ``device_batch``, not on the number of
    devices, so results are bitwise identical on 1 or N devices. The last round is padded with copies of
    the last example (dropped from the result), so any batch size compiles once."""
    attacks._validate(logits_fn, images, targets, config.box)
    devices = list(devices or jax.local_devices())
    images, targets = np.asarray(images, np.float32), np.asarray(targets, np.int32)
    n = len(images)
    device_batch = device_batch or -(-n // len(devices))
    mesh = Mesh(np.array(devices), ("batch",))
    spec = PartitionSpec("batch")
    run = functools.partial(_shard_mapped(config, mesh), _engine.as_partial(logits_fn))
    per_round = device_batch * len(devices)
    sharding = NamedSharding(mesh, spec)
    parts = []
    for start in range(0, n, per_round):
        x, t = images[start:start + per_round], targets[start:start + per_round]
        used = len(x)  # idle devices get copies of the last example; dropped below
        x, t = storage.pad_rows(x, per_round), storage.pad_rows(t, per_round)
        res = run(jax.device_put(x, sharding), jax.device_put(t, sharding))
        parts.append(attacks.AttackResult(*(np.asarray(a)[:used] for a in res)))
    return storage.concat(parts)


@functools.lru_cache(maxsize=None)
def _shard_mapped(config: attacks.AttackConfig, mesh: Mesh):
    """One compiled program per (config, mesh); the model (a ``Partial``) is an argument, replicated."""
    spec = PartitionSpec("batch")
    out = attacks.AttackResult(*([spec] * len(attacks.AttackResult._fields)))

    def body(fn, x, t):
        return attacks.lbfgs_attack(fn, x, t, config=config)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(), spec, spec), out_specs=out,
                                 check_vma=False))


def _shard_path(root: pathlib.Path, s: Shard) -> pathlib.Path:
    return root / f"shard_{s.index:06d}.npz"


def _run_shard(s: Shard, logits_fn, images, spec: SweepSpec, devices) -> attacks.AttackResult:
    return sharded_attack(logits_fn, images[s.image_index], s.targets, spec.configs[s.config], devices,
                          spec.device_batch)


def run_sweep(spec: SweepSpec, logits_fns: dict[str, Callable], images, labels, out_dir, *, devices=None,
              process_index: int | None = None, process_count: int | None = None,
              progress: Callable[[int], None] | None = None) -> dict | None:
    """Runs this process's shards of ``spec`` (skipping finished ones), then, on process 0, assembles
    ``{(model, config_index): AttackResult}`` over all shards (None on other processes). Writes
    ``manifest.json`` and, on process 0, ``result.npz`` + ``summary.json`` under ``out_dir/<spec hash>``."""
    pid = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    missing = set(spec.models) - set(logits_fns)
    if missing:
        raise ValueError(f"no logits function for models {sorted(missing)}")
    n = validate.images(images)
    validate.labels(labels, n, None)
    for name, fn in logits_fns.items():
        validate.labels(labels, n, validate.logits_fn(fn, images[:1], name=f"logits_fns[{name!r}]"))
    images = np.asarray(images, np.float32)
    shards = expand(spec, labels)
    root = pathlib.Path(out_dir) / spec.digest()
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"spec": dataclasses.asdict(spec), "digest": spec.digest(), "shards": len(shards),
                "processes": count, "files": [_shard_path(root, s).name for s in shards]}
    if pid == 0:
        storage.atomic_write_bytes(root / "manifest.json", (json.dumps(manifest, indent=1, default=str) + "\n").encode())
    for s in shards:
        if s.index % count != pid:
            continue
        path = _shard_path(root, s)
        if storage.load_arrays(path, attacks.AttackResult, len(s.image_index)) is None:
            storage.save_arrays(path, _run_shard(s, logits_fns[s.model], images, spec, devices))
        if progress is not None:
            progress(len(s.image_index))
    if count > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"sweep {spec.digest()} shards done")
    if pid != 0:
        return None
    return assemble(spec, labels, out_dir)


def assemble(spec: SweepSpec, labels, out_dir) -> dict:
    """The full result from the shard files; raises if any shard is missing or corrupt."""
    root = pathlib.Path(out_dir) / spec.digest()
    parts: dict = {}
    for s in expand(spec, labels):
        res = storage.load_arrays(_shard_path(root, s), attacks.AttackResult, len(s.image_index))
        if res is None:
            raise RuntimeError(f"shard {s.index} ({_shard_path(root, s)}) is missing or corrupt: rerun the sweep")
        parts.setdefault((s.model, s.config), []).append(res)
    results = {k: storage.concat(v) for k, v in parts.items()}
    flat = {f"{m}|{c}|{f}": getattr(r, f) for (m, c), r in results.items() for f in attacks.AttackResult._fields}
    storage.atomic_write_npz(root / "result.npz", **flat)
    summary = {f"{m} | config {c}": attacks.summarize(r) for (m, c), r in results.items()}
    storage.atomic_write_bytes(root / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    return results


def result_digest(results: dict) -> str:
    """SHA-256 over every array of an assembled result (to compare runs for bitwise identity)."""
    return storage.checksum({f"{m}|{c}|{f}": getattr(r, f) for (m, c), r in results.items()
                      for f in attacks.AttackResult._fields})
