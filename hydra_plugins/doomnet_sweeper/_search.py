"""The search space of an Optuna study from Hydra's sweep grammar, and its sampler and pruner.

lr=tag(log, interval(1e-3, 1))   -> FloatDistribution(0.001, 1.0, log=True)
iterations=int(interval(50, 500)) -> IntDistribution(50, 500)
hidden=choice(20, 64, 128)        -> CategoricalDistribution([20, 64, 128])
batch_size=range(32, 257, 32)     -> IntDistribution(32, 256, step=32)  (Hydra's range: stop
                                     excluded, the same values the basic sweeper runs)
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.doomnet_sweeper._common import quote

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
}
# The keyword arguments each sampler's config node lists (None: Optuna's default), so that
# `hydra.sweeper.sampler.n_startup_trials=5` or a YAML mapping can set them (Hydra's config is
# closed to new keys). From Optuna 5.1; a name a later Optuna drops stays None and unused.
SAMPLER_KWARGS = {
    "tpe": [
        "consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints",
        "n_startup_trials", "n_ei_candidates", "multivariate", "group",
        "warn_independent_sampling", "constant_liar",
    ],
    "random": [],
    "grid": ["search_space"],
    "cmaes": [
        "x0", "sigma0", "n_startup_trials", "warn_independent_sampling",
        "consider_pruned_trials", "restart_strategy", "popsize", "inc_popsize",
        "use_separable_cma", "with_margin", "lr_adapt",
    ],
    "qmc": ["qmc_type", "scramble", "warn_asynchronous_seeding", "warn_independent_sampling"],
}  # fmt: skip
# Task overrides that do not change what a trial computes (left out of the study's identity).
NOT_IDENTITY = ("progress", "tracking.", "trial.")


# --- the search space --------------------------------------------------------------------------


@dataclass
class Param:
    """One swept key: its Optuna distribution and how its values are written as overrides."""

    name: str
    text: str  # as written: "tag(log, interval(0.001, 1))"
    distribution: Any
    texts: dict = field(default_factory=dict)  # categorical choice -> override text
    grid: list | None = None  # the values a grid visits; None: an interval

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
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return f"choice({', '.join(map(str, distribution.choices))})"
    text = f"interval({distribution.low:g}, {distribution.high:g})"
    step = distribution.step
    if step is not None and not (isinstance(distribution, IntDistribution) and step == 1):
        text += f" step {step:g}"
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
            if param is not None and value in param.texts:  # a choice: as written
                parts.append(f"{name}={param.texts[value]}")
            else:
                parts.append(f"{name}={short(value, render(value))}")
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


# --- samplers and pruners ---------------------------------------------------------------------


def sampler_spec(spec: Any) -> dict:
    """The sampler config as a dict with `_target_` and only the keys that are set: a name,
    {name: ..., kwargs} or the official plugin's {_target_: ..., kwargs}. A `name` that is set
    wins over the `_target_` of the default node it was merged into."""
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"sampler must be a name or a mapping, got {spec!r}")
    spec = {k: v for k, v in spec.items() if v is not None}
    name = spec.pop("name", None)
    if name is not None or "_target_" not in spec:
        name = str(name or "tpe").lower()
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
        spec["_target_"] = f"optuna.samplers.{SAMPLERS[name]}"
    return spec


def sampler_kind(spec: dict) -> str | None:
    """Which of the known samplers a spec builds (None: another class)."""
    cls = spec["_target_"].rsplit(".", 1)[-1]
    return next((name for name, known in SAMPLERS.items() if known == cls), None)


def make_sampler(spec: dict, space: SearchSpace, *, seed: int | None, n_jobs: int):
    """(sampler, the spec it was built from): the sweeper's seed unless the spec sets one, the
    grid from the search space, constant liar for parallel TPE, and no warning per trial about
    CMA-ES's categorical parameters."""
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
    return sampler, spec


def pruner_spec(spec: Any) -> dict | None:
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
    hidden = ("_target_", "name", "search_space")
    shown = {k: v for k, v in spec.items() if k not in hidden and v is not None}
    return f"{type(obj).__name__}({', '.join(f'{k}={v}' for k, v in shown.items())})"
