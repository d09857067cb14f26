"""The job side of an Optuna trial: the handle a sweep job uses to report and be pruned.

The Optuna sweeper (`hydra_plugins/doomnet_sweeper/optuna_sweeper.py`) asks the study for a
trial and launches one job with `trial.storage=... trial.study_name=... trial.number=...`.
The job opens its trial here and passes the handle to `fit` as a callback:

    handle = TrialHandle.open(cfg.trial)      # the trial must be RUNNING
    fit(..., callbacks=(tracker, handle))     # report val/acc each evaluation, stop if pruned
    if handle.pruned_at is not None: raise Pruned(...)   # doomnet.run does this

A thread records a heartbeat on the trial and watches the sweep process: if it died, the job
stops at its next evaluation instead of finishing a trial nobody will record.

Also here, because both sides need them: opening a storage by its string, building a pruner
from its spec, and telling whether the processes that own a RUNNING trial are still alive.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from doomnet.config import TrialConfig

JOURNAL_NAME = "optuna.journal"  # the default storage: <project>/mlruns/optuna.journal
OBJECTIVE_METRIC = "val/acc"  # reported at every evaluation; the final one is the objective

# Trial system attributes (see `owner_attrs`, `orphan_reason`): which processes own a trial.
SWEEPER_PREFIX = "doomnet.sweeper"  # {host, pid, pid_start} of the sweep that asked for it
JOB_PREFIX = "doomnet.job"  # ... of the process running it (the sweep's, with basic launcher)
HEARTBEAT = "doomnet.heartbeat"  # unix time of the last sign of life
RUN_ID_ATTR = "mlflow.run_id"  # user attribute: the trial's MLflow run
PRUNER_ATTR = "doomnet.pruner"  # study user attribute: the pruner spec jobs rebuild
HEARTBEAT_ATTR = "doomnet.heartbeat_interval"  # study user attribute: seconds between beats


class SweepGone(RuntimeError):
    """The sweep process that launched this trial died: the run ends KILLED, the trial is
    failed and retried when the sweep is resumed."""

    run_status = "KILLED"


# --- storages and pruners ----------------------------------------------------------------------


def default_storage(project_dir: Path) -> str:
    return str((Path(project_dir) / "mlruns" / JOURNAL_NAME).resolve())


def is_url(storage: str) -> bool:
    """An SQLAlchemy URL (an RDB storage); anything else is a journal file path."""
    return "://" in storage


def open_storage(
    storage: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """A journal file (path) or an RDB storage (SQLAlchemy URL, with heartbeats if asked)."""
    if not is_url(storage):
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = OwnedSymlinkLock(str(path))
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):  # wait for other processes' writes instead of failing
        engine_kwargs["connect_args"] = {"timeout": 60}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            storage,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale_callback,
        )


class OwnedSymlinkLock(optuna.storages.journal.JournalFileSymlinkLock):
    """Optuna's lock for a journal file (a symlink `<journal>.lock`, so every Optuna tool on
    the same file excludes every other), whose link target names its owner: a lock left by a
    process of this host that died holding it (SIGKILL during a write) is broken at once
    rather than after the 30 s grace period. Locks of other tools keep Optuna's rule."""

    def __init__(self, filepath: str, grace_period: int = 30) -> None:
        super().__init__(filepath, grace_period)
        owner = f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid()) or ''}"
        self._lock_target_file = f"{filepath}#owner={owner}"

    def acquire(self) -> bool:
        while True:
            try:
                os.symlink(self._lock_target_file, self._lock_file)
                return True
            except FileExistsError:
                if not self._break_if_orphaned():
                    return super().acquire()  # wait for it the way Optuna does

    def _break_if_orphaned(self) -> bool:
        """Remove the lock if its owner is a dead process of this host; True if removed."""
        try:
            target = os.readlink(self._lock_file)
        except OSError:
            return True  # released meanwhile: try again
        host, _, rest = target.rpartition("#owner=")[2].partition(":")
        pid, _, started = rest.partition(":")
        if "#owner=" not in target or host != socket.gethostname() or not pid.isdigit():
            return False
        if alive(int(pid), started or None):
            return False
        stale = f"{self._lock_file}.{os.getpid()}.stale"
        try:
            os.rename(self._lock_file, stale)
        except OSError:
            return True  # another waiter broke it first
        if os.readlink(stale) != target:  # a live lock taken meanwhile: put it back
            with contextlib.suppress(OSError):
                os.link(stale, self._lock_file, follow_symlinks=False)
        os.unlink(stale)
        return True


PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}
PRUNER_ALIASES = {"sha": "successive_halving", "successivehalving": "successive_halving"}


def pruner_name(spec: Mapping[str, Any]) -> str:
    """The canonical name in a pruner spec (`{"name": ...}`), aliases and spaces resolved."""
    name = str(spec.get("name", "none")).lower().replace(" ", "_").replace("-", "_")
    name = PRUNER_ALIASES.get(name, name)
    if name not in PRUNERS:
        raise ValueError(
            f"unknown pruner {spec.get('name')!r}; choose one of: {', '.join(PRUNERS)}"
        )
    return name


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """A pruner from its spec: `{"name": "median", "n_warmup_steps": 10, ...}` or the official
    plugin's `{"_target_": "optuna.pruners.MedianPruner", ...}`; None means no pruning."""
    if not spec:
        return optuna.pruners.NopPruner()
    spec = dict(spec)
    if "_target_" in spec:
        from hydra.utils import instantiate

        pruner = instantiate(spec)
        if not isinstance(pruner, optuna.pruners.BasePruner):
            raise ValueError(f"pruner {spec['_target_']} is not an Optuna pruner")
        return pruner
    name = pruner_name(spec)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return getattr(optuna.pruners, PRUNERS[name])(**kwargs)


# --- who owns a RUNNING trial ------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` exists and is the one that started at `started` (if given)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or process_start(pid) in (None, started)


def owner_attrs(prefix: str) -> dict[str, Any]:
    """`{prefix: {host, pid, pid_start}}` for this process, and a heartbeat."""
    pid = os.getpid()
    owner = {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid) or ""}
    return {prefix: owner, HEARTBEAT: time.time()}


def orphan_reason(
    attrs: Mapping[str, Any],
    *,
    host: str,
    now: float,
    grace_s: float,
    is_alive: Callable[[int, str | None], bool] = alive,
) -> str | None:
    """Why a RUNNING trial with system attributes `attrs` has no live owner, or None.

    On this host the pids decide: the trial is orphaned when its sweep process is gone and its
    job process is gone or done with it (a joblib worker outlives its jobs). Elsewhere only
    the heartbeat can: no sign of life for `grace_s`.
    A trial without our attributes (another tool's) is never declared orphaned."""
    owners = [attrs[p] for p in (SWEEPER_PREFIX, JOB_PREFIX) if isinstance(attrs.get(p), dict)]
    if not owners:
        return None
    if all(owner.get("host") == host for owner in owners):
        running = [o for o in owners if not o.get("ended")]  # a job that ended holds nothing
        if any(is_alive(int(o["pid"]), o.get("pid_start") or None) for o in running):
            return None
        sweeper = attrs.get(SWEEPER_PREFIX)
        if isinstance(sweeper, dict):
            return f"the sweep process {sweeper['pid']} on {host} died while the trial was RUNNING"
        return f"process {owners[0]['pid']} on {host} died while the trial was RUNNING"
    beat = float(attrs.get(HEARTBEAT, 0.0))
    if now - beat > grace_s:
        hosts = ", ".join(sorted({str(o.get("host")) for o in owners}))
        return f"no heartbeat from {hosts} for {now - beat:.0f} s (grace period {grace_s:.0f} s)"
    return None


def is_rdb(storage: optuna.storages.BaseStorage) -> bool:
    """An RDB storage, bare or as a study holds it (wrapped in Optuna's cache)."""
    return isinstance(getattr(storage, "_backend", storage), optuna.storages.RDBStorage)


def record_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """A sign of life for a RUNNING trial: Optuna's own heartbeat on an RDB storage (its
    `fail_stale_trials` reads it), a time-stamped system attribute in a journal file."""
    if is_rdb(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


# --- the job's handle --------------------------------------------------------------------------


class TrialHandle:
    """A running trial, seen from the job that runs it. Call it as a `fit` callback."""

    def __init__(
        self,
        study: optuna.Study,
        trial_id: int,
        number: int,
        *,
        threads: int | None = None,
        heartbeat_s: float = 30.0,
        watch_s: float = 1.0,
    ) -> None:
        self.study = study
        self.storage = study._storage
        self.trial_id = trial_id
        self.number = number
        self.threads = threads
        self.trial = optuna.trial.Trial(study, trial_id)
        self.pruned_at: int | None = None  # the step at which the pruner stopped the run
        self.stop_reason: str | None = None  # set by the watcher if the sweep process died
        self._heartbeat_s = heartbeat_s
        self._watch_s = watch_s
        self._stop = threading.Event()
        attrs = self.storage.get_trial_system_attrs(trial_id)
        self._sweeper = self._local_owner(attrs, SWEEPER_PREFIX)
        for key, value in owner_attrs(JOB_PREFIX).items():
            self.storage.set_trial_system_attr(trial_id, key, value)
        record_heartbeat(self.storage, trial_id)  # at once: the watcher's first is 1 s away
        self._thread = threading.Thread(target=self._watch, name="optuna-heartbeat", daemon=True)
        self._thread.start()
        _OPEN.add(self)
        if self._sweeper is not None and os.getppid() == self._sweeper[0]:
            _exit_with(*self._sweeper)  # a worker process the sweep spawned (joblib)

    @classmethod
    def open(cls, cfg: TrialConfig, **kwargs: Any) -> TrialHandle:
        """The trial `cfg.number` of study `cfg.study_name` in `cfg.storage`; it must be
        RUNNING (asked by a sweeper and not finished yet)."""
        if not cfg.storage or cfg.study_name is None or cfg.number is None:
            raise ValueError("trial.storage, trial.study_name and trial.number must all be set")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(cfg.storage)
        try:
            study_id = storage.get_study_id_from_name(cfg.study_name)
        except KeyError:
            raise ValueError(f"no study {cfg.study_name!r} in {cfg.storage}") from None
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, cfg.number)
        except KeyError:
            raise ValueError(f"study {cfg.study_name!r} has no trial {cfg.number}") from None
        state = storage.get_trial(trial_id).state
        if state != TrialState.RUNNING:
            raise ValueError(
                f"trial {cfg.number} of {cfg.study_name!r} is {state.name}, not RUNNING"
            )
        study_attrs = storage.get_study_user_attrs(study_id)
        pruner = make_pruner(study_attrs.get(PRUNER_ATTR))
        kwargs.setdefault("heartbeat_s", float(study_attrs.get(HEARTBEAT_ATTR, 30)))
        study = optuna.load_study(
            study_name=cfg.study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # jobs never sample: the cheapest one
            pruner=pruner,
        )
        return cls(study, trial_id, cfg.number, threads=cfg.threads, **kwargs)

    @staticmethod
    def _local_owner(attrs: Mapping[str, Any], prefix: str) -> tuple[int, str | None] | None:
        """(pid, start) of the owner `prefix` if it runs on this host and is not this process."""
        owner = attrs.get(prefix)
        if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
            return None
        if int(owner["pid"]) == os.getpid():
            return None  # the basic launcher: the job runs inside the sweep process
        return int(owner["pid"]), owner.get("pid_start") or None

    def __call__(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Report the objective at `step`; True (stop training) if the pruner says so."""
        if self.stop_reason is not None:
            raise SweepGone(self.stop_reason)
        self.trial.report(float(metrics[OBJECTIVE_METRIC]), step)
        if self.trial.should_prune():
            self.pruned_at = step
            return True
        return False

    def attach_run(self, run_id: str) -> None:
        """Record the trial's MLflow run id (optuna-dashboard shows it; the sweeper uses it)."""
        self.storage.set_trial_user_attr(self.trial_id, RUN_ID_ATTR, run_id)

    def limit_threads(self) -> contextlib.AbstractContextManager:
        """Limit BLAS threads while training, so n_jobs parallel trials do not oversubscribe."""
        if not self.threads:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.threads, user_api="blas")

    def _watch(self) -> None:
        next_beat = time.monotonic()  # the first heartbeat right away
        while not self._stop.wait(self._watch_s):
            if self._sweeper is not None and not alive(*self._sweeper):
                self.stop_reason = f"the sweep process {self._sweeper[0]} died"
                return
            if time.monotonic() >= next_beat:
                try:
                    record_heartbeat(self.storage, self.trial_id)
                except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                    return  # the trial was finished by someone else: nothing to keep alive
                next_beat = time.monotonic() + self._heartbeat_s

    def close(self) -> None:
        """Stop the heartbeat and record that this process is done with the trial (its pid
        may live on, e.g. a joblib worker, without running it: see `orphan_reason`)."""
        self._stop.set()
        self._thread.join()
        _OPEN.discard(self)
        job = dict(owner_attrs(JOB_PREFIX)[JOB_PREFIX], ended=True)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.storage.set_trial_system_attr(self.trial_id, JOB_PREFIX, job)
        # A database storage's pooled connections would stay open until garbage collection:
        # a worker running hundreds of trials must not hold hundreds of them.
        engine = getattr(getattr(self.storage, "_backend", self.storage), "engine", None)
        if engine is not None:
            engine.dispose()


_OPEN: set[TrialHandle] = set()  # this process's open handles
_SWEEPS_WATCHED: set[int] = set()


def _exit_with(pid: int, started: str | None) -> None:
    """End this worker process (a joblib worker outlives the sweep that spawned it, idle,
    for good) once its parent, sweep process `pid`, is gone and no trial of it is open here."""
    if pid in _SWEEPS_WATCHED:
        return
    _SWEEPS_WATCHED.add(pid)

    def watch() -> None:
        while alive(pid, started) or any(h._sweeper == (pid, started) for h in list(_OPEN)):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name=f"exit-with-sweep-{pid}", daemon=True).start()


@contextlib.contextmanager
def open_trial(cfg: TrialConfig) -> Iterator[TrialHandle | None]:
    """The job's trial handle if this run is an Optuna trial (`cfg.study_name` set), else None."""
    if cfg.study_name is None:
        yield None
        return
    handle = TrialHandle.open(cfg)
    try:
        with handle.limit_threads():
            yield handle
    finally:
        handle.close()
