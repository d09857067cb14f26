"""DoomNet: a multilayer perceptron written from scratch in NumPy.

The recipe of the original notebook is 784-20-10: one ReLU hidden layer, a softmax
output and a mean cross-entropy loss. The network keeps all of its state in one dict,

    params = {"W1": (D, H), "b1": (H,), "W2": (H, C), "b2": (C,)}

and `loss_and_grads` returns the gradients in a dict with the same keys, shapes and
dtype. A list of hidden sizes gives a deeper net: W1, b1, W2, b2, W3, b3, ...

Shapes in the comments: N rows in a batch, D input features, H hidden units, C classes.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from doomnet.parallel import map_row_ranges

INITS = ("normal", "he", "xavier")
FORMAT_VERSION = 1
EVAL_CHUNK = 8192  # rows per forward pass in evaluate/predict: bounds the memory of a huge X
BLOCK_ROWS = 2048  # rows per forward/backward block in loss_grads_acc (see there)
MIN_ROWS_PER_CORE = 8192  # smaller batches run on one thread (BLAS still uses every core)


class DoomNet:
    """A ReLU multilayer perceptron with a softmax output.

    Args:
        input_size: D, features per example (784 for MNIST).
        hidden_size: H, units of the hidden layer, or a sequence (H1, H2, ...) for a deeper net.
        output_size: C, number of classes.
        std: standard deviation of the weights for init="normal" (the notebook's 1e-4).
        seed: seed of the `np.random.default_rng` that draws the initial weights.
        dtype: float32 (default, fast) or float64 (for gradient checks).
        init: "normal" (std * randn), "he" (sqrt(2 / fan_in) * randn) or
            "xavier" (sqrt(2 / (fan_in + fan_out)) * randn); "he" and "xavier" ignore `std`.
        l2: strength of the penalty 0.5 * l2 * sum(W**2) over the weight matrices
            (biases are not penalised).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        output_size: int,
        std: float = 1e-4,
        seed: int = 0,
        dtype: type | np.dtype = np.float32,
        init: str = "normal",
        l2: float = 0.0,
    ) -> None:
        self.input_size = _positive_int("input_size", input_size)
        self.output_size = _positive_int("output_size", output_size)
        if isinstance(hidden_size, Sequence) and not isinstance(hidden_size, str):
            if len(hidden_size) == 0:
                raise ValueError("hidden_size must name at least one hidden layer, got []")
            self.hidden_sizes = tuple(_positive_int("hidden_size", h) for h in hidden_size)
        else:
            self.hidden_sizes = (_positive_int("hidden_size", hidden_size),)
        if not _is_real(std) or not math.isfinite(std) or std <= 0:
            raise ValueError(f"std must be a finite number > 0, got {std!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not _is_real(l2) or not math.isfinite(l2) or l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.std = float(std)
        self.seed = int(seed)
        self.init = init
        self.l2 = float(l2)

        rng = np.random.default_rng(self.seed)
        sizes = (self.input_size, *self.hidden_sizes, self.output_size)
        self.params: dict[str, np.ndarray] = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            scale = {
                "normal": self.std,
                "he": math.sqrt(2.0 / fan_in),
                "xavier": math.sqrt(2.0 / (fan_in + fan_out)),
            }[init]
            # Drawn in float64 then rounded, so a float32 and a float64 net start alike.
            W = scale * rng.standard_normal((fan_in, fan_out))
            self.params[f"W{i}"] = W.astype(self.dtype)  # (fan_in, fan_out)
            self.params[f"b{i}"] = np.zeros(fan_out, dtype=self.dtype)  # (fan_out,)

    @property
    def n_layers(self) -> int:
        """Number of weight matrices (hidden layers + 1)."""
        return len(self.hidden_sizes) + 1

    def __repr__(self) -> str:
        return (
            f"DoomNet({self.input_size}, {list(self.hidden_sizes)}, {self.output_size}, "
            f"init={self.init!r}, std={self.std}, l2={self.l2}, dtype={self.dtype.name})"
        )

    # ------------------------------------------------------------------ inputs

    def check_inputs(
        self, X: np.ndarray, y: np.ndarray | None = None, *, names: tuple[str, str] = ("X", "y")
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate a batch and return it as the model wants it.

        X (N, D) becomes C-contiguous in the model's dtype (no copy if it already is);
        y (N,) integer labels in [0, C) becomes int64. Raises ValueError naming the
        argument (`names` lets a caller say "X_val" instead of "X").
        """
        x_name, y_name = names
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"{x_name} must be 2-D (N, {self.input_size}), got shape {X.shape}")
        if X.shape[1] != self.input_size:
            raise ValueError(
                f"{x_name} must have {self.input_size} columns (input_size), got {X.shape[1]}"
            )
        if X.shape[0] == 0:
            raise ValueError(f"{x_name} has no rows")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"{x_name} must hold numbers, got dtype {X.dtype}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        # One cheap pass: a NaN or inf anywhere makes the sum non-finite. Huge finite
        # values can overflow the sum too, so only then look at every element.
        with np.errstate(over="ignore", invalid="ignore"):
            total = X.sum()
        if not math.isfinite(total) and not np.isfinite(X).all():
            raise ValueError(f"{x_name} contains NaN or inf")
        if y is None:
            return X, None
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(
                f"{y_name} must be 1-D with one label per row of {x_name} "
                f"({X.shape[0]},), got shape {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{y_name} must hold integer class labels (not one-hot or float), got {y.dtype}"
            )
        if y.min() < 0 or y.max() >= self.output_size:
            raise ValueError(
                f"{y_name} labels must be in [0, {self.output_size}), "
                f"got min {y.min()} and max {y.max()}"
            )
        return X, y.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ forward

    def _forward(self, X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Forward pass. Returns the hidden activations [(N, H1), (N, H2), ...] and the
        logits (N, C); every array is new, so callers may overwrite them in place."""
        activations = []
        A = X  # (N, D)
        for i in range(1, self.n_layers):
            Z = A @ self.params[f"W{i}"]  # (N, H_i)
            Z += self.params[f"b{i}"]
            A = np.maximum(Z, 0, out=Z)  # ReLU, in place: Z is not needed again
            activations.append(A)
        L = self.n_layers
        logits = A @ self.params[f"W{L}"]  # (N, C)
        logits += self.params[f"b{L}"]
        return activations, logits

    def _l2_penalty(self) -> float:
        """0.5 * l2 * sum of squared weights over the weight matrices (not the biases)."""
        if self.l2 == 0.0:
            return 0.0
        squares = sum(float(np.vdot(W, W)) for k, W in self.params.items() if k[0] == "W")
        return 0.5 * self.l2 * squares

    # ------------------------------------------------------------------ training

    def loss_grads_acc(
        self, X: np.ndarray, y: np.ndarray, *, check: bool = True
    ) -> tuple[float, dict[str, np.ndarray], float]:
        """Forward and backward pass on one batch.

        Args:
            X: (N, D) inputs.
            y: (N,) integer labels in [0, C).
            check: validate and convert X and y first. `fit` validates the whole data set
                once and passes check=False; then X must already be C-contiguous in the
                model's dtype and y int64 in range.

        Returns:
            loss: mean cross-entropy + 0.5 * l2 * sum(W**2), a Python float.
            grads: d loss / d param for every key of `params`, same shapes and dtype.
            acc: fraction of rows whose largest logit is the true class (from the same
                forward pass, so it comes for free).

        The loss and its gradient are sums over rows, so the batch is worked through in
        blocks of BLOCK_ROWS rows (`_backprop` does one block and adds its share): a block's
        activations are still in the CPU's cache when its backward pass reads them, and no
        (N, H) array is ever built. A big batch is split between the cores first, each core
        summing over its own rows (see doomnet.parallel).
        """
        if check:
            X, y = self.check_inputs(X, y)
        N = X.shape[0]

        def sum_over_rows(start: int, stop: int) -> tuple[float, int, dict[str, np.ndarray]]:
            grads: dict[str, np.ndarray] = {}  # the first block sets them, the others add
            nll, correct = 0.0, 0  # summed cross-entropy, correct predictions
            for block in range(start, stop, BLOCK_ROWS):
                rows = slice(block, min(block + BLOCK_ROWS, stop))
                block_nll, block_correct = self._backprop(X[rows], y[rows], 1.0 / N, grads)
                nll += block_nll
                correct += block_correct
            return nll, correct, grads

        parts = map_row_ranges(sum_over_rows, N, min_rows=MIN_ROWS_PER_CORE)
        nll, correct, grads = parts[0]
        for part_nll, part_correct, part_grads in parts[1:]:
            nll += part_nll
            correct += part_correct
            for key, g in part_grads.items():
                grads[key] += g
        if self.l2:
            for key, W in self.params.items():
                if key[0] == "W":
                    grads[key] += self.l2 * W
        loss = nll / N + self._l2_penalty()
        # Keys in the same order as params, for readers who print them.
        return loss, {key: grads[key] for key in self.params}, correct / N

    def _backprop(
        self, X: np.ndarray, y: np.ndarray, scale: float, grads: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        """Forward and backward pass on one block of rows X (n, D), y (n,).

        Adds scale * d(summed cross-entropy of the block) / d param into `grads` (or sets
        the entries it does not have yet) and returns the block's summed cross-entropy and
        its number of correct predictions. loss_grads_acc passes scale = 1 / N for a mean.
        """
        n = X.shape[0]
        rows = np.arange(n)
        activations, logits = self._forward(X)  # [(n, H_i)], (n, C)
        predicted = logits.argmax(axis=1)  # (n,)
        correct = int(np.count_nonzero(predicted == y))

        # Softmax and cross-entropy in one pass, in place: logits -> probs.
        # Shift each row by its max so exp cannot overflow (the max is read at the argmax:
        # cheaper than a second reduction over the short rows).
        logits -= logits[rows, predicted][:, None]
        true_logit = logits[rows, y]  # (n,) shifted logit of the true class
        probs = np.exp(logits, out=logits)  # (n, C) unnormalised
        # Row and column sums below are matrix-vector products with a vector of ones:
        # ~10x faster than .sum(axis=...) over NumPy's short rows of 10 or 20.
        sums = probs @ np.ones(self.output_size, self.dtype)  # (n,) row sums
        # log p(true) = true_logit - log(sum exp), summed over the block
        nll = float(np.log(sums).sum() - true_logit.sum())

        # Backward. d loss / d logits = scale * (probs - onehot(y)), again in place.
        np.divide(scale, sums, out=sums)  # (n,) scale / row sum
        probs *= sums[:, None]
        dZ = probs
        dZ[rows, y] -= scale  # (n, C)
        ones = np.ones(n, self.dtype)  # (n,)
        for i in range(self.n_layers, 0, -1):
            A_prev = activations[i - 2] if i > 1 else X  # (n, H_{i-1}) or (n, D)
            W = self.params[f"W{i}"]
            # (dZ.T @ A_prev).T is A_prev.T @ dZ; OpenBLAS is faster in this operand order
            _add(grads, f"W{i}", (dZ.T @ A_prev).T)  # (H_{i-1}, H_i)
            _add(grads, f"b{i}", ones @ dZ)  # (H_i,) column sums
            if i > 1:
                dA = dZ @ W.T  # (n, H_{i-1})
                dA *= A_prev > 0  # ReLU gate: no gradient where the unit was off
                dZ = dA
        return nll, correct

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of X (N, D) against integer labels y (N,) (plus the L2
        penalty) and its gradients, keyed and shaped like `params`."""
        loss, grads, _ = self.loss_grads_acc(X, y)
        return loss, grads

    # ------------------------------------------------------------------ inference

    def _logits_chunks(self, X: np.ndarray):
        """Yield (start, logits (n, C)) for consecutive chunks of at most EVAL_CHUNK rows."""
        for start in range(0, X.shape[0], EVAL_CHUNK):
            _, logits = self._forward(X[start : start + EVAL_CHUNK])
            yield start, logits

    def evaluate(self, X: np.ndarray, y: np.ndarray, *, check: bool = True) -> tuple[float, float]:
        """Loss and accuracy on X (N, D), y (N,) in one forward pass, no gradients.

        The loss is the same quantity `loss_and_grads` returns (cross-entropy plus the
        L2 penalty), so train and validation losses compare. `check` as in loss_grads_acc.
        """
        if check:
            X, y = self.check_inputs(X, y)
        N = X.shape[0]
        nll = 0.0  # summed negative log-likelihood
        correct = 0
        for start, logits in self._logits_chunks(X):
            rows = np.arange(logits.shape[0])
            y_chunk = y[start : start + logits.shape[0]]
            predicted = logits.argmax(axis=1)  # (n,)
            correct += int(np.count_nonzero(predicted == y_chunk))
            logits -= logits[rows, predicted][:, None]  # shift by the row max
            true_logit = logits[rows, y_chunk]
            log_sums = np.log(np.exp(logits, out=logits).sum(axis=1))  # (n,)
            nll += float(log_sums.sum() - true_logit.sum())
        return nll / N + self._l2_penalty(), correct / N

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for X (N, D), rows summing to 1."""
        X, _ = self.check_inputs(X)
        probs = np.empty((X.shape[0], self.output_size), dtype=self.dtype)  # (N, C)
        for start, logits in self._logits_chunks(X):
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            probs[start : start + logits.shape[0]] = logits
        return probs

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class (N,) int64 for X (N, D): the index of the largest logit."""
        X, _ = self.check_inputs(X)
        labels = np.empty(X.shape[0], dtype=np.int64)  # (N,)
        for start, logits in self._logits_chunks(X):
            labels[start : start + logits.shape[0]] = logits.argmax(axis=1)
        return labels

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows of X (N, D) whose predicted class equals y (N,)."""
        return self.evaluate(X, y)[1]

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and the constructor's settings to a .npz file at `path`
        (exactly that name; written to a temporary file, then renamed)."""
        path = Path(path)
        meta = {
            "format_version": np.array(FORMAT_VERSION),
            "hidden_sizes": np.array(self.hidden_sizes, dtype=np.int64),
            "std": np.array(self.std),
            "seed": np.array(self.seed),
            "init": np.array(self.init),  # a unicode array, loads without pickle
            "l2": np.array(self.l2),
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **self.params, **meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DoomNet:
        """Read a model written by `save`. Raises ValueError naming the file if it is not
        a DoomNet weights file, or if its shapes do not chain or its dtypes are not float."""
        path = Path(path)

        def bad(why: str) -> ValueError:
            return ValueError(f"{path}: not a valid DoomNet weights file: {why}")

        with open(path, "rb") as fh:  # our handle: closed even if np.load fails midway
            try:
                with np.load(fh, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
            except Exception as e:  # zip, header and pickle errors all mean "bad file"
                raise bad(f"{type(e).__name__}: {e}") from e
        if "hidden_sizes" not in arrays:
            raise bad("no hidden_sizes entry")
        try:
            version = int(arrays["format_version"])
            hidden = tuple(int(h) for h in np.atleast_1d(arrays["hidden_sizes"]))
            std, seed = float(arrays["std"]), int(arrays["seed"])
            init, l2 = str(arrays["init"]), float(arrays["l2"])
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"bad or missing metadata ({e})") from e
        if version != FORMAT_VERSION:
            raise bad(f"format_version {version}, expected {FORMAT_VERSION}")

        n_layers = len(hidden) + 1
        keys = [f"{p}{i}" for i in range(1, n_layers + 1) for p in "Wb"]
        missing = [k for k in keys if k not in arrays]
        extra = [k for k in arrays if k[0] in "Wb" and k[1:].isdigit() and k not in keys]
        if missing or extra:
            raise bad(f"missing {missing}, unexpected {extra} for hidden sizes {list(hidden)}")
        params = {k: arrays[k] for k in keys}
        dtypes = {a.dtype for a in params.values()}
        if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
            raise bad(f"parameters must share one float dtype, got {sorted(map(str, dtypes))}")
        W1, WL = params["W1"], params[f"W{n_layers}"]
        if W1.ndim != 2 or WL.ndim != 2:
            raise bad("W1 and the last W must be 2-D")
        sizes = (W1.shape[0], *hidden, WL.shape[1])
        for i in range(1, n_layers + 1):
            want_W, want_b = (sizes[i - 1], sizes[i]), (sizes[i],)
            if params[f"W{i}"].shape != want_W or params[f"b{i}"].shape != want_b:
                raise bad(
                    f"W{i} {params[f'W{i}'].shape} / b{i} {params[f'b{i}'].shape} do not "
                    f"chain: expected {want_W} / {want_b}"
                )
        if not all(np.isfinite(a).all() for a in params.values()):
            raise bad("parameters contain NaN or inf")
        try:
            model = cls(
                sizes[0], hidden, sizes[-1], std=std, seed=seed, dtype=W1.dtype, init=init, l2=l2
            )
        except ValueError as e:
            raise bad(str(e)) from e
        model.params = {k: np.ascontiguousarray(a) for k, a in params.items()}
        return model


def _add(grads: dict[str, np.ndarray], key: str, value: np.ndarray) -> None:
    """grads[key] += value, or grads[key] = value for the first block."""
    if key in grads:
        grads[key] += value
    else:
        grads[key] = value


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _positive_int(name: str, value: object) -> int:
    """`value` as an int >= 1, else ValueError naming `name`."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n}")
    return n
