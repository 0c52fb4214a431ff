"""Storage: atomic writes with the umask's permissions, checksummed arrays, chunk caches, cache keys."""

import json
import os
import stat
from typing import NamedTuple

import numpy as np
import pytest

from intriguing_jax import attacks, storage, train
from experiments.harness import runtime


class Pair(NamedTuple):
    a: np.ndarray
    b: np.ndarray


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_files_get_the_umask_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        storage.write_json(tmp_path / "r.json", {"x": 1})
        storage.save_arrays(tmp_path / "s.npz", Pair(np.zeros(2), np.ones(2)))
    finally:
        os.umask(old)
    for name in ("r.json", "s.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "s.npz"]  # no temp files left


def test_arrays_roundtrip_and_corruption_reads_as_missing(tmp_path):
    rec = Pair(np.arange(3.0), np.array([1, 2, 3]))
    storage.save_arrays(tmp_path / "p.npz", rec)
    got = storage.load_arrays(tmp_path / "p.npz", Pair, 3)
    np.testing.assert_array_equal(got.a, rec.a)
    np.testing.assert_array_equal(got.b, rec.b)
    assert storage.load_arrays(tmp_path / "p.npz", Pair, 4) is None  # wrong size
    assert storage.load_arrays(tmp_path / "missing.npz", Pair, 3) is None
    (tmp_path / "p.npz").write_bytes(b"junk")
    assert storage.load_arrays(tmp_path / "p.npz", Pair, 3) is None
    assert storage.checksum({"a": rec.a, "b": rec.b}) == storage.checksum({"b": rec.b, "a": rec.a})
    assert storage.checksum({"a": rec.a}) != storage.checksum({"a": rec.a.astype(np.float32)})


def test_cached_chunks_compute_once_and_resume(tmp_path):
    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        return Pair(np.arange(start, stop, dtype=float), np.arange(start, stop) * 2)

    first = storage.cached_chunks(compute, 7, 3, Pair, tmp_path)
    assert calls == [(0, 3), (3, 6), (6, 7)] and list(first.b) == [0, 2, 4, 6, 8, 10, 12]
    (tmp_path / "chunk_00001.npz").write_bytes(b"damaged")
    calls.clear()
    again = storage.cached_chunks(compute, 7, 3, Pair, tmp_path)
    assert calls == [(3, 6)]  # only the damaged chunk is recomputed
    np.testing.assert_array_equal(again.a, first.a)


def test_cache_keys_and_safe_names():
    assert storage.cache_key(train.TrainConfig()) == storage.cache_key(train.TrainConfig())
    assert storage.cache_key(train.TrainConfig()) != storage.cache_key(train.TrainConfig(epochs=3))
    assert len(storage.cache_key(attacks.AttackConfig(), 12)) == 12
    # how the attack is compiled never changes its result: one cache serves every tier
    assert storage.cache_key(attacks.AttackConfig(compile="fast")) == storage.cache_key(attacks.AttackConfig())
    assert storage.safe_name("FC10(1e-4) a/b") == "FC10_1e-4__a_b"
    np.testing.assert_array_equal(storage.pad_rows(np.array([1, 2]), 4), [1, 2, 2, 2])


def test_recorded_minutes_counts_each_computation_once(tmp_path):
    """A pipeline's file counts its own wall time and its cached runs', not what a study command merged in."""
    from intriguing_jax import provenance
    (tmp_path / "a.json").write_text(json.dumps({
        "provenance": {"wall_time_s": 60}, "runs": {"v": [{"wall_s": 120}, {"wall_s": 60}]},
        "study": [{"wall_s_mean": 30, "test_errors": [0.1, 0.2]}],
        "controls": {"c": {"wall_s_mean": 600, "test_errors": [0.1]}}, "controls_provenance": {"wall_time_s": 600}}))
    assert runtime.recorded_minutes([tmp_path / "a.json", tmp_path / "missing.json"]) == 5.0
    # steps computed during the pipeline's own run (stamped inside its window) are already in its wall time
    inside, before = "2026-01-01T10:00:30+00:00", "2026-01-01T09:00:00+00:00"
    (tmp_path / "b.json").write_text(json.dumps({
        "provenance": {"wall_time_s": 60, "date": "2026-01-01T10:01:00+00:00"},
        "runs": {"v": [{"wall_s": 50, "computed_at": inside}, {"wall_s": 120, "computed_at": before}]},
        "models": {"m": {"train_wall_s": 60, "computed_at": inside}},
        "study": [{"wall_s_mean": 30, "test_errors": [0.1, 0.2], "computed_at": [inside, before]}]}))
    assert runtime.recorded_minutes([tmp_path / "b.json"]) == (60 + 120 + 30) / 60


def test_a_claimed_step_is_computed_once_and_the_others_wait_for_it(tmp_path):
    """``storage.claimed`` takes a lock only where it is free; ``harness.sharing.each`` computes the steps it
    claims, skips one another holder is computing, then waits for it and reads what that holder cached —
    results in the steps' order, as one process alone would return them."""
    import threading
    import time
    from experiments.harness import sharing
    lock = tmp_path / "x.lock"
    with storage.claimed(lock) as first:
        with storage.claimed(lock) as second:  # another open file: flock says held (as for another process)
            assert first and not second
    with storage.claimed(lock) as again:
        assert again  # released after the block

    cache, computed = {}, []

    def step(name):
        def run():
            if name not in cache:
                computed.append((name, threading.current_thread().name))
                cache[name] = name.upper()
            return cache[name]
        return run

    held, release = threading.Event(), threading.Event()

    def other_process():  # holds b's lock, computes b, then lets go
        with storage.exclusive(sharing.lock_path(tmp_path, "phase", "b")):
            held.set()
            release.wait(5)
            time.sleep(0.2)
            step("b")()
    other = threading.Thread(target=other_process, name="other")
    other.start()
    held.wait(5)
    release.set()
    out = sharing.each({n: step(n) for n in "abc"}, tmp_path, "phase")
    other.join()
    assert list(out.items()) == [("a", "A"), ("b", "B"), ("c", "C")]
    assert sorted(computed) == [("a", "MainThread"), ("b", "other"), ("c", "MainThread")]
