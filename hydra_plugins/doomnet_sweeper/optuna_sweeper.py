"""`hydra/sweeper=optuna`: Optuna studies from Hydra, with pruning, resume and parallel trials.

    python train.py -m sweeps=lr_hidden                              # a named sweep
    python train.py -m hydra/sweeper=optuna 'lr=tag(log, interval(1e-3, 1))' 'hidden=choice(20,64)'

Config-compatible with the official hydra-optuna-sweeper (`sampler`, `direction`,
`study_name`, `storage`, `n_trials`, `n_jobs`, `params`, `custom_search_space`, and the
`hydra/sweeper/sampler` group), plus `pruner`, `max_failures` and `seed`. How it works:

- The study lives in a persistent storage: by default the journal file
  `<project>/mlruns/optuna.journal`, or any SQLAlchemy URL. Running the same command again
  resumes it: `n_trials` counts COMPLETE + PRUNED trials over the whole study.
- Each trial is one Hydra job. The sweeper asks the study for a trial and passes its handle
  (`trial.storage/study_name/number`) in the job's overrides; the job reports val/acc at every
  evaluation and stops when the pruner says so (`doomnet.trial`). The sweeper then tells the
  study how the job ended: COMPLETE, PRUNED, or FAIL with a reason (an exception, a NaN or
  infinite objective, a dead process).
- With `n_jobs` > 1 and a launcher that runs jobs in other processes (joblib), a new trial is
  asked for as soon as one finishes; with Hydra's in-process launcher, trials run one by one.
- The trials that a dead sweep left RUNNING are failed and their parameters tried again; an
  interrupted sweep (Ctrl-C, SIGTERM) stops its jobs and does the same before exiting.
- MLflow: the study is one parent run, each trial a child run tagged `optuna.trial` and
  `optuna.state`; the parent holds the search space and the best trial so far.
"""

import contextlib
import importlib.util
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING, DictConfig, OmegaConf

from hydra_plugins.doomnet_sweeper._common import (
    SweepConfigError,
    SweepFailed,
    parent_run,
    quote,
    tracking_config,
)
from hydra_plugins.doomnet_sweeper._search import (
    SAMPLER_KWARGS,
    SAMPLERS,
    Param,
    SearchSpace,
    describe,
    described,
    identity_difference,
    make_param,
    make_sampler,
    pruner_spec,
    render,
    sampler_kind,
    sampler_spec,
)
from hydra_plugins.doomnet_sweeper._study import (
    Flight,
    StudyRun,
    dashboard_command,
    outcome,
    storage_label,
)
from hydra_plugins.doomnet_sweeper._workers import (
    JOINED_ATTR,
    StudyLock,
    ensure_database,
    join,
    worker_seed,
)

log = logging.getLogger(__name__)

OFFICIAL_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.doomnet_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself (seed, grid space)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, "_self_"])
    # Optional[...], not `X | None`: OmegaConf reads these annotations at plugin scan time.
    # A name (tpe, random, grid, cmaes, qmc), {name: tpe, ...kwargs} or {_target_: ..., ...}.
    sampler: Any = MISSING
    # A name (median, percentile, successive_halving, hyperband, none) or a dict like sampler.
    pruner: Any = "median"
    direction: Any = "maximize"  # DoomNet's objective is the final validation accuracy
    study_name: Optional[str] = None  # noqa: UP045  (None: the job name, e.g. "train")
    storage: Optional[str] = None  # noqa: UP045  (None: <project>/mlruns/optuna.journal)
    n_trials: int = 20  # COMPLETE + PRUNED trials of the whole study (resuming counts them)
    n_jobs: int = 1  # trials at once (needs a parallel launcher, e.g. hydra/launcher=joblib)
    max_failures: int = 10  # stop the study once this many trials have FAILed (in total)
    seed: Optional[int] = 0  # noqa: UP045  (the sampler's seed unless it sets its own)
    params: Optional[dict[str, Any]] = None  # noqa: UP045  (key: search-space expression)
    custom_search_space: Optional[str] = None  # noqa: UP045  ("module.fn"; fn(cfg, trial))
    keep_busy: bool = True  # ask a new trial as soon as one finishes (parallel launchers)
    threads_per_job: Optional[int] = None  # noqa: UP045  (None: cores // n_jobs in parallel)
    heartbeat_interval: int = 30  # seconds between a running trial's signs of life
    grace_period: Optional[int] = None  # noqa: UP045  (None: 4 x heartbeat_interval)
    show_best: int = 10  # rows of the final table


def register() -> None:
    """Store `hydra/sweeper=optuna` and the official plugin's `hydra/sweeper/sampler` group."""
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="doomnet")
    for name, cls in SAMPLERS.items():
        node = {"_target_": f"optuna.samplers.{cls}", "name": None, "seed": None}
        node |= dict.fromkeys(SAMPLER_KWARGS[name])
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="doomnet")


register()


# --- the sweeper -------------------------------------------------------------------------------


class OptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.conf = conf
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # --- the definition, checked before anything exists ---

    def _search_space(self, arguments: list[str]) -> SearchSpace:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        lines = []
        for key, value in (self.conf.get("params") or {}).items():
            lines.append(f"{key}={value}")
        lines.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params: dict[str, Param] = {}
        fixed: dict[str, str] = {}
        for line in lines:
            try:
                override = parser.parse_override(line)
            except HydraException as exc:
                first = str(exc).splitlines()[0]
                raise SweepConfigError(f"cannot parse the search space {line!r}: {first}") from exc
            key = override.get_key_element()
            params.pop(key, None)
            fixed.pop(key, None)
            if override.is_sweep_override():
                try:
                    params[key] = make_param(override)
                except ValueError as exc:
                    raise SweepConfigError(f"bad search space for {line!r}: {exc}") from exc
            else:
                fixed[key] = line
        if not params:
            raise SweepConfigError(
                "nothing to search: give a search space, e.g. 'lr=tag(log, interval(1e-3, 1))',"
                " or a named sweep (sweeps=<name>)"
            )
        return SearchSpace(params, list(fixed.values()))

    def _check(self) -> dict:
        """The scalar settings, checked; returns them normalised."""
        conf = self.conf
        if importlib.util.find_spec(OFFICIAL_PLUGIN) is not None:
            raise SweepConfigError(
                "PyPI's hydra-optuna-sweeper is installed as well; both register "
                "hydra/sweeper=optuna. DoomNet ships its own: run `pip uninstall "
                "hydra-optuna-sweeper`."
            )
        direction = conf.get("direction", "maximize")
        if isinstance(direction, list | tuple) or OmegaConf.is_list(direction):
            directions = list(direction)
            if len(directions) != 1:
                raise SweepConfigError(
                    f"direction must be one of maximize, minimize (one objective), got {direction}"
                )
            direction = directions[0]
        direction = str(getattr(direction, "name", direction)).lower()
        if direction not in ("maximize", "minimize"):
            raise SweepConfigError(f"direction must be maximize or minimize, got {direction!r}")
        for key in ("n_trials", "n_jobs", "max_failures", "heartbeat_interval", "show_best"):
            value = conf.get(key, OptunaSweeperConf.__dataclass_fields__[key].default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SweepConfigError(f"hydra.sweeper.{key} must be a whole number >= 1")
        threads = conf.get("threads_per_job")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise SweepConfigError("hydra.sweeper.threads_per_job must be null or >= 1")
        return {"direction": direction}

    # --- the sweep ---

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from doomnet.config import hydra_project_dir
        from doomnet.trial import (
            HEARTBEAT_ATTR,
            PRUNER_ATTR,
            default_storage,
            is_url,
            make_pruner,
            open_storage,
        )

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        settings = self._check()
        space = self._search_space(arguments)
        conf = self.conf
        try:
            s_spec = sampler_spec(conf.get("sampler") or "tpe")
            p_spec = pruner_spec(conf.get("pruner", "median"))
            pruner = make_pruner(p_spec)
        except Exception as exc:  # bad names or keyword arguments: one line, nothing created
            raise SweepConfigError(str(exc).splitlines()[0]) from exc
        kind = sampler_kind(s_spec)
        if kind == "grid":
            intervals = [n for n, p in space.params.items() if p.grid is None]
            if intervals:
                raise SweepConfigError(
                    f"the grid sampler needs choice(...) or range(...) for every key; "
                    f"{', '.join(intervals)} is an interval"
                )
        try:  # built once now so that bad keyword arguments fail before anything exists
            make_sampler(s_spec, space, seed=conf.get("seed"), n_jobs=int(conf.get("n_jobs", 1)))
        except Exception as exc:
            cause = exc.__cause__ or exc  # Hydra's instantiate wraps the constructor's error
            raise SweepConfigError(f"bad sampler: {' '.join(str(cause).split())}") from exc
        extend = None
        if conf.get("custom_search_space"):
            from hydra.utils import get_method

            try:
                extend = get_method(conf["custom_search_space"])
            except Exception as exc:
                raise SweepConfigError(
                    f"custom_search_space {conf['custom_search_space']!r} cannot be imported: "
                    f"{str(exc).splitlines()[0]}"
                ) from exc

        project_dir = hydra_project_dir(self.config.hydra)
        storage_str = conf.get("storage") or default_storage(project_dir)
        if not is_url(storage_str) and not Path(storage_str).is_absolute():
            storage_str = str((project_dir / storage_str).resolve())
        study_name = conf.get("study_name") or str(self.config.hydra.job.name)
        heartbeat_s = int(conf.get("heartbeat_interval", 30))
        grace_s = int(conf.get("grace_period") or 4 * heartbeat_s)
        n_jobs = int(conf.get("n_jobs", 1))
        identity = {**space.identity(), "direction": settings["direction"]}

        ensure_database(storage_str)  # PostgreSQL: the first worker creates the database
        lock = StudyLock(storage_str, study_name)  # see _workers: N sweepers, one study
        joining = contextlib.ExitStack()  # holds the lock until this sweep has joined the study
        try:
            joining.enter_context(lock)  # workers of a new database: one creates the tables
            storage = open_storage(
                storage_str,
                heartbeat_interval=heartbeat_s if is_url(storage_str) else None,
                grace_period=grace_s if is_url(storage_str) else None,
                stale_callback=self._requeue_stale if is_url(storage_str) else None,
            )
            existing = {s.study_name: s for s in storage.get_all_studies()}
        except Exception as exc:
            raise SweepConfigError(
                f"cannot open the Optuna storage {storage_label(storage_str, project_dir)}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        if study_name in existing:
            old = existing[study_name].user_attrs.get("doomnet.identity")
            old_direction = existing[study_name].direction.name.lower()
            if old is not None or old_direction != settings["direction"]:
                old = old or {"direction": old_direction}
                difference = identity_difference(old, identity)
                if old.get("direction", settings["direction"]) != settings["direction"]:
                    difference = "; ".join(
                        x for x in (f"direction was {old['direction']}", difference) if x
                    )
                if difference:
                    raise SweepConfigError(
                        f"study {study_name!r} in {storage_label(storage_str, project_dir)} "
                        f"has a different search space ({difference}); run the same definition "
                        f"to resume it, or give hydra.sweeper.study_name=<new name> to start "
                        f"another"
                    )
        n_before = joined = 0
        if study_name in existing:
            n_before = storage.get_n_trials(existing[study_name]._study_id)
            joined = int(existing[study_name].system_attrs.get(JOINED_ATTR, 0))
        seed = conf.get("seed")
        if seed is not None and kind != "qmc":  # a resumed sampler must not redraw old points
            seed = worker_seed(seed, n_before, joined)  # nor one started beside it the same
        sampler, s_spec = make_sampler(s_spec, space, seed=seed, n_jobs=n_jobs)

        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=sampler,
            pruner=pruner,
            direction=settings["direction"],
            load_if_exists=True,
        )
        study.set_user_attr("doomnet.identity", identity)
        study.set_user_attr(PRUNER_ATTR, p_spec)
        study.set_user_attr(HEARTBEAT_ATTR, heartbeat_s)
        join(storage, study._study_id)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        ctx = StudyRun(
            study=study,
            space=space,
            extend=extend,
            storage_str=storage_str,
            label=storage_label(storage_str, project_dir),
            n_trials=int(conf.get("n_trials", 20)),
            n_jobs=n_jobs,
            max_failures=int(conf.get("max_failures", 10)),
            grid=kind == "grid",
            grace_s=grace_s,
            heartbeat_s=heartbeat_s,
            direction=settings["direction"],
            lock=lock,
        )
        counts = ctx.counts()
        verb = "resuming" if n_before else "creating"
        log.info(
            "%s study %r in %s: %s; %s, %s; %d trials wanted, %d at once",
            verb.capitalize(),
            study_name,
            ctx.label,
            ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "no trials yet",
            described(sampler, s_spec),
            described(pruner, p_spec or {}),
            ctx.n_trials,
            n_jobs,
        )

        tracking_cfg = tracking_config(self.config)
        parent_id = study.user_attrs.get("mlflow.parent_run_id") if tracking_cfg else None
        params = {f"search.{n}": describe(p.distribution) for n, p in space.params.items()}
        params |= {"study_name": study_name, "storage": ctx.label}
        params |= {"direction": settings["direction"]}
        tags = {
            "sweep.sweeper": "optuna",
            "sweep.dir": str(sweep_dir.resolve()),
            "optuna.study": study_name,
            "optuna.storage": ctx.label,
            "optuna.sampler": described(sampler, s_spec),
            "optuna.pruner": described(pruner, p_spec or {}),
            "optuna.n_trials": str(ctx.n_trials),
            "optuna.n_jobs": str(n_jobs),
            "optuna.max_failures": str(ctx.max_failures),
            "optuna.fixed": " ".join(space.fixed),
            "optuna.dashboard": dashboard_command(storage_str),
        }
        title = f"study {study_name}"
        parent_cm = self._parent(tracking_cfg, project_dir, title, params, tags, parent_id)
        if isinstance(parent_cm, _Entered):  # the study's one parent run, for every worker
            study.set_user_attr("mlflow.parent_run_id", parent_cm.value.run_id)
        joining.close()
        with parent_cm as parent:
            ctx.parent = parent
            if parent is not None:
                parent.set_tags(tags)
                study.set_user_attr("mlflow.parent_run_id", parent.run_id)
            ctx.task_overrides = self._task_overrides(ctx)
            self._ctx = ctx
            self._fail_orphans(ctx)
            stop_reason = self._run_trials(ctx)
            rows = ctx.rows()
            from doomnet.summary import format_study

            print(format_study(rows, title, ctx.direction, int(conf.get("show_best", 10))))
            print(f"open the study: {dashboard_command(storage_str)}", flush=True)
            if stop_reason:
                failed = [r for r in rows if r.status == "FAIL"][-5:]
                listing = "; ".join(f"#{r.number} {r.name} ({r.reason})" for r in failed)
                raise SweepFailed(f"study {study_name!r} stopped: {stop_reason}; last: {listing}")
        return rows

    def _parent(self, tracking_cfg, project_dir, title, params, tags, parent_id):
        """The MLflow parent run: the study's own if it still exists, else a new one."""
        if tracking_cfg is None:
            return contextlib.nullcontext()
        if parent_id is not None:
            cm = parent_run(
                tracking_cfg,
                project_dir,
                run_name=title,
                params=params,
                tags=tags,
                run_id=parent_id,
            )
            try:
                value = cm.__enter__()
            except Exception as exc:  # deleted, or another store: start a new parent run
                log.warning("MLflow parent run %s cannot be reopened (%s)", parent_id, exc)
            else:
                with contextlib.suppress(Exception):  # the reason a dead sweep left is stale
                    value.client.delete_tag(value.run_id, "doomnet.end_reason")
                return _Entered(cm, value)
        cm = parent_run(tracking_cfg, project_dir, run_name=title, params=params, tags=tags)
        return _Entered(cm, cm.__enter__())  # created while this sweep holds the study's lock

    def _task_overrides(self, ctx: StudyRun) -> list[str]:
        """What every job gets besides its parameters: the trial handle and the parent run,
        for a task that has these sections (DoomNet's; any other Hydra app gets neither)."""
        out = []
        in_process = self._in_process()
        if "trial" in self.config:
            out += [
                f"trial.storage={quote(ctx.storage_str)}",
                f"trial.study_name={quote(ctx.study.study_name)}",
            ]
            threads = self.conf.get("threads_per_job")
            if threads is None and ctx.n_jobs > 1 and not in_process:
                threads = max(1, (os.cpu_count() or 1) // ctx.n_jobs)
            if threads is not None:
                out.append(f"trial.threads={int(threads)}")
        if ctx.parent is not None:
            out.append(f"tracking.parent_run_id={ctx.parent.run_id}")
        return out

    def _in_process(self) -> bool:
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        return isinstance(self.launcher, BasicLauncher)

    # --- trials ---

    def _run_trials(self, ctx: StudyRun) -> Optional[str]:  # noqa: UP045
        """Ask, launch and tell until the study has its trials; the reason if it stopped."""
        n_jobs = ctx.n_jobs
        if n_jobs > 1 and self._in_process():
            log.warning(
                "n_jobs=%d needs a launcher that runs jobs in other processes "
                "(hydra/launcher=joblib); Hydra's basic launcher runs one trial at a time",
                n_jobs,
            )
            n_jobs = 1
        asynchronous = n_jobs > 1 and self.conf.get("keep_busy", True)
        results: queue.Queue = queue.Queue()
        in_flight: dict[int, Flight] = {}
        stop_reason = None
        last_beat = last_reap = time.monotonic()
        waiting_shown = False
        try:
            while True:
                if time.monotonic() - last_reap > min(ctx.heartbeat_s, 5):
                    self._fail_orphans(ctx)  # trials of workers that died meanwhile
                    last_reap = time.monotonic()
                stop_reason = stop_reason or ctx.failure_stop()
                room = 0 if stop_reason else ctx.room()
                free = n_jobs - len(in_flight)
                if room > 0 and free > 0:
                    if asynchronous:
                        flight = self._ask(ctx)
                        if flight is None:  # another worker took the room meanwhile
                            continue
                        in_flight[flight.number] = flight
                        self._launch_async(flight, results)
                        continue
                    batch = [self._ask(ctx) for _ in range(min(room, free))]
                    batch = [flight for flight in batch if flight is not None]
                    if not batch:  # other workers of the study took the room meanwhile
                        continue
                    for flight in batch:
                        in_flight[flight.number] = flight
                    try:
                        with _beating(ctx, batch):  # e.g. while SLURM jobs wait in the queue
                            returns = self.launcher.launch(
                                [f.overrides for f in batch], initial_job_idx=batch[0].number
                            )
                    except Exception as exc:  # e.g. a job's overrides do not compose
                        returns = [exc] * len(batch)
                    for flight, result in zip(batch, returns, strict=True):
                        self._finish(ctx, in_flight.pop(flight.number), result)
                    continue
                if not in_flight:
                    if stop_reason or not ctx.others_running():
                        return stop_reason
                    # The study's last trials run in other workers: wait, and retry them here
                    # if their worker dies (the orphan check above, every few seconds).
                    if not waiting_shown:
                        log.info("waiting for the trials other workers are running")
                        waiting_shown = True
                    time.sleep(1.0)
                    continue
                try:
                    number, result = results.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() - last_beat > ctx.heartbeat_s:
                        ctx.heartbeat(in_flight.values())
                        last_beat = time.monotonic()
                    continue
                self._finish(ctx, in_flight.pop(number), result)
        except BaseException as exc:
            with _signals_deferred():
                self._abandon(ctx, in_flight, results, exc)
            raise

    def _ask(self, ctx: StudyRun) -> Optional[Flight]:  # noqa: UP045
        """Ask the study for a trial; None if, under the study's lock, there is no room left
        (other workers of the study asked meanwhile: `n_trials` is their total)."""
        from doomnet.trial import SWEEPER_PREFIX, owner_attrs, record_heartbeat

        with ctx.lock:
            if ctx.room() <= 0:
                return None
            trial = ctx.study.ask(fixed_distributions=ctx.space.distributions())
        extra: list[str] = []
        if ctx.extend is not None:
            returned = ctx.extend(self.config, trial)
            for key, value in (returned or {}).items():
                extra.append(f"{key}={render(value)}")
        values = dict(trial.params)
        name = ctx.space.run_name(values)
        storage = ctx.study._storage
        for key, value in owner_attrs(SWEEPER_PREFIX).items():
            storage.set_trial_system_attr(trial._trial_id, key, value)
        # A first sign of life now: Optuna's stale check skips a trial that never had one, so
        # a worker dying before its job's first heartbeat would leave the trial RUNNING.
        record_heartbeat(storage, trial._trial_id)
        storage.set_trial_user_attr(trial._trial_id, "run_name", name)
        overrides = [*ctx.space.fixed, *ctx.space.overrides(values), *extra, *ctx.task_overrides]
        if "trial" in self.config:
            overrides.append(f"trial.number={trial.number}")
        if "tracking" in self.config:
            overrides.append(f"tracking.run_name={quote(name)}")
        return Flight(trial.number, trial._trial_id, name, overrides)

    def _launch_async(self, flight: Flight, results: queue.Queue) -> None:
        """Run one job through the launcher in a thread; its result goes to `results`."""

        def target() -> None:
            try:
                result = self.launcher.launch([flight.overrides], initial_job_idx=flight.number)[0]
            except BaseException as exc:  # a dead worker, an interrupted job, ...
                result = exc
            results.put((flight.number, result))

        threading.Thread(target=target, name=f"trial-{flight.number}", daemon=True).start()

    def _finish(self, ctx: StudyRun, flight: Flight, result: Any) -> None:
        state, value, reason = outcome(result)
        ctx.tell(flight, state, value, reason)

    def _abandon(self, ctx: StudyRun, in_flight: dict, results: queue.Queue, exc: BaseException):
        """The sweep was interrupted: stop the jobs, tell what finished, fail and requeue the
        rest, so nothing stays RUNNING and a resume tries them again."""
        if isinstance(exc, KeyboardInterrupt):
            reason = f"interrupted ({'SIGTERM' if 'SIGTERM' in str(exc) else 'Ctrl-C'})"
        else:
            reason = f"the sweep stopped: {type(exc).__name__}: {exc}"
        log.warning("%s: stopping %d running trial(s)", reason, len(in_flight))
        # Jobs in other processes: Ctrl-C at a terminal reached them too, so give them a
        # moment to close their runs by themselves (a second signal could cut that short);
        # then SIGTERM the ones still running. A SIGTERM came to this process only: pass it
        # on at once.
        start, signalled = time.monotonic(), False
        wait_s = 0.0 if "SIGTERM" in reason else 3.0
        while in_flight and not self._in_process() and time.monotonic() - start < 60:
            if not signalled and time.monotonic() - start >= wait_s:
                self._terminate_jobs(ctx, in_flight.values())
                signalled = True
            try:
                number, result = results.get(timeout=0.5)
            except queue.Empty:
                continue
            flight = in_flight.pop(number)
            state, value, _ = outcome(result)
            if state in ("COMPLETE", "PRUNED"):  # it finished before the signal reached it
                ctx.tell(flight, state, value, "")
            else:
                ctx.requeue(flight, reason)
        for flight in in_flight.values():
            ctx.requeue(flight, reason)
        in_flight.clear()

    @staticmethod
    def _terminate_jobs(ctx: StudyRun, flights: Any) -> None:
        """SIGTERM the processes (of this host) running these trials' jobs."""
        for flight in list(flights):
            pid = ctx.job_pid(flight)
            if pid is not None and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _fail_orphans(self, ctx: StudyRun) -> None:
        """Fail and requeue the trials a dead sweep left RUNNING (pids on this host, heartbeat
        elsewhere; Optuna's own heartbeat check on an RDB storage)."""
        import optuna

        from doomnet.trial import is_rdb, orphan_reason

        host = socket.gethostname()
        now = time.time()
        # On an RDB storage heartbeats go to Optuna's own table (fail_stale_trials below reads
        # it); the heartbeat attribute there is only the time the trial was asked for.
        grace_s = math.inf if is_rdb(ctx.storage) else ctx.grace_s
        for trial in ctx.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            why = orphan_reason(trial.system_attrs, host=host, now=now, grace_s=grace_s)
            if why is not None:
                log.warning("#%d was left RUNNING: %s; failed, retried", trial.number, why)
                ctx.requeue(Flight(trial.number, trial._trial_id, "", []), why, killed=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ctx.study)  # RDB: calls _requeue_stale

    def _requeue_stale(self, study: Any, trial: Any) -> None:
        """Optuna failed `trial` for a stale heartbeat (RDB storage): retry its parameters."""
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.requeue_failed(trial, f"no heartbeat for {ctx.grace_s} s")


class _Entered:
    """A context manager already entered: `with` gives its value, then exits it."""

    def __init__(self, cm: Any, value: Any) -> None:
        self.cm = cm
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: Any) -> Any:
        return self.cm.__exit__(*exc)


@contextlib.contextmanager
def _beating(ctx: StudyRun, flights: list):
    """Heartbeats for `flights` from this process while the block runs (a launcher that blocks
    until its jobs end; jobs add their own once they run)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ctx.heartbeat_s):
            with contextlib.suppress(Exception):  # a finished trial, a passing database error
                ctx.heartbeat(flights)

    thread = threading.Thread(target=beat, name="optuna-sweeper-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _signals_deferred():
    """Ignore Ctrl-C and SIGTERM while the sweep cleans up (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
