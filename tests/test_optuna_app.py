"""`hydra/sweeper=optuna` end to end, as a user runs it: `train.py -m ...` in a temp copy of the
project (train.py, conf/, sweeps/), a real journal file or database for Optuna, a real SQLite
MLflow store, real subprocesses, joblib workers and signals. Small data (digits), few steps."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from doomnet.trial import JOB_PREFIX, alive, open_storage

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = [
    "data=digits",
    "init=he",
    "batch_size=64",
    "iterations=60",
    "eval_every=5",
    "progress=none",
]
OPTUNA = ["-m", "hydra/sweeper=optuna"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the runnable project with no stores yet."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "train.py", root / "train.py")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copytree(REPO / "sweeps", root / "sweeps")
    return root


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out["HYDRA_FULL_ERROR"] = "0"
    return {**out, **extra}


def train(project: Path, *args: str, timeout: float = 600, **extra_env: str):
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=project,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(project: Path, *args: str) -> subprocess.Popen:
    """The command in the background, in a process group of its own (as a terminal's job)."""
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=project,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def journal(project: Path) -> str:
    return str(project / "mlruns" / "optuna.journal")


def load(storage: str, name: str = "train") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def client_for(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def all_runs(project: Path) -> list:
    client = client_for(project)
    experiment = client.get_experiment_by_name("doomnet")
    if experiment is None:
        return []
    return list(client.search_runs([experiment.experiment_id], run_view_type=3, max_results=1000))


def children(project: Path) -> list:
    return [r for r in all_runs(project) if "mlflow.parentRunId" in r.data.tags]


def parents(project: Path) -> list:
    return [r for r in all_runs(project) if r.data.tags.get("doomnet.kind") == "sweep"]


def wait_for(
    storage: str, check: Callable[[optuna.Study], object], timeout: float = 180, name="train"
):
    """Poll the study (read-only: the journal is append-only) until `check` is truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(KeyError, ValueError, OSError):
            found = check(load(storage, name))
            if found:
                return found
        time.sleep(0.1)
    raise AssertionError("the study never reached the awaited state")


def running_with_points(
    min_number: int = 0, min_points: int = 2, count: int = 1, max_points: int = 10**9
):
    """A check: `count` RUNNING trials (number >= min_number) with reported values."""

    def check(study: optuna.Study):
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number >= min_number and min_points <= len(t.intermediate_values) <= max_points
        ]
        return trials if len(trials) >= count else None

    return check


def no_running_runs(project: Path) -> None:
    running = [r.info.run_name for r in all_runs(project) if r.info.status == "RUNNING"]
    assert running == [], f"MLflow runs left RUNNING: {running}"


# --- what the issue asks to see ----------------------------------------------------------------


def test_the_grid_sampler_runs_exactly_the_runs_of_the_basic_grid(tmp_path: Path) -> None:
    basic, study_project = tmp_path / "basic", tmp_path / "optuna"
    for root in (basic, study_project):
        root.mkdir()
        shutil.copy(REPO / "train.py", root / "train.py")
        shutil.copytree(REPO / "conf", root / "conf")
    grid = train(basic, "-m", "lr=0.05,0.2", "hidden=20,64", *SMALL)
    assert grid.returncode == 0, grid.stderr[-3000:]
    searched = train(
        study_project,
        *OPTUNA,
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.pruner=none",
        "lr=choice(0.05,0.2)",
        "hidden=choice(20,64)",
        *SMALL,
    )
    assert searched.returncode == 0, searched.stderr[-3000:]

    def runs(root: Path) -> set:
        return {
            (
                r.info.run_name,
                r.data.params["lr"],
                r.data.params["hidden"],
                r.info.status,
                r.data.metrics["val/final_acc"],
            )
            for r in children(root)
        }

    assert len(runs(basic)) == 4
    assert runs(study_project) == runs(basic)  # same names, values, statuses and results
    study = load(journal(study_project))
    assert states(study) == {"COMPLETE": 4}  # n_trials is 20: the grid ends the study
    by_name = {r.info.run_name: r.data.metrics["val/final_acc"] for r in children(basic)}
    for trial in study.trials:
        assert trial.value == pytest.approx(by_name[trial.user_attrs["run_name"]])


def test_tpe_prunes_trials_of_a_hopeless_region_before_their_last_step(project: Path) -> None:
    iterations, every = 100, 5
    done = train(
        project,
        *OPTUNA,
        "lr=tag(log, interval(1e-5, 1))",
        "hydra.sweeper.n_trials=14",
        "hydra.sweeper.pruner={name: median, n_startup_trials: 3, n_warmup_steps: 10}",
        *SMALL,
        f"iterations={iterations}",
        f"eval_every={every}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(journal(project))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert pruned, "no trial was pruned"
    assert len(pruned) + len(complete) == 14
    best = study.best_trial
    client = client_for(project)
    for trial in pruned:
        steps = sorted(trial.intermediate_values)
        assert steps[-1] < iterations  # stopped before its last step
        assert trial.params["lr"] < best.params["lr"]  # and it was in the slow region
        run = client.get_run(trial.user_attrs["mlflow.run_id"])
        assert run.info.status == "KILLED"
        assert run.data.tags["optuna.state"] == "PRUNED"
        assert run.data.tags["optuna.trial"] == str(trial.number)
        curve = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in curve] == steps  # the partial curve is kept, point for point
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow.run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == iterations // every
    (parent,) = parents(project)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    assert parent.data.tags["optuna.best_run_id"] == best.user_attrs["mlflow.run_id"]
    assert parent.data.params["search.lr"] == "interval(1e-05, 1) log"
    assert "MedianPruner" in parent.data.tags["optuna.pruner"]
    assert parent.data.tags["optuna.sampler"].startswith("TPESampler(seed=0")
    # the table of the best trials and the dashboard command
    assert f"best: #{best.number}" in done.stdout
    assert f"optuna-dashboard {journal(project)}" in done.stdout


@pytest.mark.parametrize(
    "storage, workers",
    [("journal", 1), ("sqlite", 1), ("journal", 2)],
    ids=["journal", "sqlite-url", "journal-joblib-2-workers"],
)
def test_a_sweep_killed_mid_trial_resumes_to_exactly_n_trials(
    project: Path, storage: str, workers: int
) -> None:
    url = journal(project)
    args = [
        *OPTUNA,
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.n_trials=3",
        "lr=tag(log, interval(0.05, 0.5))",
        "data=digits",
        "init=he",
        "batch_size=32",
        "iterations=20000",
        "eval_every=200",
        "progress=none",
    ]
    if storage == "sqlite":
        (project / "mlruns").mkdir()
        url = f"sqlite:///{project / 'mlruns' / 'optuna.db'}"
        args.append(f"hydra.sweeper.storage='{url}'")
    if workers > 1:  # the trials run in joblib workers, which outlive the killed sweep
        args += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"]
        args.append(f"hydra.sweeper.n_jobs={workers}")
    proc = start(project, *args)
    try:
        wait_for(url, running_with_points(min_number=1, min_points=2, max_points=80))
    finally:
        proc.kill()
        proc.wait()
    killed = load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert 1 <= len(killed) <= workers  # the dead sweep left them RUNNING
    killed_runs = [t.user_attrs["mlflow.run_id"] for t in killed if "mlflow.run_id" in t.user_attrs]
    assert killed_runs  # at least the trial caught mid-training had its run
    # the joblib workers notice that their sweep died: they stop the trial and exit
    workers_left = {
        t.system_attrs[JOB_PREFIX]["pid"] for t in killed if JOB_PREFIX in t.system_attrs
    }
    workers_left.discard(proc.pid)
    deadline = time.time() + 120
    while workers_left and time.time() < deadline:
        workers_left = {pid for pid in workers_left if alive(pid)}
        time.sleep(0.5)
    assert not workers_left, f"workers of the dead sweep still alive: {workers_left}"

    again = train(project, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(url)
    counts = states(study)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 3
    assert "RUNNING" not in counts and "WAITING" not in counts
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert {t.number for t in failed} == {t.number for t in killed}  # FAIL: the killed only
    for trial in failed:
        assert "the sweep process" in trial.user_attrs["fail_reason"]
        assert "died" in trial.user_attrs["fail_reason"]
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert retry.params == trial.params and retry.number > trial.number
        assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    # MLflow: nothing RUNNING, the killed trials FAILED with the reason, one parent reused
    no_running_runs(project)
    for run_id in killed_runs:
        run = client_for(project).get_run(run_id)
        assert run.info.status == "FAILED" and "died" in run.data.tags["doomnet.end_reason"]
    (parent,) = parents(project)
    assert parent.info.status == "FINISHED" and "doomnet.end_reason" not in parent.data.tags
    assert {c.data.tags["mlflow.parentRunId"] for c in children(project)} == {parent.info.run_id}
    # one run per trial whose job started (a trial asked just before the kill may have none)
    run_ids = {t.user_attrs.get("mlflow.run_id") for t in study.trials} - {None}
    assert {c.info.run_id for c in children(project)} == run_ids
    # job numbering continues: the resumed sweep's job folders are the trial numbers
    job_dirs = {p.name for p in (project / "multirun").glob("*/*/*") if p.is_dir()}
    assert str(max(t.number for t in study.trials)) in job_dirs


def test_two_joblib_workers_record_every_trial_and_every_point(project: Path) -> None:
    iterations, every = 1500, 10
    done = train(
        project,
        *OPTUNA,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=none",
        "hydra.sweeper.n_trials=6",
        "lr=tag(log, interval(0.05, 0.5))",
        "hidden=choice(16, 32)",
        "data=digits",
        "init=he",
        "batch_size=32",
        f"iterations={iterations}",
        f"eval_every={every}",
        "progress=none",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "locked" not in (done.stdout + done.stderr).lower()
    study = load(journal(project))
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials]
    assert states(study) == {"COMPLETE": 6}, reasons
    runs = children(project)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    client = client_for(project)
    for run in runs:
        for key in ("val/acc", "val/loss", "train/loss", "train/acc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(every, iterations + 1, every)), key
    # two processes ran trials, and at least two trials were in flight at the same time
    assert len({r.data.tags["doomnet.pid"] for r in runs}) >= 2
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    # the job processes Optuna recorded are the ones that wrote the runs
    assert {t.system_attrs[JOB_PREFIX]["pid"] for t in study.trials} == {
        int(r.data.tags["doomnet.pid"]) for r in runs
    }


def test_a_nan_trial_and_a_raising_trial_fail_and_the_study_completes(project: Path) -> None:
    done = train(
        project,
        *OPTUNA,
        "hydra.sweeper.sampler=grid",
        "lr=choice(0.5, 20, 1e30)",  # 1e30: the loss is NaN; 20: it blows up past 10x
        "hidden=16",
        *SMALL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(journal(project))
    assert states(study) == {"COMPLETE": 1, "FAIL": 2}
    reasons = {t.params["lr"]: t.user_attrs.get("fail_reason", "") for t in study.trials}
    assert "DivergedError" in reasons[1e30] and "nan is not finite" in reasons[1e30]
    assert "DivergedError" in reasons[20] and "> 10 x first loss" in reasons[20]
    client = client_for(project)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow.run_id"])
        expected = "FINISHED" if trial.state == TrialState.COMPLETE else "FAILED"
        assert run.info.status == expected
        assert run.data.tags["optuna.state"] == trial.state.name
        if expected == "FAILED":
            assert run.data.tags["error"] == trial.user_attrs["fail_reason"]
    assert parents(project)[0].info.status == "FINISHED"
    assert "nan is not finite" in done.stdout and "> 10 x first loss" in done.stdout


APP = """
import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    if cfg.mode == "raise":
        raise RuntimeError("the objective could not be computed")
    values = {"ok": 0.5, "not_a_number": "nan", "infinite": "inf", "minus_infinite": "-inf"}
    return float(values[cfg.mode])


main()
"""


def test_any_app_returning_nan_or_inf_gets_failed_trials(tmp_path: Path) -> None:
    """The sweeper is a Hydra plugin: an app without DoomNet's tracking/trial sections works,
    and a non-finite objective (Optuna would record inf as COMPLETE) is a FAIL."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("mode: ok\n")
    (tmp_path / "app.py").write_text(APP)
    done = subprocess.run(
        [
            sys.executable,
            "app.py",
            *OPTUNA,
            "hydra.sweeper.sampler=grid",
            "mode=choice(ok, not_a_number, infinite, minus_infinite, raise)",
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(str(tmp_path / "mlruns" / "optuna.journal"), "app")
    by_mode = {t.params["mode"]: t for t in study.trials}
    assert by_mode["ok"].state == TrialState.COMPLETE and by_mode["ok"].value == 0.5
    for mode, words in [
        ("not_a_number", "the objective is nan"),
        ("infinite", "the objective is inf"),
        ("minus_infinite", "the objective is -inf"),
        ("raise", "RuntimeError: the objective could not be computed"),
    ]:
        assert by_mode[mode].state == TrialState.FAIL
        assert words in by_mode[mode].user_attrs["fail_reason"]


def test_max_failures_stops_the_study_with_one_line(project: Path) -> None:
    done = train(
        project,
        *OPTUNA,
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.max_failures=2",
        "lr=choice(20, 1e30)",
        "hidden=choice(16, 32)",
        *SMALL,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "2 trials failed (max_failures=2)" in lines[0]
    assert states(load(journal(project))) == {"FAIL": 2}
    (parent,) = parents(project)
    assert parent.info.status == "FAILED"
    assert "max_failures=2" in parent.data.tags["doomnet.end_reason"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["hydra.sweeper.sampler=annealing", "lr=interval(0.1, 1)"], "unknown sampler 'annealing'"),
        (["hydra.sweeper.pruner=early", "lr=interval(0.1, 1)"], "unknown pruner 'early'"),
        (
            ["+hydra.sweeper.sampler.n_startup=3", "lr=interval(0.1, 1)"],
            "bad sampler: TPESampler.__init__() got an unexpected keyword argument 'n_startup'",
        ),
        (["hydra.sweeper.direction=up", "lr=interval(0.1, 1)"], "direction must be"),
        (["hydra.sweeper.n_trials=0", "lr=interval(0.1, 1)"], "n_trials must be"),
        (["hydra.sweeper.sampler=grid", "lr=interval(0.1, 1)"], "lr is an interval"),
        (["l2=tag(log, interval(0, 1))"], "must hold for `log=True`"),
        (["lr=0.1"], "nothing to search"),
        (["lr=interval(-1, 1)"], "lr must be > 0, got -1"),  # the pre-flight, value by value
        (["hiden=choice(16, 32)"], "did you mean 'hidden'"),
        (["sweeps=bad"], "did you mean 'hidden'"),  # a named sweep's own search space
        (["sweeps=nope"], "Unknown sweeps 'nope'; choose one of: bad, lr_hidden"),
        (["hydra.sweeper.custom_search_space=nowhere.fn", "lr=interval(0.1, 1)"], "cannot be"),
    ],
)
def test_a_bad_sweep_definition_fails_in_one_line_with_no_run(project: Path, args, words) -> None:
    (project / "sweeps" / "bad.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    params:\n      hiden: choice(16, 32)\n"
    )
    done = train(project, *OPTUNA, *args, *SMALL)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and words in lines[0]
    assert all_runs(project) == []
    assert not (project / "mlruns" / "optuna.journal").exists()
    assert not (project / "multirun").exists()


def test_a_changed_search_space_is_refused_unless_the_study_is_renamed(project: Path) -> None:
    first = ["lr=interval(0.1, 1)", "hydra.sweeper.n_trials=2"]
    assert train(project, *OPTUNA, *first, *SMALL).returncode == 0
    changed = train(project, *OPTUNA, "lr=interval(0.01, 1)", "hydra.sweeper.n_trials=2", *SMALL)
    assert changed.returncode == 2
    lines = [line for line in changed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "study 'train' in mlruns/optuna.journal has a different search space" in lines[0]
    assert "lr was interval(0.1, 1), now interval(0.01, 1)" in lines[0]
    assert "hydra.sweeper.study_name=" in lines[0]
    assert len(load(journal(project)).trials) == 2 and len(children(project)) == 2
    renamed = train(
        project,
        *OPTUNA,
        "lr=interval(0.01, 1)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=wider",
        *SMALL,
    )
    assert renamed.returncode == 0, renamed.stderr[-2000:]
    assert len(load(journal(project), "wider").trials) == 2


TINY = """# @package _global_
defaults:
  - override /data: digits
  - override /hydra/sweeper: optuna
iterations: 60
eval_every: 5
batch_size: 64
init: he
progress: none
hydra:
  sweeper:
    study_name: tiny
    n_trials: 3
    params:
      lr: tag(log, interval(0.05, 1))
      hidden: choice(16, 32)
"""


def test_a_named_sweep_runs_from_the_sweeps_folder_and_reruns_resume(project: Path) -> None:
    (project / "sweeps" / "tiny.yaml").write_text(TINY)
    done = train(project, "-m", "sweeps=tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(journal(project), "tiny")
    assert len(study.trials) == 3
    assert set(study.trials[0].params) == {"lr", "hidden"}
    (parent,) = parents(project)
    assert parent.info.run_name == "study tiny"
    again = train(project, "-m", "sweeps=tiny")  # n_trials is the total: nothing left to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(load(journal(project), "tiny").trials) == 3
    more = train(project, "-m", "sweeps=tiny", "hydra.sweeper.n_trials=4")
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(load(journal(project), "tiny").trials) == 4
    assert len(parents(project)) == 1 and len(children(project)) == 4


@pytest.mark.parametrize(
    "how, code, reason",
    [("sigterm", 143, "interrupted (SIGTERM)"), ("ctrl-c", 130, "interrupted (Ctrl-C)")],
)
def test_an_interrupted_sweep_stops_its_workers_leaves_nothing_running_and_resumes(
    project: Path, how: str, code: int, reason: str
) -> None:
    """SIGTERM to the sweep process alone (it stops its jobs), or Ctrl-C at a terminal
    (SIGINT to the whole process group, joblib workers included)."""
    args = [
        *OPTUNA,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.pruner=none",
        "hydra.sweeper.n_trials=3",
        "lr=tag(log, interval(0.05, 0.5))",
        "data=digits",
        "init=he",
        "batch_size=32",
        "iterations=60000",
        "eval_every=600",
        "progress=none",
    ]
    proc = start(project, *args)
    try:
        # both workers mid-trial
        interrupted = wait_for(journal(project), running_with_points(min_points=1, count=2))
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err[-3000:]
    study = load(journal(project))
    assert "RUNNING" not in states(study)
    stopped = [study.trials[t.number] for t in interrupted]
    # a trial in its last evaluations may finish before the signal lands: COMPLETE is right
    assert any(t.state == TrialState.FAIL for t in stopped)
    for trial in stopped:
        if trial.state == TrialState.COMPLETE:
            continue
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["fail_reason"] == reason
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert retry.state == TrialState.WAITING and retry.params == trial.params
    no_running_runs(project)
    for trial in stopped:
        run = client_for(project).get_run(trial.user_attrs["mlflow.run_id"])
        assert run.info.status == ("FINISHED" if trial.state == TrialState.COMPLETE else "KILLED")

    again = train(project, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    counts = states(load(journal(project)))
    assert counts.get("COMPLETE", 0) == 3 and "RUNNING" not in counts and "WAITING" not in counts
    no_running_runs(project)


def test_a_killed_worker_fails_its_trial_and_the_study_goes_on(project: Path) -> None:
    args = [
        *OPTUNA,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.pruner=none",
        "hydra.sweeper.n_trials=3",
        "lr=tag(log, interval(0.05, 0.5))",
        "data=digits",
        "init=he",
        "batch_size=32",
        "iterations=20000",
        "eval_every=200",
        "progress=none",
    ]
    proc = start(project, *args)
    try:
        (victim,) = wait_for(journal(project), running_with_points(min_points=2, max_points=80))
        os.kill(victim.system_attrs[JOB_PREFIX]["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    study = load(journal(project))
    counts = states(study)
    assert counts["COMPLETE"] == 3 and "RUNNING" not in counts
    failed = study.trials[victim.number]
    assert failed.state == TrialState.FAIL
    assert "process failed" in failed.user_attrs["fail_reason"]
    run = client_for(project).get_run(failed.user_attrs["mlflow.run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["doomnet.end_reason"] == failed.user_attrs["fail_reason"]
    no_running_runs(project)


def test_a_second_optuna_sweeper_plugin_is_refused_in_one_line(
    project: Path, tmp_path: Path
) -> None:
    """PyPI's hydra-optuna-sweeper registers hydra/sweeper=optuna too: say so and stop."""
    official = tmp_path / "site" / "hydra_plugins" / "hydra_optuna_sweeper"
    official.mkdir(parents=True)
    (official / "__init__.py").write_text("")
    (official / "optuna_sweeper.py").write_text(
        "from hydra.core.config_store import ConfigStore\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "class Official(Sweeper):\n"
        "    def setup(self, **kwargs):\n"
        "        raise SystemExit('the official plugin ran')\n"
        "    def sweep(self, arguments):\n"
        "        raise SystemExit('the official plugin ran')\n"
        "ConfigStore.instance().store(group='hydra/sweeper', name='optuna', node={\n"
        "    '_target_': 'hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.Official'})\n"
    )
    done = train(project, *OPTUNA, "lr=interval(0.1, 1)", *SMALL, PYTHONPATH=str(tmp_path / "site"))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "hydra-optuna-sweeper is installed as well" in lines[0]
    assert all_runs(project) == []


SPACE = '''
def momentum_when_needed(cfg, trial):
    """A conditional parameter: the momentum only where the optimizer has one."""
    if trial.params["optimizer"] == "momentum":
        trial.suggest_float("optimizer.momentum", 0.5, 0.95)
'''


def test_a_custom_search_space_adds_conditional_parameters(project: Path) -> None:
    (project / "space_ext.py").write_text(SPACE)
    done = train(
        project,
        *OPTUNA,
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.pruner=none",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.custom_search_space=space_ext.momentum_when_needed",
        "optimizer=choice(sgd, momentum)",
        *SMALL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(journal(project))
    kinds = {t.params["optimizer"] for t in study.trials}
    assert kinds == {"sgd", "momentum"}
    client = client_for(project)
    for trial in study.trials:
        params = client.get_run(trial.user_attrs["mlflow.run_id"]).data.params
        assert params["optimizer.name"] == trial.params["optimizer"]
        if trial.params["optimizer"] == "momentum":
            assert float(params["optimizer.momentum"]) == trial.params["optimizer.momentum"]
        else:
            assert "optimizer.momentum" not in trial.params


@pytest.mark.postgres
def test_a_postgres_storage_is_resumed_by_the_same_command(project: Path, pg_url: str) -> None:
    args = [*OPTUNA, f"hydra.sweeper.storage='{pg_url}'", "lr=interval(0.1, 1)", *SMALL]
    assert train(project, *args, "hydra.sweeper.n_trials=2").returncode == 0
    done = train(project, *args, "hydra.sweeper.n_trials=3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "optuna-dashboard 'postgresql" in done.stdout
    study = load(pg_url)
    assert len(study.trials) == 3 and len(parents(project)) == 1


def test_optuna_dashboard_opens_the_study_with_the_printed_command(project: Path) -> None:
    pytest.importorskip(
        "optuna_dashboard", reason="optuna-dashboard is not installed (--extra dev)"
    )
    done = train(project, *OPTUNA, "lr=interval(0.1, 1)", "hydra.sweeper.n_trials=2", *SMALL)
    assert done.returncode == 0, done.stderr[-2000:]
    (command,) = [line for line in done.stdout.splitlines() if "optuna-dashboard" in line]
    storage = command.split("optuna-dashboard ", 1)[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen(
        [str(dashboard), storage, "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/studies"
                with urllib.request.urlopen(url, timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [s["study_name"] for s in studies] == ["train"]
