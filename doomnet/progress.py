"""Console progress for one run: a live bar on a terminal, one plain line per run otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO


class Progress:
    """A `fit` callback. mode: "bar" (tqdm), "plain" (one line at the end), "none", or "auto"
    (bar when `stream` is a terminal, else plain)."""

    def __init__(self, total: int, name: str, mode: str = "auto", stream: TextIO | None = None):
        self.total = total
        self.name = name
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode = mode
        self.start = time.perf_counter()
        self.step = 0
        self.metrics: Mapping[str, float] = {}
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=name,
                unit="it",
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
                mininterval=0.2,
            )

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._bar is not None:
            self._bar.update(step - self.step)
            if self._bar.n == step:  # tqdm redraws at most every mininterval: keep postfix cheap
                self._bar.set_postfix(
                    loss=f"{metrics['train/loss']:.4f}",
                    val_acc=f"{metrics['val/acc']:.4f}",
                    refresh=False,
                )
        self.step = step
        self.metrics = metrics

    def close(self, status: str = "done") -> str:
        """Finish the bar or print the plain line; returns the plain line."""
        seconds = time.perf_counter() - self.start
        rate = self.step / seconds if seconds > 0 else 0.0
        loss = self.metrics.get("train/loss", float("nan"))
        acc = self.metrics.get("val/acc", float("nan"))
        line = (
            f"[{self.name}] {status}: step {self.step}/{self.total}  loss {loss:.4f}  "
            f"val_acc {acc:.4f}  {rate:,.0f} it/s  {seconds:.1f}s"
        )
        if self._bar is not None:
            self._bar.close()
        if self.mode in ("plain", "bar"):
            print(line, file=self.stream, flush=True)
        return line
