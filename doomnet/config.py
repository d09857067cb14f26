"""The run's typed configuration: the dataclass schema Hydra composes into, and its value checks.

Hydra's schema catches wrong types (`lr=abc`) and unknown keys (`hiden=20`); `validate` catches
what types cannot (`lr=-1`, `lr=nan`, `lr=1e400`, `hidden=0`). `check_command_line` runs both
on the overrides of a command line (every value of every sweep) before any job or MLflow run
exists, and turns Hydra's multi-line errors into one sentence a person can act on.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING  # noqa: F401  (re-exported for schema readers)

DATASETS = ("mnist_5k", "digits", "mnist", "fashion_mnist")
OPTIMIZERS = ("sgd", "momentum", "adam")
INITS = ("normal", "he", "xavier")
PROGRESS = ("auto", "bar", "plain", "none")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A configuration value a run cannot use; the message is one human sentence."""


@dataclass
class DataConfig:
    name: str = "mnist_5k"
    val_fraction: float = 0.1
    root: str | None = None


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = None


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlruns/mlflow.db
    experiment: str = "doomnet"
    run_name: str | None = None  # None: built from the command-line overrides
    parent_run_id: str | None = None  # set by the sweeper: the sweep's MLflow parent run
    log_weights: bool = True
    flush_every_s: float = 5.0  # how often buffered metrics are written while training


@dataclass
class TrialConfig:
    """Handle of the Optuna trial a sweep job belongs to (set by the Optuna sweeper)."""

    storage: str | None = None  # a journal file path or an SQLAlchemy URL
    study_name: str | None = None
    number: int | None = None
    threads: int | None = None  # BLAS threads while training (n_jobs trials share the cores)


@dataclass
class Config:
    lr: float = 0.2
    hidden: Any = 20  # int, or a list of ints for deeper nets
    init_std: float = 1e-4
    init: str = "normal"
    l2: float = 0.0
    iterations: int = 2000
    batch_size: int | None = None
    seed: int = 0
    eval_every: int = 1
    progress: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(self.hidden) if isinstance(self.hidden, list | tuple) else (self.hidden,)


ConfigStore.instance().store(name="doomnet_schema", node=Config)


# --- value checks ----------------------------------------------------------------------------


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    low_open: bool = True,
    high: float | None = None,
    high_open: bool = True,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}.")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}.")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value:g}.")


def _integer(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}.")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}.")


def validate(cfg: Config) -> Config:
    """Check every value a run depends on; raise ConfigError naming the first bad one."""
    _number("lr", cfg.lr, low=0)
    hidden = cfg.hidden if isinstance(cfg.hidden, list | tuple) else [cfg.hidden]
    if not hidden:
        raise ConfigError("hidden must be a width or a non-empty list of widths, got [].")
    for width in hidden:
        _integer("hidden", width, low=1)
    _number("init_std", cfg.init_std, low=0)
    _choice("init", cfg.init, INITS)
    _number("l2", cfg.l2, low=0, low_open=False)
    _integer("iterations", cfg.iterations, low=1)
    if cfg.batch_size is not None:
        _integer("batch_size", cfg.batch_size, low=1)
    _integer("seed", cfg.seed, low=0)
    _integer("eval_every", cfg.eval_every, low=1)
    _choice("progress", cfg.progress, PROGRESS)
    _choice("data", cfg.data.name, DATASETS)
    _number("data.val_fraction", cfg.data.val_fraction, low=0, high=1)
    opt = cfg.optimizer
    _choice("optimizer", opt.name, OPTIMIZERS)
    _number("optimizer.momentum", opt.momentum, low=0, low_open=False, high=1)
    _number("optimizer.beta1", opt.beta1, low=0, low_open=False, high=1)
    _number("optimizer.beta2", opt.beta2, low=0, low_open=False, high=1)
    _number("optimizer.eps", opt.eps, low=0)
    _number("optimizer.weight_decay", opt.weight_decay, low=0, low_open=False)
    if opt.clip_norm is not None:
        _number("optimizer.clip_norm", opt.clip_norm, low=0)
    if not cfg.tracking.experiment:
        raise ConfigError("tracking.experiment must be a non-empty name.")
    _number("tracking.flush_every_s", cfg.tracking.flush_every_s, low=0)
    return cfg


def to_config(cfg: Any) -> Config:
    """Hydra's DictConfig (composed with the schema) -> validated `Config` dataclass."""
    from omegaconf import OmegaConf

    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, Config):  # composed without the schema, e.g. a stored plain dict
        typed = from_dict(OmegaConf.to_container(cfg, resolve=True))
    unknown = sorted(set(cfg.keys()) - {f.name for f in fields(Config)} - {"hydra"})
    if unknown:  # `+foo=1` adds keys past the schema; a run would silently ignore them
        raise ConfigError(f"Unknown config key {unknown[0]!r}: DoomNet would ignore it.")
    return validate(typed)


def from_dict(values: dict) -> Config:
    """A plain nested dict (e.g. a stored config.yaml) -> `Config`, unknown keys refused."""
    nested = {
        "data": DataConfig,
        "optimizer": OptimizerConfig,
        "tracking": TrackingConfig,
        "trial": TrialConfig,
    }
    known = {f.name for f in fields(Config)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"Unknown config key {key!r}.")
        if key in nested:
            sub_known = {f.name for f in fields(nested[key])}
            unknown = set(value) - sub_known
            if unknown:
                raise ConfigError(f"Unknown config key {key}.{sorted(unknown)[0]!r}.")
            value = nested[key](**value)
        kwargs[key] = value
    return Config(**kwargs)


# --- command-line pre-flight -------------------------------------------------------------------


def _known_keys(config_dir: Path) -> list[str]:
    """Every key a command line may set: `lr`, `data`, `optimizer.momentum`, ..."""
    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}
    keys = {f.name for f in fields(Config)} | groups
    for f in fields(Config):
        if isinstance(f.default_factory, type):  # nested sections: data, optimizer, ...
            keys |= {f"{f.name}.{sub.name}" for sub in fields(f.default_factory)}
    return sorted(keys)


def _sweep_values(override: Any) -> list[Any]:
    """The concrete values one override stands for: each choice, each range step, both ends of
    an interval. Optuna's distributions (interval) are checked at their bounds."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep | RangeSweep):
        return list(override.sweep_string_iterator())
    if isinstance(value, IntervalSweep):
        return [str(value.start), str(value.end)]
    return [override.get_value_element_as_str()]


def _explain(exc: BaseException, config_dir: Path) -> str:
    """One readable sentence for a Hydra/OmegaConf composition error."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException):
        group = (exc.missing_cfg_file or "").split("/")[0]
        value = (exc.missing_cfg_file or "").split("/")[-1]
        options = ", ".join(exc.options or [])
        if group == "data":
            return f"Unknown data set {value!r}; choose one of: {options}."
        if exc.options:
            return f"Unknown {group} {value!r}; choose one of: {options}."
        return str(exc).splitlines()[0]
    text = str(exc)
    cause = exc.__cause__
    cause_text = str(cause) if cause is not None else ""
    if text.startswith("Could not override") or "not in struct" in cause_text:
        key = getattr(cause, "full_key", None) or _quoted(text) or "?"
        guess = difflib.get_close_matches(key, _known_keys(config_dir), n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return f"Unknown config key {key!r}{hint}."
    for source in (cause, exc):
        full_key = getattr(source, "full_key", None)
        if full_key and "could not be converted" in str(source):
            expected = str(source).split("converted to ")[-1].splitlines()[0].strip(" '")
            value = getattr(source, "value", None)
            return f"{full_key} must be {_article(expected)}, got {value!r}."
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:300]


def _quoted(text: str) -> str | None:
    parts = text.split("'")
    return parts[1] if len(parts) >= 3 else None


def _article(type_name: str) -> str:
    return {"Float": "a number", "Integer": "a whole number", "Boolean": "true or false"}.get(
        type_name, f"of type {type_name}"
    )


def check_command_line(argv: list[str], config_dir: Path = CONF_DIR) -> None:
    """Compose and validate the config for every value of every override in `argv`.

    Raises ConfigError with one sentence on the first bad value. Sweeps are checked value by
    value against the first value of the others, so a bad grid point fails before job 0 runs.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    config_dir = Path(args.config_dir or config_dir)
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as exc:
        raise ConfigError(f"Cannot parse the command line: {str(exc).splitlines()[0]}") from exc

    user = [o for o in parsed if not o.get_key_element().lstrip("+~").startswith("hydra")]
    hydra_lines = [o.input_line for o in parsed if o not in user]
    choices = [(o, _sweep_values(o)) for o in user]

    configs = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        # The sweeper's own search space (`hydra.sweeper.params`, e.g. from sweeps=<name>) is
        # checked like the command line's, which overrides it key by key.
        base = [f"{o.get_key_element()}={values[0]}" for o, values in choices]
        try:
            composed = compose(
                config_name=args.config_name or "config",
                overrides=base + hydra_lines,
                return_hydra_config=True,
            )
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise ConfigError(_explain(exc, config_dir)) from exc
        given = {o.get_key_element() for o in user}
        for line in _sweeper_params(composed, skip=given):
            try:
                override = OverridesParser.create().parse_override(line)
            except HydraException as exc:
                first = str(exc).splitlines()[0]
                raise ConfigError(f"Cannot parse the search space {line!r}: {first}") from exc
            choices.append((override, _sweep_values(override)))
        base = [f"{o.get_key_element()}={values[0]}" for o, values in choices]
        candidates = [base]
        for i, (o, values) in enumerate(choices):
            for v in values[1:]:
                candidates.append(base[:i] + [f"{o.get_key_element()}={v}"] + base[i + 1 :])
        for overrides in candidates:
            try:
                composed = compose(config_name=args.config_name or "config", overrides=overrides)
                configs.append(to_config(composed))
            except ConfigError:
                raise
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                raise ConfigError(_explain(exc, config_dir)) from exc
    GlobalHydra.instance().clear()
    check_data(configs)


def _sweeper_params(composed: Any, skip: set[str]) -> list[str]:
    """`key=expression` for each entry of `hydra.sweeper.params` whose key is not in `skip`."""
    from omegaconf import OmegaConf

    params = OmegaConf.select(composed, "hydra.sweeper.params", default=None)
    if not params:
        return []
    return [f"{key}={value}" for key, value in params.items() if key not in skip]


def check_data(configs: list[Config]) -> None:
    """Load each data set the configs name (a missing or corrupt file fails here, in one
    sentence) and check every batch size against its training split."""
    from doomnet.data import load_dataset

    largest: dict[tuple, int] = {}
    for cfg in configs:
        key = (cfg.data.name, cfg.data.val_fraction, cfg.data.root)
        largest[key] = max(largest.get(key, 0), cfg.batch_size or 0)
    for (name, val_fraction, root), batch_size in largest.items():
        splits = load_dataset(name, val_fraction=val_fraction, root=root)  # ValueError: one line
        check_batch_size(batch_size or None, len(splits.y_train), name)


def check_batch_size(batch_size: int | None, n_train: int, data_name: str) -> None:
    if batch_size is not None and batch_size > n_train:
        raise ConfigError(
            f"batch_size must be <= the {n_train} training samples of {data_name}, "
            f"got {batch_size}."
        )


def hydra_project_dir(hydra_cfg: Any) -> Path:
    """The project folder: the parent of Hydra's primary config dir (`<project>/conf`)."""
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path).resolve().parent
    return Path.cwd()
