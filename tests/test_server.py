"""`doomnet server` on a real PostgreSQL database, and a sweep logging to it over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            api(url, "experiments/search", {"max_results": 1})
            return
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"the server exited: {server.stderr.read()[-2000:]}") from None
            if time.time() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def served(tmp_path: Path, pg_url: str):
    """An MLflow server on a fresh PostgreSQL database, serving artifacts from tmp_path."""
    shutil.copy(REPO / "train.py", tmp_path / "train.py")
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "doomnet",
            "server",
            "--backend-store-uri",
            pg_url,
            "--port",
            str(port),
            "--project",
            str(tmp_path),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server)
        yield tmp_path, url, env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_sweep_logs_runs_metrics_and_artifacts_to_the_server(served) -> None:
    project, url, env = served
    env = {**env, "DOOMNET_TRACKING_SERVER": url}
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "tracking=server",
            "data=digits",
            "lr=0.1,0.2",
            "iterations=20",
            "eval_every=2",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    experiment = api(url, "experiments/get-by-name?experiment_name=doomnet")["experiment"]
    runs = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(runs) == 3
    children = [
        r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))
    ]
    assert len(children) == 2 and all(r["info"]["status"] == "FINISHED" for r in runs)
    for child in children:
        run_id = child["info"]["run_id"]
        history = api(url, f"metrics/get-history?run_id={run_id}&metric_key=val/acc")
        assert [m["step"] for m in history["metrics"]] == list(range(2, 21, 2))
        files = api(url, f"artifacts/list?run_id={run_id}&path=model")["files"]
        assert [f["path"] for f in files] == ["model/weights.npz"]
    # artifacts are kept by the server, not written beside the worker's store
    assert list((project / "mlruns" / "served-artifacts").rglob("weights.npz"))
    assert not (project / "mlruns" / "mlflow.db").exists()
