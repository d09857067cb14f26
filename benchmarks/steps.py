"""Step time: one training update of DoomNet vs the same MLP in PyTorch CPU eager.

A step is what `fit` does per iteration: forward, softmax cross-entropy, backward, train
accuracy from the same logits, and a plain SGD update (PyTorch: `nn.Sequential` of Linear
and ReLU, `cross_entropy`, `backward()`, `torch.optim.SGD`, argmax accuracy), float32, the
same starting weights and the same data. Full batch on 60,000 x 784, and mini-batches of 128
(consecutive batches of the same set, one per step; timed 100 steps at a time).

The matmul-bound limit of a case is its matrix-product FLOPs divided by the sgemm rate of
NumPy's BLAS, measured in the same run two ways: at its best (a square 2048 product: the
machine's "peak"), and at the case's own shapes (the products of a step, done one by one,
timed interleaved with the steps). DoomNet's fraction of a limit is limit / step time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from benchmarks.timing import interleaved, ratio
from benchmarks.torch_mlp import make_optimizer as torch_optimizer
from benchmarks.torch_mlp import train_step, twin
from doomnet.model import DoomNet
from doomnet.optim import make_optimizer

LR = 0.05
MINI_STEPS = 100  # mini-batch steps per timed call


@dataclass(frozen=True)
class Case:
    name: str
    batch: int | None  # None: full batch
    hidden: int


CASES = (
    Case("full batch 60000, hidden 20", None, 20),
    Case("full batch 60000, hidden 256", None, 256),
    Case("batch 128, hidden 20", 128, 20),
    Case("batch 128, hidden 256", 128, 256),
)


def step_flops(n: int, d: int, h: int, c: int) -> float:
    """Matrix-product FLOPs of one step of a d-h-c net on n rows: forward (X W1, A W2),
    backward (the two weight gradients and the gradient into the hidden layer)."""
    forward = 2 * n * (d * h + h * c)
    backward = 2 * n * (d * h + h * c) + 2 * n * h * c
    return float(forward + backward)


def sgemm_rate(rounds: int = 7, size: int = 2048) -> float:
    """FLOP/s of NumPy's float32 matmul on a square product (median of `rounds`)."""
    rng = np.random.default_rng(0)
    A = rng.random((size, size), dtype=np.float32)
    B = rng.random((size, size), dtype=np.float32)
    out = np.empty_like(A)
    times = interleaved({"sgemm": lambda: np.matmul(A, B, out=out)}, rounds=rounds, inner=2)
    return 2.0 * size**3 / times["sgemm"].median


def _cycle(X: np.ndarray, y: np.ndarray, batch: int | None):
    """Endless (X, y) batches: the full set, or consecutive `batch`-row views."""
    if batch is None:
        return itertools.repeat((X, y))
    starts = range(0, X.shape[0] - batch + 1, batch)
    views = [(X[i : i + batch], None if y is None else y[i : i + batch]) for i in starts]
    return itertools.cycle(views)


def _doomnet_step(model: DoomNet, X, y, batch, steps):
    opt = make_optimizer("sgd")
    feed = _cycle(X, y, batch)

    def call():
        for _ in range(steps):
            Xb, yb = next(feed)
            _, grads, _ = model.loss_grads_acc(Xb, yb, check=False)
            opt.step(model.params, grads, LR)

    return call


def _torch_step(torch, model: DoomNet, X, y, batch, steps):
    net = twin(torch, model)
    step = train_step(torch, net, torch_optimizer(torch, net, "sgd", LR))
    feed = _cycle(torch.from_numpy(X), torch.from_numpy(y), batch)

    def call():
        for _ in range(steps):
            step(*next(feed))

    return call


def _matmuls_only(model: DoomNet, X, batch, steps):
    """The step's matrix products alone at its shapes, in NumPy (no other work)."""
    n = batch or X.shape[0]
    rng = np.random.default_rng(1)
    W1, W2 = model.params["W1"], model.params["W2"]
    h, c = W2.shape
    A = rng.random((n, h), dtype=np.float32)  # (n, H) hidden activations
    dZ2 = rng.random((n, c), dtype=np.float32)  # (n, C) d loss / d logits
    dZ1 = rng.random((n, h), dtype=np.float32)  # (n, H) d loss / d hidden pre-activations
    feed = _cycle(X, None, batch)

    def call():
        for _ in range(steps):
            Xb, _ = next(feed)
            Xb @ W1  # (n, H)
            A @ W2  # (n, C)
            dZ2.T @ A  # (C, H): dW2
            dZ2 @ W2.T  # (n, H): dA
            dZ1.T @ Xb  # (H, D): dW1

    return call


def run(torch, X: np.ndarray, y: np.ndarray, *, quick: bool = False) -> dict:
    """Time every case; returns one dict per case and the sgemm peak."""
    peak = sgemm_rate(rounds=3 if quick else 9)
    results = []
    for case in CASES:
        full = case.batch is None
        steps = 1 if full else MINI_STEPS
        if quick:
            rounds, inner = (3, 1) if full else (3, 2)
        else:
            rounds, inner = ((9, 1) if case.hidden > 100 else (15, 3)) if full else (15, 3)
        model = DoomNet(X.shape[1], case.hidden, 10, init="he", seed=0)
        variants = {
            "doomnet": _doomnet_step(model, X, y, case.batch, steps),
            "matmuls": _matmuls_only(model, X, case.batch, steps),
        }
        if torch is not None:
            torch_model = DoomNet(X.shape[1], case.hidden, 10, init="he", seed=0)
            variants["torch"] = _torch_step(torch, torch_model, X, y, case.batch, steps)
        times = interleaved(variants, rounds=rounds, inner=inner)
        n = case.batch or X.shape[0]
        flops = step_flops(n, X.shape[1], case.hidden, 10)
        doomnet_s = times["doomnet"].median / steps
        matmuls_s = times["matmuls"].median / steps
        limit_s = flops / peak
        row = {
            "case": case.name,
            "rows": n,
            "hidden": case.hidden,
            "doomnet_ms": 1e3 * doomnet_s,
            "doomnet_timing": times["doomnet"].summary(),
            "step_gflop": flops / 1e9,
            "limit_at_peak_ms": 1e3 * limit_s,
            "fraction_of_peak_limit": limit_s / doomnet_s,
            "matmuls_same_shapes_ms": 1e3 * matmuls_s,
            "fraction_of_same_shape_limit": matmuls_s / doomnet_s,
            "doomnet_gflops": flops / doomnet_s / 1e9,
            "torch_ms": None,
            "ratio_doomnet_torch": None,
        }
        if torch is not None:
            row["torch_ms"] = 1e3 * times["torch"].median / steps
            row["torch_timing"] = times["torch"].summary()
            row["ratio_doomnet_torch"] = ratio(times, "doomnet", "torch")
        results.append(row)
    return {"sgemm_peak_gflops": peak / 1e9, "sgemm_peak_shape": "2048x2048x2048", "cases": results}
