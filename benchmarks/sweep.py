"""Sweep throughput: trials per minute of a 20-trial sweep on mnist_5k, 1 worker vs 2.

Each sweep is the app's own command line in a fresh process, timed from start to exit (Python
start-up, imports, the MLflow parent run and every trial included), with joblib workers
(`hydra/launcher=joblib hydra.launcher.n_jobs=1|2`) and a throwaway store and sweep folder:

    python train.py -m lr=0.05,0.1,0.2,0.3,0.5 hidden=16,20,24,32 \\
        hydra/launcher=joblib hydra.launcher.n_jobs=2 progress=none

Each trial is the default recipe: 2,000 full-batch iterations, metrics every iteration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ["lr=0.05,0.1,0.2,0.3,0.5", "hidden=16,20,24,32"]  # 5 x 4 = 20 trials
N_TRIALS = 20


def sweep_command(n_jobs: int, tmp: Path, iterations: int | None = None) -> list[str]:
    extra = [f"iterations={iterations}"] if iterations else []
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *GRID,
        *extra,
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={n_jobs}",
        "progress=none",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment=benchmark",
        f"hydra.sweep.dir={tmp / 'multirun'}",
    ]


def one_sweep(n_jobs: int, iterations: int | None = None) -> float:
    """Seconds for the whole 20-trial sweep with `n_jobs` workers."""
    with tempfile.TemporaryDirectory() as tmp:
        command = sweep_command(n_jobs, Path(tmp), iterations)
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy()
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"sweep with {n_jobs} worker(s) failed:\n{done.stderr[-3000:]}")
    return seconds


def measure(*, quick: bool = False) -> dict:
    iterations = 200 if quick else None
    seconds = {n_jobs: one_sweep(n_jobs, iterations) for n_jobs in (1, 2)}
    return {
        "sweeper": "grid (doomnet_grid)",
        "launcher": "joblib",
        "trials": N_TRIALS,
        "iterations_per_trial": iterations or 2000,
        "data": "mnist_5k",
        "command": " ".join(
            [
                "python train.py -m",
                *GRID,
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=N",
                "progress=none",
            ]
        ),
        "workers": {
            str(n): {"seconds": s, "trials_per_minute": N_TRIALS * 60.0 / s}
            for n, s in seconds.items()
        },
        "speedup_2_vs_1": seconds[1] / seconds[2],
    }
