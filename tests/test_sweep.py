"""Sweeps: expansion, bitwise identity across 1/4 devices and 2 processes, kill-and-resume, corruption."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from intriguing_jax import attacks, storage, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _worker(out, *args, wait=True):
    cmd = [sys.executable, "-m", "tests.sweep_worker", str(out), *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out_text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out_text
    return out_text


def _digest(text):
    return [line.split()[1] for line in text.splitlines() if line.startswith("DONE")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    (d,) = _digest(_worker(out))
    return out, d


def test_spec_expands_into_fixed_size_shards():
    spec = sweep.SweepSpec(models=("a", "b"), configs=(attacks.AttackConfig(), attacks.AttackConfig(c_steps=2)),
                           num_images=5, targets="all", shard_size=16, device_batch=8)
    labels = np.array([0, 1, 2, 3, 9])
    img, tgt = sweep.work_items(spec, labels)
    assert len(img) == 45 and np.all(tgt != labels[img]) and len(set(zip(img, tgt))) == 45
    shards = sweep.expand(spec, labels)
    assert len(shards) == 2 * 2 * 3 and [s.index for s in shards] == list(range(12))
    assert [len(s.image_index) for s in shards[:3]] == [16, 16, 13]
    rand = sweep.work_items(sweep.SweepSpec(models=("a",), targets="random", num_images=5), labels)
    assert len(rand[0]) == 5 and np.all(rand[1] != labels)
    with pytest.raises(ValueError, match="multiple"):
        sweep.SweepSpec(models=("a",), shard_size=10, device_batch=4)
    with pytest.raises(ValueError, match="only 5"):
        sweep.work_items(sweep.SweepSpec(models=("a",), num_images=6), labels)


def test_four_devices_give_the_one_device_result(reference, tmp_path):
    assert _digest(_worker(tmp_path, "--devices", 4)) == [reference[1]]


def test_two_processes_split_the_sweep_and_give_the_same_result(reference, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [_worker(tmp_path, "--process-id", i, "--num-processes", 2, "--coordinator", f"localhost:{port}",
                     wait=False) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert _digest(outs[0]) == [reference[1]] and _digest(outs[1]) == []  # process 0 assembles


def test_killed_sweep_resumes_to_the_identical_result(reference, tmp_path):
    proc = _worker(tmp_path, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/shard_000002.npz")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reap it and close its pipe
    done = sorted(tmp_path.glob("*/shard_*.npz"))
    assert 0 < len(done) < 14, done  # killed mid-way (14 shards in all)
    for path in done:  # whatever carries a final name is complete (temp file + rename)
        assert storage.load_arrays(path, attacks.AttackResult, 16) is not None
    assert _digest(_worker(tmp_path)) == [reference[1]]


def test_corrupt_shard_is_detected_and_recomputed(reference, tmp_path):
    out, digest = reference
    shard = sorted(out.glob("*/shard_*.npz"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    spec_dir = shard.parent
    with pytest.raises(RuntimeError, match="missing or corrupt"):
        sweep.assemble(_worker_spec(), _worker_labels(), spec_dir.parent)
    assert _digest(_worker(out)) == [digest]


def _worker_spec():
    return sweep.SweepSpec(models=("tiny", "tiny2"), configs=(attacks.AttackConfig(c_steps=3, maxiter=15, rescue_steps=0),),
                           num_images=12, targets="all", shard_size=16, device_batch=4)


def _worker_labels():
    rng = np.random.default_rng(0)
    rng.uniform(0, 1, (24, 784))
    return rng.integers(0, 10, 24)
