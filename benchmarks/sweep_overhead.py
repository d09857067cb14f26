"""The Optuna sweeper's cost: per-trial harness overhead, and the speed-up of two workers.

    python benchmarks/sweep_overhead.py                  # 20-trial studies on mnist_5k, 3 repeats
    python benchmarks/sweep_overhead.py --repeats 1 --trials 8 --iterations 100   # a quick look

Every study is the app's own command line in a fresh process, in a throwaway copy of the
project (train.py, conf/, sweeps/) with its own journal file and MLflow store:

    python train.py -m hydra/sweeper=optuna hydra.sweeper.sampler=random \\
        hydra.sweeper.pruner=none hydra.sweeper.n_trials=20 \\
        'lr=tag(log, interval(0.01, 0.5))' 'hidden=choice(16, 32, 64)' \\
        data=mnist_5k iterations=300 eval_every=10 progress=none

1. Overhead per trial = everything a trial costs besides training its model. With the basic
   launcher (one trial at a time), the study loop runs from the first trial's start to the
   last one's end (Optuna's datetime_start/datetime_complete). Each trial's training is then
   timed again here, alone: `fit` with the trial's parameters and no callbacks (updates and
   validation evaluations, the model's own work). Overhead = (loop - sum of training) / trials:
   asking, Hydra's per-job composition, data loading, the MLflow run with its artifacts, the
   trial handle, one journal write per report, telling, the parent run's updates. Process
   start-up (imports, pre-flight, the study and parent run) comes once and is shown apart.
   The same with tracking=off shows how much of it is MLflow.
2. Speed-up = wall time of the whole command with the basic launcher / with
   hydra/launcher=joblib and two trials at once: keep-busy (a new trial as soon as one ends,
   the default), in batches of two (keep_busy=false), and with two BLAS threads per worker
   (threads_per_job=2: 2 x 2 threads on the machine's cores).

Medians over --repeats runs. Results: printed, and written to benchmarks/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPACE = ["lr=tag(log, interval(0.01, 0.5))", "hidden=choice(16, 32, 64)"]
VARIANTS = {
    "basic launcher, 1 trial at a time": [],
    "joblib, 2 workers, keep-busy": [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
    ],
    "joblib, 2 workers, batches of 2": [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.keep_busy=false",
    ],
    "joblib, 2 workers x 2 BLAS threads": [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.threads_per_job=2",
    ],
}


def project_copy(tmp: Path) -> Path:
    root = tmp / "project"
    root.mkdir()
    shutil.copy(ROOT / "train.py", root / "train.py")
    shutil.copytree(ROOT / "conf", root / "conf")
    shutil.copytree(ROOT / "sweeps", root / "sweeps")
    return root


def study_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.pruner=none",
        f"hydra.sweeper.n_trials={args.trials}",
        *SPACE,
        f"data={args.data}",
        f"iterations={args.iterations}",
        f"eval_every={args.eval_every}",
        "progress=none",
        *extra,
    ]


def run_study(args: argparse.Namespace, extra: list[str]) -> tuple[float, list]:
    """(wall seconds of the command, the study's trials) in a fresh project copy."""
    import optuna

    from doomnet.trial import open_storage

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with tempfile.TemporaryDirectory(prefix="doomnet-bench-") as tmp:
        root = project_copy(Path(tmp))
        start = time.perf_counter()
        done = subprocess.run(
            study_command(args, extra), cwd=root, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the study failed:\n{done.stderr[-3000:]}")
        storage = open_storage(str(root / "mlruns" / "optuna.journal"))
        trials = optuna.load_study(study_name="train", storage=storage).trials
    states = {t.state.name for t in trials}
    if states != {"COMPLETE"} or len(trials) != args.trials:
        raise SystemExit(f"expected {args.trials} COMPLETE trials, got {states}")
    return wall, trials


def training_seconds(args: argparse.Namespace, trials: list, splits) -> float:
    """The trials' training again, here, alone: the app's model and optimizer for the trial's
    config, `fit` with no callbacks."""
    from doomnet.config import Config, DataConfig
    from doomnet.fit import fit
    from doomnet.run import build_model, build_optimizer

    total = 0.0
    for trial in trials:
        cfg = Config(
            lr=trial.params["lr"],
            hidden=trial.params["hidden"],
            iterations=args.iterations,
            eval_every=args.eval_every,
            data=DataConfig(name=args.data),
        )
        model = build_model(cfg, splits.n_features, splits.n_classes)
        result = fit(
            model,
            splits,
            iterations=cfg.iterations,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=build_optimizer(cfg),
            eval_every=cfg.eval_every,
            seed=cfg.seed,
        )
        total += result.train_time_s
    return total


def loop_seconds(trials: list) -> float:
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    return (last - first).total_seconds()


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--data", default="mnist_5k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "sweep_overhead.json"))
    args = parser.parse_args()

    from doomnet.config import DataConfig
    from doomnet.data import load_dataset

    splits = load_dataset(args.data, val_fraction=DataConfig().val_fraction, seed=0)
    print(
        f"{args.trials}-trial studies on {args.data}: {args.iterations} full-batch updates, "
        f"val/acc every {args.eval_every}; {os.cpu_count()} cores; medians of {args.repeats}"
    )

    # 1. overhead per trial, basic launcher, with and without MLflow
    overhead: dict[str, dict[str, float]] = {}
    for label, extra in [("with MLflow", []), ("tracking=off", ["tracking=off"])]:
        per_trial, startup, train_share = [], [], []
        for _ in range(args.repeats):
            wall, trials = run_study(args, extra)
            loop = loop_seconds(trials)
            train = training_seconds(args, trials, splits)
            per_trial.append((loop - train) / len(trials))
            startup.append(wall - loop)
            train_share.append(train / len(trials))
        overhead[label] = {
            "overhead_s_per_trial": median(per_trial),
            "overhead_s_per_trial_all": per_trial,
            "training_s_per_trial": median(train_share),
            "startup_and_exit_s": median(startup),
        }
        print(
            f"overhead per trial ({label}): {median(per_trial):.3f} s "
            f"(runs: {', '.join(f'{x:.3f}' for x in per_trial)}); training "
            f"{median(train_share):.3f} s per trial; start-up + exit {median(startup):.1f} s"
        )

    # 2. wall time of the whole study: 1 trial at a time vs 2 workers
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, extra in VARIANTS.items():  # interleaved: drifting load hits all alike
            walls[name].append(run_study(args, extra)[0])
    base = median(walls["basic launcher, 1 trial at a time"])
    speedups = {}
    for name, values in walls.items():
        speedups[name] = base / median(values)
        print(
            f"{name:<38} {median(values):7.1f} s  speed-up {speedups[name]:.2f}x  "
            f"(runs: {', '.join(f'{v:.1f}' for v in values)})"
        )

    result = {
        "trials": args.trials,
        "iterations": args.iterations,
        "eval_every": args.eval_every,
        "data": args.data,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "load_average_at_end": os.getloadavg(),
        "overhead": overhead,
        "wall_s": walls,
        "speedup": speedups,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
