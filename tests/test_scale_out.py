"""Scaling out: N worker processes on one Optuna study in PostgreSQL, logging to one MLflow
tracking server (`doomnet server`, its metadata in another PostgreSQL database). Real
processes, real PostgreSQL, real signals; digits and short runs.

Each worker is the README's command, `train.py -m ... hydra.sweeper.storage=postgresql://...`,
in its own sweep folder, as it would be on its own machine. A worker that should look like
another machine runs in its own UTS namespace (`unshare --uts`, another host name), so only
the heartbeat can tell the others that it died.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from doomnet.trial import JOB_PREFIX, SWEEPER_PREFIX, open_storage

REPO = Path(__file__).resolve().parent.parent
STUDY = "scale"
optuna.logging.set_verbosity(optuna.logging.WARNING)

# A study of TPE over two parameters, no pruning (every trial runs to its last step).
SWEEP = [
    "-m",
    "hydra/sweeper=optuna",
    "tracking=server",
    f"hydra.sweeper.study_name={STUDY}",
    "hydra.sweeper.pruner=none",
    "lr=tag(log, interval(0.05, 0.5))",
    "hidden=choice(16, 32, 64)",
    "data=digits",
    "init=he",
    "batch_size=64",
    "progress=none",
    "tracking.flush_every_s=0.5",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DOOMNET_"))}
    return {**out, "HYDRA_FULL_ERROR": "0", **extra}


class Server:
    """`doomnet server` on a PostgreSQL database: start, stop (SIGTERM to its process group,
    as a service manager does), start again on the same port and database."""

    def __init__(self, project: Path, backend: str) -> None:
        self.project = project
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = project / "server.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "doomnet", "server", "--backend-store-uri"]
        command += [self.backend, "--port", str(self.port), "--project", str(self.project)]
        command += ["--workers", "1"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                command,
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # mlflow server forks uvicorn: stop them as one group
            )
        client = MlflowClient(self.url)
        deadline = time.time() + 180
        while True:
            try:
                client.search_experiments(max_results=1)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"the server exited: {self.log.read_text()[-3000:]}"
                    ) from None
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # stray server workers, if any
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "train.py", root / "train.py")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copytree(REPO / "sweeps", root / "sweeps")
    return root


@pytest.fixture
def server(project: Path, pg_url: str) -> Iterator[Server]:
    """A tracking server whose metadata is in a database of its own (`<test db>_mlflow`: MLflow
    and Optuna both keep an `alembic_version` table, so they cannot share one), dropped after."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(pg_url)
    backend = url.set(database=f"{url.database}_mlflow")
    srv = Server(project, backend.render_as_string(hide_password=False))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                sqlalchemy.text(f'DROP DATABASE IF EXISTS "{backend.database}" WITH (FORCE)')
            )
        admin.dispose()


def other_host_prefix(name: str) -> list[str]:
    """A command prefix that runs a process under another host name, if this machine allows
    it (root, or unprivileged user namespaces); else [] (the process shares this host)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for flags in (["--uts"], ["--user", "--map-root-user", "--uts"]):
        probe = [unshare, *flags, "sh", "-c", 'hostname "$0" && hostname', name]
        done = subprocess.run(probe, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == name:
            return [unshare, *flags, "sh", "-c", 'hostname "$0" && exec "$@"', name]
    return []


def start_worker(
    project: Path, index: int, storage: str, args: list[str], env: dict, prefix=()
) -> subprocess.Popen:
    """One worker: the README's command, in its own sweep folder (as on its own machine)."""
    command = [*prefix, sys.executable, "train.py", *SWEEP, f"hydra.sweeper.storage='{storage}'"]
    command += [*args, f"hydra.sweep.dir=multirun/worker-{index}"]
    log = open(project / f"worker-{index}.log", "w")  # noqa: SIM115  (closed with the test)
    return subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(workers: list[subprocess.Popen], timeout: float = 900) -> list[int]:
    codes = []
    for proc in workers:
        try:
            codes.append(proc.wait(timeout=timeout))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes


def worker_logs(project: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(project.glob("worker-*.log"))
    )


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    """One storage (one connection pool) per database for all the test's polling: a new one
    every 0.1 s would hold PostgreSQL connections until garbage collection ("too many
    clients")."""
    return open_storage(url)


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=_storage(storage))


def wait_for(storage: str, check: Callable[[optuna.Study], object], timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(KeyError, ValueError):
            found = check(load(storage))
            if found:
                return found
        time.sleep(0.1)
    raise AssertionError("the study never reached the awaited state")


def runs(url: str) -> list:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("doomnet")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def one_parent_and_children(url: str) -> tuple:
    """The study's single MLflow parent run and its child runs; nothing else in the experiment."""
    found = runs(url)
    parents = [r for r in found if r.data.tags.get("doomnet.kind") == "sweep"]
    assert len(parents) == 1, f"{len(parents)} parent runs for one study"
    (parent,) = parents
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) + 1 == len(found)
    return parent, children


def history_steps(url: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(url).get_metric_history(run_id, key))


def nothing_running(url: str, study: optuna.Study) -> None:
    assert [r.info.run_name for r in runs(url) if r.info.status == "RUNNING"] == []
    left = [t.number for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert left == []


# --- the checks ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_share_one_study_of_24_trials(project: Path, pg_url: str, server) -> None:
    env = clean_env(DOOMNET_TRACKING_SERVER=server.url)
    args = ["hydra.sweeper.n_trials=24", "iterations=600", "eval_every=20"]
    workers = [start_worker(project, i, pg_url, args, env) for i in range(3)]
    assert finish(workers) == [0, 0, 0], worker_logs(project)

    study = load(pg_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 24  # none over, none short
    assert sorted(t.number for t in study.trials) == list(range(24))
    pids = {t.system_attrs[SWEEPER_PREFIX]["pid"] for t in study.trials}
    assert pids == {w.pid for w in workers}  # all three took trials
    proposals = {(t.params["lr"], t.params["hidden"]) for t in study.trials}
    assert len(proposals) == 24  # workers' samplers are seeded apart: no repeated proposals

    parent, children = one_parent_and_children(server.url)
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(24))
    assert {r.info.run_id for r in children} == {
        t.user_attrs["mlflow.run_id"] for t in study.trials
    }
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("val/acc", "train/loss"):
            assert history_steps(server.url, run.info.run_id, key) == list(range(20, 601, 20))
    nothing_running(server.url, study)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_sigkilled_worker_s_trial_is_failed_by_heartbeat_and_retried(
    project: Path, pg_url: str, server
) -> None:
    env = clean_env(DOOMNET_TRACKING_SERVER=server.url)
    args = [
        "hydra.sweeper.n_trials=24",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=5",
        "iterations=3000",
        "eval_every=100",
    ]
    far = other_host_prefix("doomnet-far-worker")
    workers = [start_worker(project, i, pg_url, args, env) for i in range(2)]
    victim = start_worker(project, 2, pg_url, args, env, prefix=far)
    workers.append(victim)

    def victim_mid_trial(study: optuna.Study):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job = trial.system_attrs.get(JOB_PREFIX) or {}
            if job.get("pid") == victim.pid and len(trial.intermediate_values) >= 2:
                return trial
        return None

    try:
        killed = wait_for(pg_url, victim_mid_trial)
        victim.send_signal(signal.SIGKILL)
    finally:
        codes = finish(workers)
    assert codes == [0, 0, -signal.SIGKILL], worker_logs(project)

    study = load(pg_url)
    failed = study.trials[killed.number]
    assert failed.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert retry.system_attrs[SWEEPER_PREFIX]["pid"] != victim.pid
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 24 and states.count(TrialState.FAIL) == 1

    parent, children = one_parent_and_children(server.url)
    assert parent.info.status == "FINISHED"
    dead = MlflowClient(server.url).get_run(failed.user_attrs["mlflow.run_id"])
    assert dead.info.status == "FAILED"
    reason = dead.data.tags["doomnet.end_reason"]
    if far:  # another machine: only its silence tells
        assert reason == "no heartbeat for 5 s", reason
    else:  # this machine: its pid tells at once
        assert "died" in reason, reason
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == 24 and len(children) == 25
    for run in finished:
        assert history_steps(server.url, run.info.run_id, "val/acc") == list(range(100, 3001, 100))
    nothing_running(server.url, study)


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_ride_out_a_tracking_server_restart_without_losing_points(
    project: Path, pg_url: str, server
) -> None:
    env = clean_env(DOOMNET_TRACKING_SERVER=server.url)
    args = ["hydra.sweeper.n_trials=6", "iterations=30000", "eval_every=300"]
    workers = [start_worker(project, i, pg_url, args, env) for i in range(2)]

    def logging_runs(study: optuna.Study):
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        found = [
            t.user_attrs["mlflow.run_id"]
            for t in running
            if "mlflow.run_id" in t.user_attrs and len(t.intermediate_values) >= 2
        ]
        return found if len(found) == 2 else None

    try:
        in_flight = wait_for(pg_url, logging_runs)
        down_ms = int(time.time() * 1000)
        server.stop()
        time.sleep(8)  # the outage: training goes on, metric writes are refused and retried
        server.start()
        up_ms = int(time.time() * 1000)
    finally:
        codes = finish(workers)
    assert codes == [0, 0], worker_logs(project)

    study = load(pg_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    parent, children = one_parent_and_children(server.url)
    assert len(children) == 6 and parent.info.status == "FINISHED"
    complete = list(range(300, 30001, 300))
    for run in children:
        if run.info.status == "FAILED":  # allowed only with the reason said
            assert run.data.tags.get("doomnet.end_reason"), run.info.run_name
            continue
        assert run.info.status == "FINISHED"
        assert history_steps(server.url, run.info.run_id, "val/acc") == complete
    client = MlflowClient(server.url)
    for run_id in in_flight:  # the runs cut off mid-curve kept the points of the outage
        assert client.get_run(run_id).info.status == "FINISHED"
        points = client.get_metric_history(run_id, "val/acc")
        assert [m.step for m in sorted(points, key=lambda m: m.step)] == complete
        assert any(down_ms < m.timestamp < up_ms for m in points)  # logged while it was down
    nothing_running(server.url, study)


@pytest.mark.slow
@pytest.mark.postgres
def test_submitit_local_launcher_runs_the_trials_in_their_own_processes(
    project: Path, pg_url: str
) -> None:
    """hydra/launcher=submitit_local: each trial a submitit job (another process), two at once,
    on a PostgreSQL study; runs in the project's local MLflow store."""
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *[a for a in SWEEP if a not in ("tracking=server",)],
            f"hydra.sweeper.storage='{pg_url}'",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.n_trials=4",
            "iterations=200",
            "eval_every=20",
        ],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    study = load(pg_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    for trial in study.trials:
        job, sweeper = trial.system_attrs[JOB_PREFIX], trial.system_attrs[SWEEPER_PREFIX]
        assert job["pid"] != sweeper["pid"] and job["ended"]  # ran in a submitit process
    assert len({t.system_attrs[JOB_PREFIX]["pid"] for t in study.trials}) == 4  # one job each
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow.run_id"])
        assert run.info.status == "FINISHED"
        assert history_steps(client.tracking_uri, run.info.run_id, "val/acc") == list(
            range(20, 201, 20)
        )


@pytest.mark.slow
def test_the_slurm_preset_is_submitit_s_slurm_launcher_with_our_defaults(project: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hydra/launcher=slurm",
            "--cfg",
            "hydra",
            "-p",
            "hydra.launcher",
        ],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import yaml

    launcher = yaml.safe_load(done.stdout)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["cpus_per_task"], launcher["mem_gb"], launcher["timeout_min"]) == (2, 4, 60)
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
