"""The Hydra app end to end, as a user runs it: `train.py` in a temp copy of the project, a real
SQLite MLflow store, real subprocesses and signals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from doomnet.model import DoomNet

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the runnable project (train.py + conf/) with no store yet."""
    shutil.copy(REPO / "train.py", tmp_path / "train.py")
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    return tmp_path


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out["HYDRA_FULL_ERROR"] = "0"
    return out


def train(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client_for(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def all_runs(project: Path) -> list:
    client = client_for(project)
    experiment = client.get_experiment_by_name("doomnet")
    assert experiment is not None, "the experiment was never created"
    return list(client.search_runs([experiment.experiment_id], run_view_type=3, max_results=1000))


def test_readme_grid_gives_four_finished_children_under_one_parent(project: Path) -> None:
    iterations = 40
    done = train(
        project,
        "-m",
        "lr=0.05,0.2",
        "hidden=20,64",
        f"iterations={iterations}",
        "batch_size=256",
        "eval_every=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]

    runs = all_runs(project)
    parents = [r for r in runs if r.data.tags.get("doomnet.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    grid = {(c.data.params["lr"], c.data.params["hidden"]) for c in children}
    assert grid == {("0.05", "20"), ("0.05", "64"), ("0.2", "20"), ("0.2", "64")}
    assert {c.info.run_name for c in children} == {
        "lr=0.05 hidden=20",
        "lr=0.05 hidden=64",
        "lr=0.2 hidden=20",
        "lr=0.2 hidden=64",
    }

    client = client_for(project)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val/acc")
        assert [m.step for m in history] == list(range(2, iterations + 1, 2))
        for key in ("train/loss", "train/acc", "val/loss"):
            assert len(client.get_metric_history(child.info.run_id, key)) == iterations // 2
        for key in ("val/best_acc", "test/acc", "time/train_s", "time/samples_per_s"):
            assert key in child.data.metrics
        tags = child.data.tags
        assert tags["data.name"] == "mnist_5k" and tags["data.checksum"].startswith("sha256:")
        assert "version.numpy" in tags and "host" in tags and "command" in tags
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"model", "config.yaml", "overrides.yaml", "learning_curve.png"} <= artifacts
        weights = client.download_artifacts(
            child.info.run_id, "model/weights.npz", str(project / "dl" / child.info.run_id)
        )
        model = DoomNet.load(weights)
        assert model.hidden_sizes == (int(child.data.params["hidden"]),)
    # the summary table lists every job
    assert done.stdout.count("FINISHED") + done.stdout.count("COMPLETE") >= 4


def test_failed_jobs_do_not_stop_the_sweep_and_are_all_listed(project: Path) -> None:
    done = train(
        project, "-m", "data=digits", "lr=0.1,2000,5000", "iterations=60", "init=he", "eval_every=5"
    )
    assert done.returncode != 0
    runs = all_runs(project)
    children = {r.data.params["lr"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"0.1", "2000.0", "5000.0"} or set(children) == {"0.1", "2000", "5000"}
    statuses = {lr: r.info.status for lr, r in children.items()}
    assert sorted(statuses.values()) == ["FAILED", "FAILED", "FINISHED"]
    for run in children.values():
        if run.info.status == "FAILED":
            assert "DivergedError" in run.data.tags["error"]
    parent = next(r for r in runs if r.data.tags.get("doomnet.kind") == "sweep")
    assert parent.info.status == "FAILED"
    # one sentence naming both failed jobs, not only the first
    message = done.stderr.strip().splitlines()[-1]
    assert "2 of 3 jobs failed" in message
    assert "lr=2000" in message and "lr=5000" in message


def wait_for_running_run(project: Path, timeout: float = 90) -> str:
    """The id of a RUNNING run that already has val/acc points, read through a read-only
    SQLite connection so the test never races the job creating the store."""
    db = project / "mlruns" / "mlflow.db"
    query = (
        "SELECT r.run_uuid FROM runs r JOIN metrics m ON m.run_uuid = r.run_uuid "
        "WHERE r.status = 'RUNNING' AND m.key = 'val/acc' LIMIT 1"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        if db.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as c:
                    row = c.execute(query).fetchone()
            except sqlite3.Error:  # tables not created yet
                row = None
            if row:
                return row[0]
        time.sleep(0.3)
    raise AssertionError("no RUNNING run with metrics appeared")


def test_sigterm_leaves_the_run_killed_with_its_partial_curve(project: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "data=digits",
            "iterations=1000000",
            "batch_size=32",
            "tracking.flush_every_s=0.2",
        ],
        cwd=project,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = wait_for_running_run(project)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    run = client_for(project).get_run(run_id)
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags["doomnet.end_reason"]
    assert client_for(project).get_metric_history(run_id, "val/acc")


def test_sigkilled_run_is_closed_as_killed_next_time_the_store_is_used(project: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "data=digits",
            "iterations=1000000",
            "batch_size=32",
            "tracking.flush_every_s=0.2",
        ],
        cwd=project,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_id = wait_for_running_run(project)
    finally:
        proc.kill()
        proc.wait()
    assert client_for(project).get_run(run_id).info.status == "RUNNING"
    done = train(project, "data=digits", "iterations=5")
    assert done.returncode == 0, done.stderr[-2000:]
    run = client_for(project).get_run(run_id)
    assert run.info.status == "KILLED"
    assert "died" in run.data.tags["doomnet.end_reason"]


def test_four_jobs_started_at_once_on_a_new_store_all_succeed(project: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "train.py", "data=digits", "iterations=30", f"seed={seed}"],
            cwd=project,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = all_runs(project)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "override, words",
    [
        ("lr=abc", "lr must be a number"),
        ("hiden=20", "did you mean 'hidden'"),
        ("lr=-1", "lr must be > 0"),
        ("lr=nan", "lr must be a finite number"),
        ("lr=1e400", "lr must be a finite number"),
        ("hidden=0", "hidden must be >= 1"),
        ("iterations=0", "iterations must be >= 1"),
        ("data=nope", "Unknown data set 'nope'"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("batch_size=100000", "batch_size must be <="),
        ("-m lr=0.1,-2 hidden=20,64", "lr must be > 0, got -2"),
    ],
)
def test_invalid_values_fail_fast_with_one_line_and_no_run(
    project: Path, override: str, words: str
) -> None:
    done = train(project, *override.split())
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert words in lines[0]
    db = project / "mlruns" / "mlflow.db"
    if db.exists():  # batch_size is checked against the data: the store may exist, no run may
        assert all_runs(project) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_ui_serves_the_runs_over_the_rest_api(project: Path) -> None:
    assert train(project, "data=digits", "iterations=5").returncode == 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "doomnet", "ui", "--port", str(port), "--project", str(project)],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    url + "experiments/get-by-name?experiment_name=doomnet", timeout=5
                ) as response:
                    experiment = json.load(response)["experiment"]
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        body = json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode()
        request = urllib.request.Request(
            url + "runs/search", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)["runs"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(runs) == 1
    assert runs[0]["info"]["status"] == "FINISHED"
    assert runs[0]["info"]["run_name"] == "data=digits iterations=5"
