"""Sweep throughput: trials per minute of a 20-trial study on mnist_5k, 1 worker vs 2.

Each sweep is the app's own command line in a fresh process, timed from start to exit (Python
start-up, imports, the study, the MLflow parent run and every trial included), with joblib
workers and a throwaway journal, store and sweep folder. The Optuna sweeper (TPE, seed 0, no
pruning, so every trial runs in full):

    python train.py -m hydra/sweeper=optuna 'lr=tag(log, interval(0.01, 0.5))' \\
        'hidden=choice(16, 20, 24, 32)' hydra.sweeper.n_trials=20 hydra.sweeper.pruner=none \\
        hydra/launcher=joblib hydra.sweeper.n_jobs=2 progress=none

or, with `sweeper="grid"`, the grid sweeper on a 5 x 4 grid (lr=0.05,...,0.5 hidden=16,...,32)
with hydra.launcher.n_jobs=1|2. Each trial is the default recipe: 2,000 full-batch iterations,
metrics every iteration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N_TRIALS = 20
GRID = ["lr=0.05,0.1,0.2,0.3,0.5", "hidden=16,20,24,32"]  # 5 x 4 = 20 trials
OPTUNA = [
    "hydra/sweeper=optuna",
    "lr=tag(log, interval(0.01, 0.5))",
    "hidden=choice(16, 20, 24, 32)",
    f"hydra.sweeper.n_trials={N_TRIALS}",
    "hydra.sweeper.pruner=none",
    "hydra.sweeper.study_name=benchmark",
]


def sweep_arguments(sweeper: str, n_jobs: int) -> list[str]:
    """The command-line arguments of a 20-trial sweep with `n_jobs` workers."""
    if sweeper == "optuna":
        return [*OPTUNA, "hydra/launcher=joblib", f"hydra.sweeper.n_jobs={n_jobs}"]
    return [*GRID, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]


def sweep_command(sweeper: str, n_jobs: int, tmp: Path, iterations: int | None = None) -> list[str]:
    extra = [f"iterations={iterations}"] if iterations else []
    storage = [f"hydra.sweeper.storage={tmp / 'optuna.journal'}"] if sweeper == "optuna" else []
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *sweep_arguments(sweeper, n_jobs),
        *storage,
        *extra,
        "progress=none",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment=benchmark",
        f"hydra.sweep.dir={tmp / 'multirun'}",
    ]


def one_sweep(sweeper: str, n_jobs: int, iterations: int | None = None) -> float:
    """Seconds for the whole 20-trial sweep with `n_jobs` workers."""
    with tempfile.TemporaryDirectory() as tmp:
        command = sweep_command(sweeper, n_jobs, Path(tmp), iterations)
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy()
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"sweep with {n_jobs} worker(s) failed:\n{done.stderr[-3000:]}")
    return seconds


def measure(*, sweeper: str = "optuna", quick: bool = False) -> dict:
    iterations = 200 if quick else None
    seconds = {n_jobs: one_sweep(sweeper, n_jobs, iterations) for n_jobs in (1, 2)}
    shown = [f"'{a}'" if " " in a else a for a in sweep_arguments(sweeper, 2)]
    return {
        "sweeper": "optuna (TPE, no pruning)" if sweeper == "optuna" else "grid (doomnet_grid)",
        "launcher": "joblib",
        "trials": N_TRIALS,
        "iterations_per_trial": iterations or 2000,
        "data": "mnist_5k",
        "command": " ".join(["python train.py -m", *shown, "progress=none"]),
        "workers": {
            str(n): {"seconds": s, "trials_per_minute": N_TRIALS * 60.0 / s}
            for n, s in seconds.items()
        },
        "speedup_2_vs_1": seconds[1] / seconds[2],
    }
