"""Time to accuracy: seconds of training until validation accuracy reaches 0.85 on
fashion_mnist, DoomNet (`fit`) vs the same recipe in PyTorch.

Recipe: 784-128-10, He init, Adam (lr 1e-3), shuffled mini-batches of 128, validation on the
6,000-row split every 100 steps; the clock runs from the first step to the evaluation that
reaches the target (evaluations included). Both engines start from the same weights and see
the same batches in the same order, so they reach the target at the same step give or take
float rounding; the time is what differs. Interleaved repeats, medians.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.timing import interleaved, ratio
from benchmarks.torch_mlp import evaluate as torch_evaluate
from benchmarks.torch_mlp import make_optimizer as torch_optimizer
from benchmarks.torch_mlp import train_step, twin
from doomnet.data import load_dataset
from doomnet.fit import fit
from doomnet.model import DoomNet

TARGET = 0.85
HIDDEN, LR, BATCH, EVAL_EVERY, SEED = 128, 1e-3, 128, 100, 0
MAX_STEPS = 20_000


def _model(splits) -> DoomNet:
    return DoomNet(splits.n_features, HIDDEN, splits.n_classes, init="he", seed=SEED)


def doomnet_run(splits) -> tuple[float, int]:
    """(seconds, steps) until val accuracy >= TARGET."""
    result = fit(
        _model(splits),
        splits,
        iterations=MAX_STEPS,
        lr=LR,
        batch_size=BATCH,
        optimizer="adam",
        eval_every=EVAL_EVERY,
        seed=SEED,
        callbacks=(lambda step, metrics: metrics["val/acc"] >= TARGET,),
    )
    if result.best_val_acc < TARGET:
        raise RuntimeError(f"DoomNet did not reach {TARGET} in {MAX_STEPS} steps")
    return result.train_time_s, result.steps


def torch_run(torch, splits) -> tuple[float, int]:
    """The same recipe in PyTorch: same weights, same batch order as fit's mini-batches."""
    net = twin(torch, _model(splits))
    step = train_step(torch, net, torch_optimizer(torch, net, "adam", LR))
    X, y = torch.from_numpy(splits.X_train), torch.from_numpy(splits.y_train)
    X_val, y_val = torch.from_numpy(splits.X_val), torch.from_numpy(splits.y_val)
    rng = np.random.default_rng(SEED)  # fit's shuffling: one permutation per epoch
    n_batches = len(splits.y_train) // BATCH
    X_batch = torch.empty((BATCH, X.shape[1]), dtype=X.dtype)
    y_batch = torch.empty(BATCH, dtype=y.dtype)
    start = time.perf_counter()
    steps = 0
    while steps < MAX_STEPS:
        order = torch.from_numpy(rng.permutation(len(splits.y_train)))
        for i in range(n_batches):
            rows = order[i * BATCH : (i + 1) * BATCH]
            torch.index_select(X, 0, rows, out=X_batch)
            torch.index_select(y, 0, rows, out=y_batch)
            step(X_batch, y_batch)
            steps += 1
            if steps % EVAL_EVERY == 0 and torch_evaluate(torch, net, X_val, y_val)[1] >= TARGET:
                return time.perf_counter() - start, steps
    raise RuntimeError(f"PyTorch did not reach {TARGET} in {MAX_STEPS} steps")


def measure(torch, *, quick: bool = False) -> dict:
    splits = load_dataset("fashion_mnist", val_fraction=0.1, seed=SEED, download=False)
    steps: dict[str, int] = {}

    def timed(name, run):
        def call() -> float:
            seconds, steps[name] = run()
            return seconds

        return call

    variants = {"doomnet": timed("doomnet", lambda: doomnet_run(splits))}
    if torch is not None:
        variants["torch"] = timed("torch", lambda: torch_run(torch, splits))
    times = interleaved(variants, rounds=1 if quick else 3, warmup=0, self_timed=True)
    out = {
        "target_val_acc": TARGET,
        "data": f"fashion_mnist: train {len(splits.y_train)}, val {len(splits.y_val)}",
        "recipe": f"784-{HIDDEN}-10 he init, adam lr {LR}, batch {BATCH}, "
        f"val every {EVAL_EVERY} steps",
        "doomnet_s": times["doomnet"].median,
        "doomnet_steps": steps["doomnet"],
        "torch_s": None,
        "torch_steps": None,
        "ratio_doomnet_torch": None,
    }
    if torch is not None:
        out["torch_s"] = times["torch"].median
        out["torch_steps"] = steps["torch"]
        out["ratio_doomnet_torch"] = ratio(times, "doomnet", "torch")
    return out
