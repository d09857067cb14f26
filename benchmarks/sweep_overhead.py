"""The Optuna sweeper's cost: per-trial harness overhead, and the speed-up of two workers.

    python benchmarks/sweep_overhead.py                  # 20-trial studies on mnist_5k, 3 repeats
    python benchmarks/sweep_overhead.py --repeats 1 --trials 8 --iterations 100   # a quick look

Every study is the app's own command line in a fresh process, in a throwaway copy of the
project (train.py, conf/, sweeps/) with its own journal file and MLflow store:

    python train.py -m hydra/sweeper=optuna hydra.sweeper.sampler=random \\
        hydra.sweeper.pruner=none hydra.sweeper.n_trials=20 \\
        'lr=tag(log, interval(0.01, 0.5))' 'hidden=choice(16, 32, 64)' \\
        data=mnist_5k iterations=300 eval_every=10 progress=none

1. Overhead per trial = what a trial costs besides training its model, measured inside the
   study itself (same machine, same moment, so a busy machine slows both alike). With the
   basic launcher (one trial at a time), trial i occupies the sweep from its ask to the next
   trial's ask (Optuna's datetime_start, datetime_complete); the job's own training loop
   time is its MLflow metric `time/train_s`. Outside the loop: asking, Hydra's composition of
   the job, data loading, opening the trial handle, the MLflow run with its artifacts,
   telling, the parent run's updates. Inside the loop, each evaluation also reports to the
   trial (one journal write) and asks the pruner: that cost is measured apart, per call, on a
   journal file, and added once per evaluation. Process start-up (imports, pre-flight, the
   study and parent run) comes once per study and is shown apart.
2. Speed-up = wall time of the whole command with the basic launcher / with
   hydra/launcher=joblib and two trials at once: keep-busy (a new trial as soon as one ends,
   the default), in batches of two (keep_busy=false), and with two BLAS threads per worker
   (threads_per_job=2: 2 x 2 threads on the machine's cores).

Medians over --repeats runs (and over the trials of a study). Results: printed, and written
to benchmarks/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import math
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


def run_study(args: argparse.Namespace, extra: list[str]) -> dict:
    """Run a study in a fresh project copy: its wall time, trials, and training loop times."""
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
        train_s = training_loop_seconds(root) if "tracking=off" not in extra else {}
    states = {t.state.name for t in trials}
    if states != {"COMPLETE"} or len(trials) != args.trials:
        raise SystemExit(f"expected {args.trials} COMPLETE trials, got {states}")
    return {"wall": wall, "trials": trials, "train_s": train_s}


def training_loop_seconds(root: Path) -> dict[int, float]:
    """trial number -> its job's training loop time (MLflow metric time/train_s)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("doomnet")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return {
        int(r.data.tags["optuna.trial"]): r.data.metrics["time/train_s"]
        for r in runs
        if "optuna.trial" in r.data.tags
    }


def overhead_outside_loop(study: dict) -> list[float]:
    """Per trial: from its ask to the next ask, minus its training loop."""
    trials = sorted(study["trials"], key=lambda t: t.datetime_start)
    out = []
    for trial, following in zip(trials, trials[1:] + [None], strict=True):
        end = following.datetime_start if following else trial.datetime_complete
        out.append((end - trial.datetime_start).total_seconds() - study["train_s"][trial.number])
    return out


def seconds_per_report(reports: int = 300) -> float:
    """Median time of one trial.report + should_prune on a journal file (MedianPruner, five
    finished trials to compare with): what every evaluation of a trial adds to its loop."""
    import optuna

    from doomnet.trial import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="doomnet-bench-") as tmp:
        study = optuna.create_study(
            storage=open_storage(str(Path(tmp) / "optuna.journal")),
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(),
        )
        for _ in range(5):
            trial = study.ask()
            for step in range(1, 31):
                trial.report(0.5, step)
            study.tell(trial, 0.5)
        trial = study.ask()
        times = []
        for step in range(1, reports + 1):
            start = time.perf_counter()
            trial.report(0.9, step)
            trial.should_prune()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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

    print(
        f"{args.trials}-trial studies on {args.data}: {args.iterations} full-batch updates, "
        f"val/acc every {args.eval_every}; {os.cpu_count()} cores; medians of {args.repeats}"
    )

    # 1. overhead per trial, basic launcher
    outside, startup, train = [], [], []
    for _ in range(args.repeats):
        study = run_study(args, [])
        per_trial = overhead_outside_loop(study)
        outside.append(statistics.median(per_trial))
        loop = sum(per_trial) + sum(study["train_s"].values())
        startup.append(study["wall"] - loop)
        train.append(statistics.median(study["train_s"].values()))
    report_s = seconds_per_report()
    evaluations = math.ceil(args.iterations / args.eval_every)
    overhead = {
        "outside_training_loop_s": median(outside),
        "outside_training_loop_s_runs": outside,
        "per_report_s": report_s,
        "reports_per_trial": evaluations,
        "total_s_per_trial": median(outside) + evaluations * report_s,
        "training_loop_s_per_trial": median(train),
        "startup_and_exit_s": median(startup),
    }
    print(
        f"overhead per trial: {overhead['total_s_per_trial']:.3f} s = "
        f"{median(outside):.3f} s outside the training loop "
        f"(runs: {', '.join(f'{x:.3f}' for x in outside)}) + {evaluations} reports x "
        f"{report_s * 1e3:.1f} ms; training loop {median(train):.2f} s per trial; "
        f"start-up + exit {median(startup):.1f} s per study"
    )

    # 2. wall time of the whole study: 1 trial at a time vs 2 workers
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, extra in VARIANTS.items():  # interleaved: drifting load hits all alike
            walls[name].append(run_study(args, extra)["wall"])
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
