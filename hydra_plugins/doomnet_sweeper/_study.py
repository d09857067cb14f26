"""One sweep's study: how a job ended, what may be asked next, telling Optuna and MLflow."""

import contextlib
import json
import logging
import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra_plugins.doomnet_sweeper._search import SearchSpace

log = logging.getLogger("hydra_plugins.doomnet_sweeper.optuna_sweeper")

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


# --- how a job ended ---------------------------------------------------------------------------


def outcome(result: Any) -> tuple[str, float | None, str]:
    """(state, value, reason) of a job: a `JobReturn`, or the exception its launch raised."""
    from hydra.core.utils import JobStatus

    if isinstance(result, BaseException):  # the launcher itself failed, e.g. a worker died
        message = " ".join(str(result).split())[:500]
        return "FAIL", None, f"the job's process failed: {type(result).__name__}: {message}"
    if result.status == JobStatus.COMPLETED:
        value = result._return_value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "FAIL", None, f"the objective must be a number, got {value!r}"
        if not math.isfinite(value):
            return "FAIL", None, f"the objective is {value}"
        return "COMPLETE", float(value), ""
    exc = result._return_value
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
    if getattr(exc, "run_tags", {}).get("optuna.state") == "PRUNED" or _is_trial_pruned(exc):
        return "PRUNED", None, str(exc)
    return "FAIL", None, reason


def _is_trial_pruned(exc: BaseException) -> bool:
    import optuna

    return isinstance(exc, optuna.TrialPruned)


@dataclass
class Flight:
    """A trial the sweeper asked for and launched."""

    number: int
    trial_id: int
    name: str
    overrides: list


class StudyRun:
    """One sweep's study and bookkeeping: what may be asked, telling, retrying, MLflow."""

    def __init__(self, **settings: Any) -> None:
        self.study = settings["study"]
        self.space: SearchSpace = settings["space"]
        self.extend = settings["extend"]
        self.storage_str: str = settings["storage_str"]
        self.label: str = settings["label"]
        self.n_trials: int = settings["n_trials"]
        self.n_jobs: int = settings["n_jobs"]
        self.max_failures: int = settings["max_failures"]
        self.grid: bool = settings["grid"]
        self.grace_s: int = settings["grace_s"]
        self.heartbeat_s: int = settings["heartbeat_s"]
        self.direction: str = settings["direction"]
        # Taken around "is there room? then ask" by every worker of the study (_workers).
        self.lock = settings.get("lock") or contextlib.nullcontext()
        self.parent = None  # the MLflow parent run (doomnet.tracking.SweepRun) or None
        self.task_overrides: list[str] = []
        self.best_number: int | None = None

    @property
    def storage(self) -> Any:
        return self.study._storage

    def trials(self, *states: str) -> list:
        import optuna

        wanted = tuple(optuna.trial.TrialState[s] for s in states) or None
        return self.study.get_trials(deepcopy=False, states=wanted)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for trial in self.trials():
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts

    def room(self) -> int:
        """How many more trials may be asked for now: the budget of `n_trials` COMPLETE +
        PRUNED minus those running (any sweeper's); for a grid, also the points not started."""
        trials = self.trials()
        states = [t.state.name for t in trials]
        done = states.count("COMPLETE") + states.count("PRUNED")
        budget = self.n_trials - done - states.count("RUNNING")
        if self.grid:
            names = list(self.space.params)
            taken = set()
            for t in trials:  # an enqueued trial has its values as fixed_params only
                values = t.params or t.system_attrs.get("fixed_params") or {}
                if values:
                    taken.add(tuple(values.get(n) for n in names))
            untaken = self.space.grid_size() - len(taken)
            budget = min(budget, states.count("WAITING") + max(untaken, 0))
        return max(budget, 0)

    def others_running(self) -> bool:
        """Whether the study still needs trials that are RUNNING elsewhere (other workers'):
        if one of them dies, its trial is retried, so a worker with nothing to ask waits."""
        states = [t.state.name for t in self.trials()]
        done = states.count("COMPLETE") + states.count("PRUNED")
        return "RUNNING" in states and done < self.n_trials

    def failure_stop(self) -> str | None:
        """Why the study must stop asking (`max_failures` FAIL trials, retried ones not
        counted), or None."""
        trials = self.trials()
        retried = set()
        for trial in trials:
            retried.update(trial.system_attrs.get("retry_history", []))
        failed = [t for t in trials if t.state.name == "FAIL" and t.number not in retried]
        if len(failed) >= self.max_failures:
            return f"{len(failed)} trials failed (max_failures={self.max_failures})"
        return None

    def tell(self, flight: Flight, state: str, value: float | None, reason: str) -> None:
        import optuna

        finished = optuna.trial.TrialState[state]
        try:
            if state == "FAIL":
                self.storage.set_trial_user_attr(flight.trial_id, "fail_reason", reason)
            self._tell(flight.number, value if state == "COMPLETE" else None, finished)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("#%d was already finished by another process", flight.number)
            return
        shown = f"{value:.4f}" if value is not None else reason
        log.info("#%d %s: %s %s", flight.number, flight.name, state, shown)
        self.update_child(flight.trial_id, state, reason)
        self.update_parent()

    def _tell(self, number: int, value: float | None, state: Any) -> None:
        try:
            self.study.tell(number, value, state=state, skip_if_finished=True)
        except RuntimeError as exc:
            # GridSampler.after_trial calls study.stop() on its last point, which Optuna only
            # allows inside study.optimize; the state is stored before that (our loop stops
            # by itself when the grid is done).
            if "Study.stop" not in str(exc):
                raise

    def requeue(self, flight: Flight, reason: str, *, killed: bool = True) -> None:
        """Fail a RUNNING trial that did not get to finish (interrupted, or its process died)
        and queue its parameters to be tried again."""
        import optuna

        frozen = self.storage.get_trial(flight.trial_id)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            return
        try:
            self.storage.set_trial_user_attr(flight.trial_id, "fail_reason", reason)
            self._tell(flight.number, None, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another process finished it meanwhile
        self.enqueue_retry(self.storage.get_trial(flight.trial_id))
        self.update_child(flight.trial_id, "FAIL", reason, killed=killed)

    def requeue_failed(self, trial: Any, reason: str) -> None:
        """A trial Optuna already failed (stale heartbeat, RDB storage): retry it."""
        self.enqueue_retry(trial)
        self.update_child(trial._trial_id, "FAIL", reason)

    def enqueue_retry(self, failed: Any) -> None:
        """A WAITING copy of `failed` (its parameters, its grid point), Optuna's retry style:
        `failed_trial` and `retry_history` say which trials it repeats."""
        import optuna

        attrs = {k: v for k, v in failed.system_attrs.items() if not k.startswith("doomnet.")}
        attrs["failed_trial"] = attrs.get("failed_trial", failed.number)
        attrs["retry_history"] = [*attrs.get("retry_history", []), failed.number]
        attrs["fixed_params"] = dict(failed.params)
        self.study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=failed.params,
                distributions=failed.distributions,
                user_attrs={"run_name": failed.user_attrs.get("run_name", "")},
                system_attrs=attrs,
            )
        )

    def heartbeat(self, flights: Any) -> None:
        """Signs of life for the trials this sweep launched (their jobs add their own)."""
        import optuna

        from doomnet.trial import record_heartbeat

        for flight in list(flights):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                record_heartbeat(self.storage, flight.trial_id)

    def job_pid(self, flight: Flight) -> int | None:
        """The pid of the process running `flight`'s job, if it is on this host."""
        from doomnet.trial import JOB_PREFIX

        job = self.storage.get_trial_system_attrs(flight.trial_id).get(JOB_PREFIX) or {}
        if job.get("host") == socket.gethostname() and job.get("pid") and not job.get("ended"):
            return int(job["pid"])
        return None

    def update_child(self, trial_id: int, state: str, reason: str, *, killed: bool = False):
        """Tag the trial's MLflow run with its state; a FAIL ends the run FAILED with the
        reason (KILLED if it was interrupted), e.g. a finished run whose objective is NaN."""
        from doomnet.trial import RUN_ID_ATTR

        if self.parent is None:
            return
        run_id = self.storage.get_trial(trial_id).user_attrs.get(RUN_ID_ATTR)
        if not run_id:
            return
        client = self.parent.client  # doomnet.tracking's client: this module imports no MLflow
        try:
            client.set_tag(run_id, "optuna.state", state)
            if state != "FAIL":
                return
            status = client.get_run(run_id).info.status
            if killed and status != "RUNNING":
                return  # the job closed its own run (KILLED) when it was interrupted
            if status != "FAILED":
                client.set_tag(run_id, "doomnet.end_reason", reason[:5000])
                if not killed:
                    client.set_tag(run_id, "error", reason[:5000])
                client.set_terminated(run_id, "KILLED" if killed else "FAILED")
        except Exception as exc:  # MLflow trouble must not stop the study
            log.warning("could not update MLflow run %s: %s", run_id, exc)

    def update_parent(self) -> None:
        """The parent run's counts and best trial so far."""
        from doomnet.trial import RUN_ID_ATTR

        if self.parent is None:
            return
        counts = self.counts()
        metrics = {
            "sweep/complete": counts["COMPLETE"],
            "sweep/pruned": counts["PRUNED"],
            "sweep/failed": counts["FAIL"],
        }
        try:
            best = self.study.best_trial
        except ValueError:  # no COMPLETE trial yet
            best = None
        try:
            if best is not None:
                metrics["sweep/best_value"] = best.value
                if best.number != self.best_number:
                    self.best_number = best.number
                    self.parent.set_tags(
                        {
                            "optuna.best_trial": best.number,
                            "optuna.best_value": f"{best.value:.6g}",
                            "optuna.best_params": json.dumps(best.params),
                            "optuna.best_run_id": best.user_attrs.get(RUN_ID_ATTR, ""),
                            "optuna.best_run_name": best.user_attrs.get("run_name", ""),
                        }
                    )
            finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
            self.parent.log_metrics(metrics, step=finished)
        except Exception as exc:
            log.warning("could not update the MLflow parent run: %s", exc)

    def rows(self) -> list:
        from doomnet.summary import JobRow

        rows = []
        for trial in self.trials():
            attrs = trial.user_attrs
            value = trial.value if trial.state.name == "COMPLETE" else None
            reason = attrs.get("fail_reason", "") if trial.state.name == "FAIL" else ""
            rows.append(
                JobRow(trial.number, attrs.get("run_name", ""), trial.state.name, value, reason)
            )
        return rows


def storage_label(storage: str, project_dir: Path) -> str:
    """The storage for people: a journal path relative to the project, a URL without password."""
    from doomnet.trial import is_url

    if is_url(storage):
        with contextlib.suppress(Exception):
            from sqlalchemy.engine import make_url

            return make_url(storage).render_as_string(hide_password=True)
        return storage.split("@")[-1]
    path = Path(storage)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path(project_dir).resolve()))
    return str(path)


def dashboard_command(storage: str) -> str:
    from doomnet.trial import is_url

    if is_url(storage):
        from sqlalchemy.engine import make_url

        return f"optuna-dashboard '{make_url(storage).render_as_string(hide_password=True)}'"
    return f"optuna-dashboard {storage}"
