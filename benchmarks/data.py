"""The 60,000 x 784 training set every speed benchmark uses: Fashion-MNIST's training file
(Debian's `dataset-fashion-mnist`, or DoomNet's cache), else random pixels of the same shape
(speed does not depend on the values; the note says which was used)."""

from __future__ import annotations

import numpy as np

from doomnet.data import DataError, load_source, to_unit

N_ROWS, N_FEATURES, N_CLASSES = 60_000, 784, 10


def training_set() -> tuple[np.ndarray, np.ndarray, str]:
    """X (60000, 784) float32 in [0, 1], y (60000,) int64, and where they came from."""
    try:
        source = load_source("fashion_mnist", download=False)
    except (DataError, OSError) as exc:
        rng = np.random.default_rng(0)
        X = rng.random((N_ROWS, N_FEATURES), dtype=np.float32)
        y = rng.integers(0, N_CLASSES, N_ROWS)
        return X, y, f"random pixels (fashion_mnist not found: {str(exc).splitlines()[0]})"
    return to_unit(source.X, source.scale), source.y, "fashion_mnist training file"


def batches(X: np.ndarray, y: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive (size, D) / (size,) views of X and y: the same batches for every engine."""
    return [(X[i : i + size], y[i : i + size]) for i in range(0, len(y) - size + 1, size)]
