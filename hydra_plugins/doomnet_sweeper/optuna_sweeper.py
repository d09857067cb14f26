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
import json
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

log = logging.getLogger(__name__)

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
}
OFFICIAL_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"
# Task overrides that do not change what a trial computes (left out of the study's identity).
NOT_IDENTITY = ("progress", "tracking.", "trial.")
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


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
        node = {"_target_": f"optuna.samplers.{cls}", "seed": None}
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="doomnet")


register()


# --- the search space --------------------------------------------------------------------------


@dataclass
class Param:
    """One swept key: its Optuna distribution and how its values are written as overrides."""

    name: str
    text: str  # as written: "tag(log, interval(0.001, 1))"
    distribution: Any
    texts: dict = field(default_factory=dict)  # categorical choice -> override text
    grid: Optional[list] = None  # noqa: UP045  (the values a grid visits; None: an interval)

    def override_text(self, value: Any) -> str:
        if value in self.texts:
            return self.texts[value]
        return render(value)


def render(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return quote(str(value))


def short(value: Any, text: str) -> str:
    """A value for a run name: floats to 4 significant digits, the rest as written."""
    return f"{value:.4g}" if isinstance(value, float) and not text.startswith("'") else text


def describe(distribution: Any) -> str:
    """A distribution in the search-space grammar: `interval(0.001, 1) log`, `choice(20, 64)`."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return f"choice({', '.join(map(str, distribution.choices))})"
    text = f"interval({distribution.low:g}, {distribution.high:g})"
    if getattr(distribution, "step", None) not in (None, 1) or (
        distribution.step == 1 and isinstance(distribution.low, float)
    ):
        text += f" step {distribution.step:g}"
    if distribution.log:
        text += " log"
    return text


def make_param(override: Any) -> Param:
    """A sweep override (`lr=tag(log, interval(1e-3, 1))`) as a `Param`; ValueError if bad."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    name = override.get_key_element()
    text = override.get_value_string()
    value = override.value()
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        log_scale = "log" in value.tags
        if isinstance(low, int) and isinstance(high, int):
            return Param(name, text, IntDistribution(low, high, log=log_scale))
        return Param(name, text, FloatDistribution(float(low), float(high), log=log_scale))
    values = list(override.sweep_iterator())
    texts = list(override.sweep_string_iterator())
    if not values:
        raise ValueError("it has no values")
    if isinstance(value, RangeSweep) and not value.shuffle:
        step = abs(value.step)
        low, high = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            distribution = IntDistribution(low, high, step=step)
        else:
            distribution = FloatDistribution(float(low), float(high), step=float(step))
        return Param(name, text, distribution, grid=values)
    if isinstance(value, ChoiceSweep | RangeSweep):  # choice(...), shuffle(range(...))
        choices = []
        mapping = {}
        for v, t in zip(values, texts, strict=True):
            choice = v if isinstance(v, str | int | float | bool) else t  # lists, dicts: text
            if choice in mapping:
                continue
            mapping[choice] = t
            choices.append(choice)
        return Param(name, text, CategoricalDistribution(choices), texts=mapping, grid=choices)
    raise ValueError(f"{type(value).__name__} is not a search space Optuna can sample")


@dataclass
class SearchSpace:
    params: dict  # name -> Param
    fixed: list  # the non-sweep overrides every job gets, as written

    def distributions(self) -> dict:
        return {name: p.distribution for name, p in self.params.items()}

    def overrides(self, values: dict) -> list[str]:
        out = []
        for name, value in values.items():
            param = self.params.get(name)
            out.append(f"{name}={param.override_text(value) if param else render(value)}")
        return out

    def run_name(self, values: dict) -> str:
        parts = []
        for name, value in values.items():
            param = self.params.get(name)
            text = param.override_text(value) if param else render(value)
            parts.append(f"{name}={short(value, text)}")
        return " ".join(parts)

    def identity(self) -> dict:
        """What a resumed study must agree on: the distributions and the fixed overrides."""
        from optuna.distributions import distribution_to_json

        fixed = sorted(o for o in self.fixed if not o.lstrip("+~").startswith(NOT_IDENTITY))
        space = {name: distribution_to_json(p.distribution) for name, p in self.params.items()}
        return {"space": space, "fixed": fixed}

    def grid_size(self) -> int:
        return math.prod(len(p.grid) for p in self.params.values())


def identity_difference(old: dict, new: dict) -> str:
    """How two study identities differ, in words (empty if they do not)."""
    from optuna.distributions import json_to_distribution

    changes = []
    old_space, new_space = old.get("space", {}), new.get("space", {})
    for name in sorted(set(old_space) | set(new_space)):
        if name not in new_space:
            changes.append(f"{name} was searched, now is not")
        elif name not in old_space:
            changes.append(f"{name} is new")
        elif json_to_distribution(old_space[name]) != json_to_distribution(new_space[name]):
            before = describe(json_to_distribution(old_space[name]))
            after = describe(json_to_distribution(new_space[name]))
            changes.append(f"{name} was {before}, now {after}")
    old_fixed, new_fixed = set(old.get("fixed", [])), set(new.get("fixed", []))
    if old_fixed != new_fixed:
        gone = ", ".join(sorted(old_fixed - new_fixed)) or "nothing"
        added = ", ".join(sorted(new_fixed - old_fixed)) or "nothing"
        changes.append(f"fixed overrides {gone} replaced by {added}")
    return "; ".join(changes)


# --- samplers ----------------------------------------------------------------------------------


def sampler_spec(spec: Any) -> dict:
    """The sampler config as a dict with `_target_`: a name, {name: ...} or {_target_: ...}."""
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"sampler must be a name or a mapping, got {spec!r}")
    spec = dict(spec)
    if "_target_" not in spec:
        name = str(spec.pop("name", "tpe")).lower()
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
        spec["_target_"] = f"optuna.samplers.{SAMPLERS[name]}"
    else:
        spec.pop("name", None)
    return spec


def sampler_kind(spec: dict) -> Optional[str]:  # noqa: UP045
    """Which of the known samplers a spec builds (None: another class)."""
    cls = spec["_target_"].rsplit(".", 1)[-1]
    return next((name for name, known in SAMPLERS.items() if known == cls), None)


def make_sampler(spec: dict, space: SearchSpace, *, seed: Optional[int], n_jobs: int):  # noqa: UP045
    """Build the sampler: the sweeper's seed unless the spec sets one, the grid from the search
    space, constant liar for parallel TPE, no warning per trial for CMA-ES's categoricals."""
    import optuna
    from hydra.utils import instantiate

    kind = sampler_kind(spec)
    spec = dict(spec)
    if spec.get("seed") is None and seed is not None:
        spec["seed"] = seed
    if kind == "grid" and spec.get("search_space") is None:
        spec["search_space"] = {name: p.grid for name, p in space.params.items()}
    if kind == "tpe" and n_jobs > 1:
        spec.setdefault("constant_liar", True)
    if kind == "cmaes":
        spec.setdefault("warn_independent_sampling", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = instantiate(spec, _convert_="all")
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ValueError(f"{spec['_target_']} is not an Optuna sampler")
    return sampler


def pruner_spec(spec: Any) -> Optional[dict]:  # noqa: UP045
    from doomnet.trial import pruner_name

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"pruner must be a name or a mapping, got {spec!r}")
    spec = dict(spec)
    if "_target_" not in spec:
        spec["name"] = pruner_name(spec)
        if spec["name"] == "none":
            return None
    return spec


def described(obj: Any, spec: dict) -> str:
    """`TPESampler(seed=3)`: the class and the settings the spec gave it."""
    shown = {k: v for k, v in spec.items() if k not in ("_target_", "name", "search_space") and v}
    return f"{type(obj).__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"


# --- how a job ended ---------------------------------------------------------------------------


def outcome(result: Any) -> tuple[str, Optional[float], str]:  # noqa: UP045
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

        try:
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
        n_before = 0
        if study_name in existing:
            n_before = storage.get_n_trials(existing[study_name]._study_id)
        seed = conf.get("seed")
        if seed is not None and kind != "qmc":  # a resumed sampler must not redraw old points
            seed = int(seed) + n_before
        try:
            sampler = make_sampler(s_spec, space, seed=seed, n_jobs=n_jobs)
        except Exception as exc:
            raise SweepConfigError(f"bad sampler: {str(exc).splitlines()[0]}") from exc

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

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        ctx = _Context(
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
                return _Entered(cm, value)
        return parent_run(tracking_cfg, project_dir, run_name=title, params=params, tags=tags)

    def _task_overrides(self, ctx: "_Context") -> list[str]:
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

    def _run_trials(self, ctx: "_Context") -> Optional[str]:  # noqa: UP045
        """Ask, launch and tell until the study has its trials; the reason if it stopped."""
        asynchronous = ctx.n_jobs > 1 and self.conf.get("keep_busy", True)
        asynchronous = asynchronous and not self._in_process()
        results: queue.Queue = queue.Queue()
        in_flight: dict[int, Flight] = {}
        stop_reason = None
        last_beat = time.monotonic()
        try:
            while True:
                stop_reason = stop_reason or ctx.failure_stop()
                room = 0 if stop_reason else ctx.room()
                free = ctx.n_jobs - len(in_flight)
                if room > 0 and free > 0:
                    if asynchronous:
                        flight = self._ask(ctx)
                        in_flight[flight.number] = flight
                        self._launch_async(flight, results)
                        continue
                    batch = [self._ask(ctx) for _ in range(min(room, free))]
                    for flight in batch:
                        in_flight[flight.number] = flight
                    try:
                        returns = self.launcher.launch(
                            [f.overrides for f in batch], initial_job_idx=batch[0].number
                        )
                    except Exception as exc:  # e.g. a job's overrides do not compose
                        returns = [exc] * len(batch)
                    for flight, result in zip(batch, returns, strict=True):
                        self._finish(ctx, in_flight.pop(flight.number), result)
                    continue
                if not in_flight:
                    return stop_reason
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

    def _ask(self, ctx: "_Context") -> Flight:
        from doomnet.trial import SWEEPER_PREFIX, owner_attrs

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
        storage.set_trial_user_attr(trial._trial_id, "run_name", name)
        overrides = [*ctx.space.fixed, *ctx.space.overrides(values), *extra]
        overrides += ctx.task_overrides + [f"trial.number={trial.number}"] * (
            "trial" in self.config
        )
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

    def _finish(self, ctx: "_Context", flight: Flight, result: Any) -> None:
        state, value, reason = outcome(result)
        ctx.tell(flight, state, value, reason)

    def _abandon(self, ctx: "_Context", in_flight: dict, results: queue.Queue, exc: BaseException):
        """The sweep was interrupted: stop the jobs, tell what finished, fail and requeue the
        rest, so nothing stays RUNNING and a resume tries them again."""
        if isinstance(exc, KeyboardInterrupt):
            reason = f"interrupted ({'SIGTERM' if 'SIGTERM' in str(exc) else 'Ctrl-C'})"
        else:
            reason = f"the sweep stopped: {type(exc).__name__}: {exc}"
        log.warning("%s: stopping %d running trial(s)", reason, len(in_flight))
        me = os.getpid()
        for flight in in_flight.values():
            pid = ctx.job_pid(flight)
            if pid is not None and pid != me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while in_flight and not self._in_process() and time.monotonic() < deadline:
            try:
                number, result = results.get(timeout=1.0)
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

    def _fail_orphans(self, ctx: "_Context") -> None:
        """Fail and requeue the trials a dead sweep left RUNNING (pids on this host, heartbeat
        elsewhere; Optuna's own heartbeat check on an RDB storage)."""
        import optuna

        from doomnet.trial import orphan_reason

        host = socket.gethostname()
        now = time.time()
        for trial in ctx.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            why = orphan_reason(trial.system_attrs, host=host, now=now, grace_s=ctx.grace_s)
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


class _Context:
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
        self.parent = None  # the MLflow parent run (doomnet.tracking.SweepRun) or None
        self.task_overrides: list[str] = []
        self.best_number: Optional[int] = None  # noqa: UP045

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
            taken = {tuple(t.params.get(n) for n in names) for t in trials if t.params}
            untaken = self.space.grid_size() - len(taken)
            budget = min(budget, states.count("WAITING") + max(untaken, 0))
        return max(budget, 0)

    def failure_stop(self) -> Optional[str]:  # noqa: UP045
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

    def tell(self, flight: Flight, state: str, value: Optional[float], reason: str) -> None:  # noqa: UP045
        import optuna

        finished = optuna.trial.TrialState[state]
        try:
            if state == "FAIL":
                self.storage.set_trial_user_attr(flight.trial_id, "fail_reason", reason)
            self.study.tell(
                flight.number,
                value if state == "COMPLETE" else None,
                state=finished,
                skip_if_finished=True,
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("#%d was already finished by another process", flight.number)
            return
        shown = f"{value:.4f}" if value is not None else reason
        log.info("#%d %s: %s %s", flight.number, flight.name, state, shown)
        self.update_child(flight.trial_id, state, reason)
        self.update_parent()

    def requeue(self, flight: Flight, reason: str, *, killed: bool = True) -> None:
        """Fail a RUNNING trial that did not get to finish (interrupted, or its process died)
        and queue its parameters to be tried again."""
        import optuna

        frozen = self.storage.get_trial(flight.trial_id)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            return
        try:
            self.storage.set_trial_user_attr(flight.trial_id, "fail_reason", reason)
            self.study.tell(flight.number, state=optuna.trial.TrialState.FAIL)
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

    def job_pid(self, flight: Flight) -> Optional[int]:  # noqa: UP045
        """The pid of the process running `flight`'s job, if it is on this host."""
        from doomnet.trial import JOB_PREFIX

        job = self.storage.get_trial_system_attrs(flight.trial_id).get(JOB_PREFIX) or {}
        if job.get("host") == socket.gethostname() and job.get("pid"):
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
