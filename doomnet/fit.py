"""The training loop: batches, evaluation cadence, divergence guard and callbacks.

    result = fit(model, splits, iterations=2000, lr=0.2)            # the notebook's run
    result = fit(model, splits, iterations=2000, lr=0.05, batch_size=128, optimizer="adam")

A callback is any `cb(step, metrics) -> bool | None`; it runs after every evaluation, and a
truthy return stops training after that step. Trackers log `metrics` and pruners return
True to stop a bad trial. Nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from doomnet.model import DoomNet
from doomnet.optim import Optimizer, make_optimizer

Callback = Callable[[int, dict[str, float]], Any]


class DivergedError(RuntimeError):
    """Training loss became NaN/inf or grew past divergence_factor x the first loss."""

    def __init__(self, step: int, loss: float, reason: str = "") -> None:
        self.step = step
        self.loss = loss
        self.reason = reason
        super().__init__(f"training diverged at step {step}: loss {loss:.6g}{reason}")

    def __reduce__(self):  # keep step and loss when sent between processes
        return type(self), (self.step, self.loss, self.reason)


@dataclass
class FitResult:
    """What a run produced. `history` holds one dict per evaluation: "step",
    "train/loss", "train/acc", "val/loss", "val/acc"; `final` is the last of them
    (without "step"). The model's weights are those after the last update."""

    steps: int  # parameter updates done
    history: list[dict[str, float]]
    best_val_acc: float
    best_step: int  # first step that reached best_val_acc
    final: dict[str, float]
    stopped_early: bool  # a callback asked to stop
    train_time_s: float  # wall time of the loop, evaluations and callbacks included
    samples_seen: int  # rows used in updates


def fit(
    model: DoomNet,
    splits: Any,
    *,
    iterations: int,
    lr: float,
    batch_size: int | None = None,
    optimizer: str | Optimizer = "sgd",
    eval_every: int = 1,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    divergence_factor: float = 10.0,
) -> FitResult:
    """Train `model` in place on splits.X_train/y_train, validating on splits.X_val/y_val.

    Args:
        model: the DoomNet to train (its params are updated in place).
        splits: anything with X_train (N, D), y_train (N,), X_val (M, D), y_val (M,);
            X is converted once to the model's dtype, labels are integers in [0, C).
        iterations: number of parameter updates (the notebook's "iterations").
        lr: learning rate, > 0.
        batch_size: None (or N) for full-batch gradient descent, as the notebook;
            otherwise mini-batches of exactly this size: every epoch is a fresh permutation
            drawn from np.random.default_rng(seed) and cut into N // batch_size batches
            (the N % batch_size rows left over differ from epoch to epoch).
        optimizer: a name for `make_optimizer` ("sgd", "momentum", "nesterov", "adam")
            or an Optimizer instance.
        eval_every: evaluate every this many updates, and always after the last one.
        seed: seed of the batch order (the weights' seed is the model's).
        callbacks: called as cb(step, metrics) after each evaluation, in order; if any
            returns a truthy value, training stops after this step. Exceptions propagate.
        divergence_factor: raise DivergedError if a training loss exceeds this multiple of
            the first one (math.inf turns the check off; NaN/inf losses always raise).

    Metrics at an evaluation step (Python floats): "train/loss" and "train/acc" are the
    loss and accuracy of the batch used for that update, from its own forward pass, i.e.
    measured just *before* the update (free, as in the notebook); "val/loss" and "val/acc"
    are measured on the whole validation split just *after* the update. Steps are 1-based:
    step s is the evaluation after s updates.

    Raises:
        ValueError: a bad argument (the message names it) or bad data.
        DivergedError: the loss blew up; its `.step` is the update at which it was seen
            (that update is not applied).
    """
    _check_args(iterations, lr, batch_size, eval_every, seed, divergence_factor)
    opt = make_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    if not isinstance(opt, Optimizer):
        raise ValueError(f"optimizer must be a name or an Optimizer, got {optimizer!r}")
    X_train, y_train = model.check_inputs(
        splits.X_train, splits.y_train, names=("X_train", "y_train")
    )
    X_val, y_val = model.check_inputs(splits.X_val, splits.y_val, names=("X_val", "y_val"))
    n_train = X_train.shape[0]
    if batch_size is not None and batch_size > n_train:
        raise ValueError(f"batch_size must be <= the {n_train} training rows, got {batch_size}")
    if batch_size is None or batch_size == n_train:
        batches = _full_batch(X_train, y_train)
    else:
        batches = _minibatches(X_train, y_train, batch_size, np.random.default_rng(seed))

    history: list[dict[str, float]] = []
    best_val_acc, best_step = -1.0, 0
    first_loss = math.nan
    samples_seen = 0
    stopped_early = False
    start = time.perf_counter()
    for step in range(1, iterations + 1):
        X, y = next(batches)
        loss, grads, acc = model.loss_grads_acc(X, y, check=False)  # data checked above
        if step == 1:
            first_loss = loss
        if not math.isfinite(loss):
            raise DivergedError(step, loss, " is not finite")
        if loss > divergence_factor * first_loss:
            raise DivergedError(
                step, loss, f" > {divergence_factor:g} x first loss {first_loss:.6g}"
            )
        opt.step(model.params, grads, lr)
        samples_seen += X.shape[0]

        if step % eval_every == 0 or step == iterations:
            val_loss, val_acc = model.evaluate(X_val, y_val, check=False)
            if not math.isfinite(val_loss):
                raise DivergedError(step, val_loss, " (validation) is not finite")
            metrics = {
                "train/loss": loss,
                "train/acc": acc,
                "val/loss": val_loss,
                "val/acc": val_acc,
            }
            history.append({"step": step, **metrics})
            if val_acc > best_val_acc:
                best_val_acc, best_step = val_acc, step
            stop = [bool(cb(step, metrics)) for cb in callbacks]  # every callback runs
            if any(stop):
                stopped_early = True
                break
    train_time_s = time.perf_counter() - start

    final = {k: v for k, v in history[-1].items() if k != "step"}
    return FitResult(
        steps=step,
        history=history,
        best_val_acc=best_val_acc,
        best_step=best_step,
        final=final,
        stopped_early=stopped_early,
        train_time_s=train_time_s,
        samples_seen=samples_seen,
    )


def _full_batch(X: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The whole training set, every time (no copy)."""
    while True:
        yield X, y


def _minibatches(
    X: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches X (B, D), y (B,). The same two buffers are refilled for
    every batch, so use each batch before asking for the next."""
    X_batch = np.empty((batch_size, X.shape[1]), dtype=X.dtype)  # (B, D)
    y_batch = np.empty(batch_size, dtype=y.dtype)  # (B,)
    n_batches = X.shape[0] // batch_size
    while True:
        order = rng.permutation(X.shape[0])  # a new epoch
        for i in range(n_batches):
            rows = order[i * batch_size : (i + 1) * batch_size]
            np.take(X, rows, axis=0, out=X_batch)
            np.take(y, rows, out=y_batch)
            yield X_batch, y_batch


def _check_args(
    iterations: int,
    lr: float,
    batch_size: int | None,
    eval_every: int,
    seed: int,
    divergence_factor: float,
) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    def is_real(v: object) -> bool:
        return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)

    if not is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if not is_real(lr) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    if not is_int(eval_every) or eval_every < 1:
        raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not is_real(divergence_factor) or math.isnan(divergence_factor) or divergence_factor <= 0:
        raise ValueError(f"divergence_factor must be a number > 0, got {divergence_factor!r}")
