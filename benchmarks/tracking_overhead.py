"""Tracking overhead: the same run with and without MLflow, side by side, medians.

A 2,000-iteration full-batch run on mnist_5k with metrics at every iteration (4 metrics, 8,000
points), once with tracking off and once into a fresh SQLite store, alternating, in one warm
process (imports and the store's creation are paid once before timing: a sweep pays them once
per worker). Two figures:

- whole run: `doomnet.run.run` end to end, tracked vs untracked (the tracked one also opens
  the MLflow run, logs params, tags, the summary and the artifacts: weights, config, plot);
- training loop: `fit` with the RunTracker callback on an open run (plus closing it: the final
  flush) vs `fit` alone, which is what metrics-every-iteration costs while training; measured
  for two flush policies: every 5 s (RunTracker's default), and also whenever 1,000 points
  wait (`flush_at=1000`);
- what the loop waited for, measured inside the tracked runs (time in the RunTracker callback
  plus the final flush at close): the part of the overhead that is not the machine's noise.

    uv run python -m benchmarks --only tracking
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.timing import interleaved, ratio
from doomnet import tracking
from doomnet.config import Config
from doomnet.data import load_dataset
from doomnet.fit import fit
from doomnet.run import build_model, build_optimizer, run


def _config(iterations: int, project: Path, tracked: bool) -> Config:
    cfg = Config(iterations=iterations, eval_every=1, progress="none")
    cfg.tracking.enabled = tracked
    cfg.tracking.uri = f"sqlite:///{project / 'mlflow.db'}"
    cfg.tracking.experiment = "benchmark"
    return cfg


def measure(iterations: int = 2000, rounds: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        # Warm-up: creates the store and imports everything a tracked run touches.
        run(_config(10, project, True), overrides=["warm-up"], project_dir=project)

        def whole(tracked: bool):
            cfg = _config(iterations, project, tracked)
            return lambda: run(cfg, overrides=[f"tracked={tracked}"], project_dir=project)

        whole_times = interleaved(
            {"untracked": whole(False), "tracked": whole(True)}, rounds=rounds, warmup=0
        )

        cfg = _config(iterations, project, True)
        splits = load_dataset(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)

        inside: dict = {}  # flush_at -> [seconds the loop spent in tracking, per round]

        def loop(flush_at: int | None | str):
            """fit() alone ("off"), or fit() with a RunTracker plus closing the run (the final
            flush); opening the run is not counted. flush_at as in RunTracker."""
            client, experiment_id = tracking.open_store(cfg.tracking, project)

            def call() -> float:
                model = build_model(cfg, splits.n_features, splits.n_classes)
                train = {"iterations": iterations, "lr": cfg.lr, "optimizer": build_optimizer(cfg)}
                if flush_at == "off":
                    start = time.perf_counter()
                    fit(model, splits, **train)
                    return time.perf_counter() - start
                run_id = client.create_run(experiment_id, run_name="loop").info.run_id
                tracker = tracking.RunTracker(
                    client, run_id, cfg.tracking.flush_every_s, flush_at=flush_at
                )
                in_callback = 0.0

                def timed(step: int, metrics: dict) -> None:
                    nonlocal in_callback
                    begin = time.perf_counter()
                    tracker(step, metrics)
                    in_callback += time.perf_counter() - begin

                start = time.perf_counter()
                fit(model, splits, callbacks=(timed,), **train)
                trained = time.perf_counter()
                tracker.close("FINISHED")
                end = time.perf_counter()
                # What the loop itself waited for: the callbacks and the final flush.
                inside.setdefault(flush_at, []).append(in_callback + end - trained)
                return end - start

            return call

        loop_times = interleaved(
            {
                "untracked": loop("off"),
                "tracked": loop(None),  # RunTracker's default: every flush_every_s
                "tracked_flush_at": loop(tracking.BATCH),  # and whenever 1,000 points wait
            },
            rounds=rounds,
            warmup=0,
            self_timed=True,
        )
    return {
        "iterations": iterations,
        "metric_points": 4 * iterations,
        "data": "mnist_5k (full batch)",
        "whole_run": {
            "untracked_s": whole_times["untracked"].median,
            "tracked_s": whole_times["tracked"].median,
            "overhead": ratio(whole_times, "tracked", "untracked") - 1,
            "untracked_rounds_s": whole_times["untracked"].rounds,
            "tracked_rounds_s": whole_times["tracked"].rounds,
        },
        "training_loop": {
            "untracked_s": loop_times["untracked"].median,
            "tracked_s": loop_times["tracked"].median,
            "overhead": ratio(loop_times, "tracked", "untracked") - 1,
            "untracked_rounds_s": loop_times["untracked"].rounds,
            "tracked_rounds_s": loop_times["tracked"].rounds,
            "flush": f"every {cfg.tracking.flush_every_s:g} s",
        },
        "training_loop_waited": {  # measured inside the tracked runs: less noisy
            "callbacks_and_final_flush_s": statistics.median(inside[None]),
            "share_of_untracked_loop": statistics.median(inside[None])
            / loop_times["untracked"].median,
        },
        "training_loop_flush_at_1000_points": {
            "tracked_s": loop_times["tracked_flush_at"].median,
            "overhead": ratio(loop_times, "tracked_flush_at", "untracked") - 1,
            "flush": f"every {cfg.tracking.flush_every_s:g} s or when {tracking.BATCH} points wait",
        },
    }
