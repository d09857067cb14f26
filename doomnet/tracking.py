"""MLflow tracking: the only module that imports MLflow.

It owns the store (SQLite inside `mlruns/` by default), the lifecycle of a training run and of
a sweep's parent run, buffered metric logging off the training loop's hot path, artifacts and
provenance. Every run it opens ends FINISHED, FAILED or KILLED, with the reason as a tag; runs
of processes that died by SIGKILL are closed as KILLED the next time the store is opened.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import getpass
import hashlib
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from doomnet.config import Config, TrackingConfig  # noqa: E402

# MLflow configures its loggers on import: quiet the schema-migration chatter afterwards.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.store"):
    logging.getLogger(_name).setLevel(logging.WARNING)

BATCH = 1000  # MLflow's limit of metrics per log_batch call
# Makes the MLflow UI open our experiments on the training-runs view, not the GenAI one.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
PACKAGES = ("doomnet-sweeps", "numpy", "mlflow", "hydra-core", "optuna", "scikit-learn")


# --- the store ---------------------------------------------------------------------------------


def store_uri(cfg: TrackingConfig, project_dir: Path) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the project's SQLite store (absolute)."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(project_dir) / 'mlruns' / 'mlflow.db').resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creation of a SQLite store: MLflow's migrations race on a new database."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_store(cfg: TrackingConfig, project_dir: Path) -> tuple[MlflowClient, str]:
    """A client on the store and the experiment's id; creates both once, closes orphan runs."""
    uri = store_uri(cfg, project_dir)
    with _store_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri)  # creates a new SQLite schema: inside the lock
            experiment = client.get_experiment_by_name(cfg.experiment)
            if experiment is None:
                experiment_id = _create_experiment(client, uri, cfg.experiment)
            else:
                experiment_id = experiment.experiment_id
                if KIND_TAG not in experiment.tags:
                    client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
        except MlflowException as exc:
            raise RuntimeError(f"Cannot open the MLflow store at {uri}: {exc.message}") from exc
        close_orphans(client, experiment_id)
    return client, experiment_id


def _create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """Create experiment `name`; artifacts beside a SQLite store, else where the server says.
    Another worker may create it at the same moment (no file lock across machines)."""
    db = _sqlite_path(uri)
    location = (db.parent / "artifacts" / name).as_uri() if db else None
    try:
        return client.create_experiment(name, location, tags={KIND_TAG: KIND})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def create_schema(uri: str) -> None:
    """Create (or migrate) the store's tables once, before several processes open it."""
    with _store_lock(uri):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except MlflowException as exc:
            raise RuntimeError(f"Cannot open the MLflow store at {uri}: {exc.message}") from exc


# --- provenance --------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """Start time of a process (Linux clock ticks since boot), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


def owner_tags() -> dict[str, str]:
    """Which process owns a run, so a later process can tell whether it died."""
    pid = os.getpid()
    return {
        "doomnet.host": socket.gethostname(),
        "doomnet.pid": str(pid),
        "doomnet.pid_start": _process_start(pid) or "",
    }


def close_orphans(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of this host whose process no longer exists."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`doomnet.host` = '{host}'",
        max_results=1000,
    )
    closed = []
    for run in running:
        tags = run.data.tags
        pid = int(tags.get("doomnet.pid", "0") or 0)
        if pid and not _alive(pid, tags.get("doomnet.pid_start") or None):
            reason = f"process {pid} on {host} died while the run was RUNNING"
            client.set_tag(run.info.run_id, "doomnet.end_reason", reason)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            closed.append(run.info.run_id)
    return closed


@cache
def _git(project_dir: str) -> dict[str, str]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", project_dir, *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(dirty)}


# The modules whose code decides a run's numbers (reports, CLI and tracking do not).
TRAINING_CODE = ("config.py", "data.py", "fit.py", "model.py", "optim.py", "run.py")


def code_hash() -> str:
    """sha256 over the source of the training code (TRAINING_CODE): tells whether two runs
    trained with the same code, with or without git."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in TRAINING_CODE:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()}"


@cache
def environment_tags() -> dict[str, str]:
    """Package versions, Python, host, BLAS and the code's hash: what a bit-identical re-run
    depends on."""
    tags = {"python": sys.version.split()[0], "host": socket.gethostname()}
    with contextlib.suppress(OSError):
        tags["code.sha256"] = code_hash()
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{package}"] = metadata.version(package)
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info

        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if blas:
            tags["blas.library"] = f"{blas[0]['internal_api']} {blas[0].get('version')}"
            tags["blas.threads"] = str(blas[0]["num_threads"])
            tags["blas.architecture"] = str(blas[0].get("architecture"))
    return tags


@cache
def _lock_hash(project_dir: str) -> dict[str, str]:
    """sha256 of the project's uv.lock: the exact dependency set the run was made with."""
    try:
        digest = hashlib.sha256((Path(project_dir) / "uv.lock").read_bytes()).hexdigest()
    except OSError:
        return {}
    return {"lock.sha256": f"sha256:{digest}"}


def provenance_tags(project_dir: Path) -> dict[str, str]:
    return {
        **environment_tags(),
        **_git(str(Path(project_dir).resolve())),
        **_lock_hash(str(Path(project_dir).resolve())),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "mlflow.source.name": Path(sys.argv[0]).name,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
        **owner_tags(),
    }


def flat_params(cfg: Config) -> dict[str, str]:
    """The resolved config as MLflow params: `lr`, `hidden`, `data.name`, `optimizer.*`, ..."""
    values = asdict(cfg)
    params: dict[str, str] = {}
    for key, value in values.items():
        if key in ("tracking", "trial", "progress"):
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                params[f"{key}.{sub}"] = str(v)
        else:
            params[key] = str(value)
    return params


# --- one training run --------------------------------------------------------------------------


Point = tuple[str, float, int, int]  # one metric point: key, value, timestamp (ms), step


class RunTracker:
    """A training run in MLflow: buffers metrics from the loop, flushes them in a thread.

    Call it as a `fit` callback: `tracker(step, metrics)` only appends to a list. A thread
    writes the buffer every `flush_every_s` seconds, or also as soon as `flush_at` points are
    waiting (off by default: benchmarks/tracking_overhead.py measured no gain from it).
    The writing itself is `point_writer(client)`'s: straight into the tables of a SQL store,
    `log_batch` for a tracking server.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        flush_every_s: float = 5.0,
        flush_at: int | None = None,
    ):
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self.flush_at = flush_at
        self._write = point_writer(client)
        self._buffer: list[Point] = []
        self._buffer_lock = threading.Lock()  # held only to append to or swap out the buffer
        self._lock = threading.Lock()  # one writer at a time: the flusher or the final flush
        self._stop = threading.Event()
        self._wake = threading.Event()  # flush now: flush_at points are waiting, or closing
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._flush_loop, name="mlflow-flush", daemon=True)
        self._thread.start()

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        points = [(k, float(v), now, step) for k, v in metrics.items()]
        with self._buffer_lock:
            self._buffer += points
            waiting = len(self._buffer)
        if self.flush_at and waiting >= self.flush_at:
            self._wake.set()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
            except BaseException as exc:  # close() then ends the run FAILED: no silent gaps
                self._error = exc
                return

    def flush(self) -> None:
        with self._lock:
            with self._buffer_lock:
                pending, self._buffer = self._buffer, []
            if pending:
                self._write(self.run_id, pending)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self(step if step is not None else 0, metrics)

    def log_file(self, write: Callable[[Path], Any], name: str, artifact_path: str | None = None):
        """Log the file that `write(path)` creates as artifact `artifact_path/name`."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(batch), 100):
            _retry(lambda chunk=batch[i : i + 100]: self.client.log_batch(self.run_id, tags=chunk))

    def close(self, status: str, reason: str | None = None) -> None:
        """Write every buffered point, then end the run with `status` and its reason."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        try:
            self.flush()
        finally:
            if self._error is not None and status == "FINISHED":
                status, reason = "FAILED", f"metric logging failed: {self._error}"
            if reason:
                self.client.set_tag(self.run_id, "doomnet.end_reason", reason[:5000])
            self.client.set_terminated(self.run_id, status)


# --- writing metric points ---------------------------------------------------------------------
# MLflow's SQL store turns each point of a log_batch into an ORM object and spends ~70 us of CPU
# on it: 8,000 points (2,000 iterations x 4 metrics) cost over half a second, which on two cores
# shows in the training loop's wall time. A SQL store gets the points as one multi-row INSERT
# into MLflow's own `metrics` table (its SQLAlchemy table object, MLflow's engine settings), ~9 us
# a point; the newest point of each metric still goes through log_batch, so MLflow checks the
# run and keys and keeps its `latest_metrics` table itself. A tracking server gets log_batch.

SQL_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})
INSERT_ROWS = 10_000  # rows per INSERT transaction


def log_batch_writer(client: MlflowClient) -> Callable[[str, list[Point]], None]:
    """Write points with MLflow's log_batch, BATCH at a time (any store)."""

    def write(run_id: str, points: list[Point]) -> None:
        metrics = [Metric(*point) for point in points]
        for i in range(0, len(metrics), BATCH):
            chunk = metrics[i : i + BATCH]
            _retry(lambda chunk=chunk: client.log_batch(run_id, metrics=chunk, synchronous=True))

    return write


def point_writer(client: MlflowClient) -> Callable[[str, list[Point]], None]:
    """The fastest way to write metric points into `client`'s store (see above)."""
    uri = str(client.tracking_uri)
    if uri.split(":", 1)[0].split("+", 1)[0] not in SQL_SCHEMES:
        return log_batch_writer(client)
    import sqlalchemy  # only for SQL stores: a tracking server's runs never need it

    log_batch = log_batch_writer(client)
    engine = _sql_engine(uri)

    def write(run_id: str, points: list[Point]) -> None:
        newest: dict[str, Point] = {}  # per key, the point MLflow calls latest
        for point in points:
            key = point[0]
            if key not in newest or _recency(point) > _recency(newest[key]):
                newest[key] = point
        log_batch(run_id, list(newest.values()))  # checks the run is active, keys are valid
        # The rest, once each: a repeated row would violate the table's primary key.
        rest = {_sql_row(run_id, p): p for p in points}
        for point in newest.values():
            rest.pop(_sql_row(run_id, point), None)
        rows, rest_points = list(rest), list(rest.values())
        for i in range(0, len(rows), INSERT_ROWS):
            chunk = [
                dict(zip(METRIC_COLUMNS, row, strict=True)) for row in rows[i : i + INSERT_ROWS]
            ]
            try:
                _retry(lambda chunk=chunk: _insert_rows(engine, chunk))
            except sqlalchemy.exc.IntegrityError:  # a point already stored (logged twice)
                log_batch(run_id, rest_points[i : i + INSERT_ROWS])  # MLflow skips repeats

    return write


def _recency(point: Point) -> tuple[int, int, float]:
    """MLflow's order for the latest value of a metric: step, then timestamp, then value."""
    _, value, timestamp, step = point
    return step, timestamp, value


@cache
def _sql_engine(uri: str) -> Any:
    from mlflow.store.db.utils import create_sqlalchemy_engine

    return create_sqlalchemy_engine(uri)


METRIC_COLUMNS = ("run_uuid", "key", "timestamp", "step", "value", "is_nan")


def _sql_row(run_id: str, point: Point) -> tuple[Any, ...]:
    """A row of MLflow's `metrics` table (METRIC_COLUMNS), NaN and inf as MLflow stores them."""
    key, value, timestamp, step = point
    is_nan = math.isnan(value)
    if is_nan:
        value = 0.0
    elif math.isinf(value):  # SQL has no inf: MLflow keeps the largest float
        value = math.copysign(sys.float_info.max, value)
    return run_id, key, timestamp, step, value, is_nan


def _insert_rows(engine: Any, rows: list[dict[str, Any]]) -> None:
    """One transaction: all rows or none (a retry cannot write a point twice)."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.insert(SqlMetric.__table__), rows)
    except sqlalchemy.exc.OperationalError as exc:  # "database is locked": _retry waits
        raise MlflowException(f"metric insert failed: {exc}") from exc


def _retry(call, attempts: int = 5, wait_s: float = 0.5):
    """Retry a store write: SQLite says 'database is locked' under parallel writers."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as exc:
            if attempt == attempts - 1 or "locked" not in str(exc).lower():
                raise
            time.sleep(wait_s * (attempt + 1))


def _ending(exc: BaseException | None) -> tuple[str, str | None, dict[str, str]]:
    """(status, reason, extra tags) for how a run's body ended."""
    if exc is None:
        return "FINISHED", None, {}
    if hasattr(exc, "run_status"):  # doomnet.run's Terminated and Pruned say how they end
        return exc.run_status, str(exc), dict(getattr(exc, "run_tags", {}))
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", "interrupted (Ctrl-C)", {}
    message = f"{type(exc).__name__}: {exc}"
    return "FAILED", message, {"error": message}


@dataclass
class _Link:
    tags: dict[str, str]
    created: list[str] = field(default_factory=list)


_LINK: contextvars.ContextVar[_Link | None] = contextvars.ContextVar("doomnet_link", default=None)


@contextlib.contextmanager
def linked_runs(tags: Mapping[str, str]) -> Iterator[list[str]]:
    """Training runs opened inside the block get `tags` (e.g. `doomnet.reproduces=<run id>`);
    the yielded list receives the id of each run as it is created."""
    link = _Link({k: str(v) for k, v in tags.items()})
    token = _LINK.set(link)
    try:
        yield link.created
    finally:
        _LINK.reset(token)


@contextlib.contextmanager
def training_run(
    cfg: Config, *, project_dir: Path, run_name: str, tags: Mapping[str, str]
) -> Iterator[RunTracker]:
    """Open a run (child of `cfg.tracking.parent_run_id` if set) with params and provenance;
    close it FINISHED, FAILED (exception: reason tagged `error`) or KILLED (Ctrl-C, SIGTERM,
    pruning) — buffered metrics are written first, so a partial curve is kept."""
    client, experiment_id = open_store(cfg.tracking, project_dir)
    link = _LINK.get()
    run_tags = {**provenance_tags(project_dir), **tags, **(link.tags if link else {})}
    if cfg.tracking.parent_run_id:
        run_tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run = client.create_run(experiment_id, tags=run_tags, run_name=run_name)
    if link is not None:
        link.created.append(run.info.run_id)
    tracker = RunTracker(client, run.info.run_id, cfg.tracking.flush_every_s)
    try:
        params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
        client.log_batch(run.info.run_id, params=params)
        yield tracker
    except BaseException as exc:
        status, reason, extra = _ending(exc)
        with contextlib.suppress(Exception):
            tracker.set_tags(extra)
        tracker.close(status, reason)
        raise
    else:
        tracker.close("FINISHED")


# --- a sweep's parent run ----------------------------------------------------------------------


class SweepRun:
    """The MLflow parent run of a multirun: jobs are its children (`mlflow.parentRunId`)."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_id: str):
        self.client = client
        self.experiment_id = experiment_id
        self.run_id = run_id

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def children(self) -> list[Any]:
        """Child runs, oldest first (MLflow `Run` objects)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
            max_results=10000,
            order_by=["attributes.start_time ASC"],
        )
        return list(runs)


@contextlib.contextmanager
def sweep_run(
    cfg: TrackingConfig,
    *,
    project_dir: Path,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    run_id: str | None = None,
) -> Iterator[SweepRun]:
    """Open (or, with `run_id`, reopen) a sweep's parent run. The body may raise `SweepFailed`
    to end it FAILED with a reason; Ctrl-C/SIGTERM end it KILLED."""
    client, experiment_id = open_store(cfg, project_dir)
    all_tags = {**provenance_tags(project_dir), **tags, "doomnet.kind": "sweep"}
    if run_id is None:
        run_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
        param_batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(param_batch), 100):
            client.log_batch(run_id, params=param_batch[i : i + 100])
    else:  # a resumed sweep: running again under this process
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in owner_tags().items()])
    sweep = SweepRun(client, experiment_id, run_id)
    try:
        yield sweep
    except BaseException as exc:
        status, reason, _ = _ending(exc)
        client.set_tag(run_id, "doomnet.end_reason", reason[:5000] if reason else "")
        client.set_terminated(run_id, status)
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


def ui_command(project_dir: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line for the project's store."""
    uri = store_uri(TrackingConfig(), project_dir)
    artifacts = Path(project_dir).resolve() / "mlruns" / "artifacts"
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]


# --- reading runs (reports, re-runs, comparisons) ----------------------------------------------
# `doomnet report`, `reproduce` and `compare` read the store through `Store` and get plain
# `RunRecord`s back, so no other module needs MLflow. Opening a `Store` creates nothing: a
# missing or broken store is a `StoreError` with a one-line message.

RUN_ID_CHARS = frozenset("0123456789abcdef")
MIN_PREFIX = 8  # shortest run-id prefix accepted (the report's tables show 8 characters)


class StoreError(RuntimeError):
    """A store that cannot be read, or a run or experiment that is not in it (one line)."""


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data. `metrics` holds the last logged value of each metric."""

    run_id: str
    name: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def duration_s(self) -> float | None:
        if self.start_ms is None or self.end_ms is None:
            return None
        return (self.end_ms - self.start_ms) / 1000.0

    @property
    def parent_id(self) -> str | None:
        return self.tags.get("mlflow.parentRunId")


def looks_like_run_id(text: str) -> bool:
    """A full (32) or abbreviated (>= 8) lower-case hex run id."""
    return MIN_PREFIX <= len(text) <= 32 and set(text) <= RUN_ID_CHARS


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_ms=run.info.start_time,
        end_ms=run.info.end_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def _one_line(exc: BaseException) -> str:
    """The informative first line of a store error, without SQLAlchemy's class prefix."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), type(exc).__name__)
    if line.startswith("(") and ") " in line:  # "(sqlite3.DatabaseError) file is not a database"
        line = line.split(") ", 1)[1]
    return line[:300]


class Store:
    """Read access to an existing MLflow store (SQLite file, database URL or server).

    Raises StoreError if the store does not exist or cannot be read; never creates one.
    """

    def __init__(self, uri: str):
        self.uri = uri
        db = _sqlite_path(uri)
        if db is not None:
            if not db.is_file():
                raise StoreError(f"no MLflow store at {db}: nothing has been tracked there yet")
            if db.stat().st_size == 0:
                raise StoreError(f"{db} is an empty file, not an MLflow store")
        # No download progress bars on the terminal, and a dead server fails in seconds.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # SQLAlchemy, connection and MLflow errors alike
            raise StoreError(f"cannot open the MLflow store at {uri}: {_one_line(exc)}") from exc

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{what}: {_one_line(exc)}") from exc

    # experiments

    def experiment_id(self, name: str) -> str | None:
        """The id of the experiment called `name`, or None."""
        found = self._call(
            "cannot read experiments", lambda: self.client.get_experiment_by_name(name)
        )
        return found.experiment_id if found is not None else None

    def experiment_name(self, experiment_id: str) -> str:
        return self._call(
            f"cannot read experiment {experiment_id}",
            lambda: self.client.get_experiment(experiment_id).name,
        )

    def experiment_ids(self) -> list[str]:
        """Every active experiment's id."""
        ids, token = [], None
        while True:
            page = self._call(
                "cannot list experiments",
                lambda token=token: self.client.search_experiments(
                    max_results=1000, page_token=token
                ),
            )
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids

    # runs

    def run(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique prefix of at least 8 characters."""
        if not looks_like_run_id(run_id):
            raise StoreError(f"{run_id!r} is not a run id (32 hex characters, or a prefix of 8+)")
        if len(run_id) == 32:
            try:
                return _record(self.client.get_run(run_id))
            except MlflowException as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
                    raise StoreError(f"cannot read run {run_id}: {_one_line(exc)}") from exc
                raise StoreError(f"no run {run_id} in {self.uri}") from exc
        matches = [r for r in self.runs(self.experiment_ids()) if r.run_id.startswith(run_id)]
        if not matches:
            raise StoreError(f"no run {run_id}... in {self.uri}")
        if len(matches) > 1:
            ids = ", ".join(r.run_id for r in matches[:3])
            raise StoreError(f"run id prefix {run_id} is ambiguous: {ids}")
        return matches[0]

    def runs(
        self, experiment_ids: list[str], *, parent_run_id: str | None = None
    ) -> list[RunRecord]:
        """Active runs of these experiments (children of `parent_run_id` only, if given),
        oldest first."""
        if not experiment_ids:
            return []
        where = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
        found, token = [], None
        while True:
            page = self._call(
                "cannot search runs",
                lambda token=token: self.client.search_runs(
                    experiment_ids,
                    filter_string=where,
                    max_results=1000,
                    order_by=["attributes.start_time ASC"],
                    page_token=token,
                ),
            )
            found += [_record(r) for r in page]
            token = page.token
            if not token:
                return found

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every logged (step, value) of metric `key`, by step."""
        points = self._call(
            f"cannot read metric {key} of run {run_id}",
            lambda: self.client.get_metric_history(run_id, key),
        )
        return [(m.step, m.value) for m in sorted(points, key=lambda m: (m.step, m.timestamp))]

    def download(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        """Copy artifact `artifact_path` of the run into `dst_dir`; its local path."""
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, artifact_path, str(dst_dir)))
        except Exception as exc:
            raise StoreError(
                f"run {run_id} has no readable artifact {artifact_path}: {_one_line(exc)}"
            ) from exc

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """The one write: tag an existing run (e.g. the verdict of a re-run)."""
        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._call(f"cannot tag run {run_id}", lambda: self.client.log_batch(run_id, tags=batch))
