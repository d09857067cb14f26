"""Side-by-side timing on a shared, noisy machine: interleave the variants, keep medians.

    times = interleaved({"doomnet": step_a, "torch": step_b}, rounds=15, inner=3)
    times["doomnet"].median, ratio(times, "doomnet", "torch")

Each round runs every variant `inner` times in turn (A A A, B B B, A A A, ...) after one
untimed warm-up call each, so a slow minute on the machine hits both variants alike. A
round's value is the median of its `inner` calls; the summary is the median over rounds,
and a ratio is the median of the per-round ratios (both variants measured seconds apart).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Seconds per call of one variant: one value per round (median of `inner` calls)."""

    rounds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def best(self) -> float:
        return min(self.rounds)

    def summary(self) -> dict[str, float | int]:
        return {
            "median_s": self.median,
            "min_s": self.best,
            "max_s": max(self.rounds),
            "rounds": len(self.rounds),
        }


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    inner: int = 1,
    warmup: int = 1,
    self_timed: bool = False,
) -> dict[str, Timing]:
    """Time every variant, interleaved round by round; see the module docstring.

    With `self_timed`, each call returns the seconds to count itself (it times only its
    part of the work, e.g. not the setup it needs first)."""
    for call in variants.values():
        for _ in range(warmup):
            call()
    times = {name: Timing() for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            calls = []
            for _ in range(inner):
                start = time.perf_counter()
                seconds = call()
                elapsed = time.perf_counter() - start
                calls.append(float(seconds) if self_timed else elapsed)
            times[name].rounds.append(statistics.median(calls))
    return times


def ratio(times: Mapping[str, Timing], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b): < 1 means `a` is faster."""
    return statistics.median(x / y for x, y in zip(times[a].rounds, times[b].rounds, strict=True))


def load_average() -> float:
    """The 1-minute load average (how busy the shared machine was)."""
    return os.getloadavg()[0]
