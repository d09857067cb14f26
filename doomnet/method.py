"""The words of a report: formatted values, the "method" paragraph for a paper's appendix
(model, data, search space, sampler, pruner, selection) and the command lines that re-run a
configuration. Everything here is read from the runs, the parent run and the study."""

from __future__ import annotations

import ast
import math
import shlex
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from doomnet.analysis import (
    OBJECTIVE,
    Sweep,
    provenance,
    state_counts,
    study_counts,
    study_distributions,
)
from doomnet.run import HIDDEN_OVERRIDES  # overrides that do not change what a run computes


def counted(counter: Counter, n_total: int) -> str:
    """`value` (all n runs), or each value with its count when the runs disagree."""
    if len(counter) == 1:
        value = next(iter(counter))
        return f"`{value}` (all {n_total} runs)" if n_total > 1 else f"`{value}`"
    return "; ".join(f"`{v}` ({n} runs)" for v, n in counter.most_common())


def fmt_value(value: Any) -> str:
    """A param for people: 6 significant digits, "-" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt_metric(value: Any, digits: int = 4) -> str:
    """A metric with fixed decimals, "-" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def _override_value(value: Any) -> str:
    """A param value as Hydra reads it back: null, true/false, floats that round-trip."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float):
        return repr(float(value))  # np.float64 too
    if value in ("True", "False"):
        return value.lower()
    return str(value)


def rerun_command(overrides: Sequence[str] | None, params: dict[str, Any], seeds: Sequence) -> str:
    """`uv run train.py ...` for one configuration and its seeds (a multirun over seeds)."""
    if overrides is None:  # no overrides.yaml: spell the whole config out, exactly
        groups = {"data.name": "data", "optimizer.name": "optimizer"}
        overrides = [f"{groups.get(k, k)}={_override_value(v)}" for k, v in params.items()]
    kept = [
        o
        for o in overrides
        if not o.lstrip("+~").startswith(HIDDEN_OVERRIDES) and o.split("=", 1)[0] != "seed"
    ]
    seeds = [str(s) for s in seeds]
    seed_part = [f"seed={','.join(seeds)}"] if seeds else []
    multirun = ["-m"] if len(seeds) > 1 else []
    return shlex.join(["uv", "run", "train.py", *multirun, *kept, *seed_part])


def _distribution_text(name: str, dist: Any) -> str:
    kind = type(dist).__name__
    if kind == "CategoricalDistribution":
        return f"{name} ∈ {{{', '.join(fmt_value(c) for c in dist.choices)}}}"
    low, high = fmt_value(dist.low), fmt_value(dist.high)
    if getattr(dist, "log", False):
        return f"{name} log-uniform on [{low}, {high}]"
    step = getattr(dist, "step", None)
    integer = kind == "IntDistribution"
    if step not in (None, 1) or (integer and step not in (None, 1)):
        return f"{name} ∈ {{{low}, ..., {high}}} (step {fmt_value(step)})"
    return f"{name} {'integers ' if integer else 'uniform '}in [{low}, {high}]"


def method_paragraph(
    sweep: Sweep,
    frame: pd.DataFrame,
    params: Sequence[str],
    swept: Sequence[str],
    configs: pd.DataFrame,
) -> str:
    """A paragraph for a paper's appendix: model, data, search, pruning, selection."""
    first = frame.iloc[0]
    fixed = {p: first[p] for p in params if p not in swept and frame[p].map(str).nunique() == 1}

    model = _model_sentence(fixed, swept)

    data_parts = []
    for name, entry in provenance(sweep.runs)["data"].items():
        sizes_text = next(iter(entry["sizes"]))
        try:
            sizes = ast.literal_eval(sizes_text)
            split = (
                f"{sizes['train']} training, {sizes['val']} validation and "
                f"{sizes['test']} test examples"
            )
        except (ValueError, SyntaxError, KeyError, TypeError):
            split = "split sizes not recorded"
        checksum = next(iter(entry["checksums"]))
        data_parts.append(f"`{name}` ({split}; `{checksum[:19]}…`)")
    val_fraction = fixed.get("data.val_fraction")
    share = f"{val_fraction:.0%}" if is_number(val_fraction) else "a swept fraction"
    data = (
        f"Data: {', '.join(data_parts)}; the validation split is a stratified {share} of the "
        "training data drawn with the run's seed; the test split is fixed (the same for every "
        "seed)."
    )

    space = _search_space(sweep, frame, swept)
    seeds = sorted(frame["seed"].dropna().unique().tolist()) if "seed" in frame else []
    seed_text = (
        f" Each configuration was run with seeds {', '.join(str(s) for s in seeds)}."
        if len(seeds) > 1
        else f" All runs used seed {seeds[0]}."
        if seeds
        else ""
    )
    counts = state_counts(frame)
    counted = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    if sweep.study is not None:
        sc = study_counts(sweep.study)
        trials = ", ".join(f"{n} {s.lower()}" for s, n in sc.items())
        search = (
            f"Search: {_sweeper_text(sweep)} over {space}; the study holds "
            f"{sum(sc.values())} trials ({trials}), tracked as {len(frame)} MLflow runs "
            f"({counted}). {_pruner_text(sweep, counts.get('PRUNED', 0))}{seed_text}"
        )
    else:
        search = (
            f"Search: {_sweeper_text(sweep)} over {space}: {len(frame)} runs ({counted})."
            f"{seed_text}"
        )
    replicated = not configs.empty and (configs["n"] > 1).any()
    selection = (
        "The objective is the validation accuracy after the last iteration "
        f"(`{OBJECTIVE}`), maximised. "
        + (
            "Seed replicates of a configuration (all settings but the seed) are averaged, "
            "configurations are ranked on the mean, and the spread is given as a 95% "
            "Student-t interval"
            if replicated
            else "Each configuration ran once, so configurations are ranked on that run and "
            "no interval over seeds can be given"
        )
        + "; test accuracy was not used for selection."
    )
    if not configs.empty:
        best = configs.iloc[0]
        label = ", ".join(f"{p}={fmt_value(best[p])}" for p in swept) or "the single configuration"
        ci = (
            f" (95% CI {best['ci_low']:.4f} to {best['ci_high']:.4f}, n={best['n']})"
            if best["n"] > 1
            else " (one run)"
        )
        selection += (
            f" The best configuration, {label}, reached a mean validation accuracy of "
            f"{best['mean']:.4f}{ci} and a mean test accuracy of {best['test_acc_mean']:.4f}."
        )
    return " ".join([model, data, search, selection])


OPTIMIZER_NAMES = {"sgd": "gradient descent", "momentum": "momentum SGD", "adam": "Adam"}


def _model_sentence(fixed: dict[str, Any], swept: Sequence[str]) -> str:
    """'We trained DoomNet ... with <optimizer> (<batches>, <lr>) for <n> iterations ...'."""

    def value(key: str, template: str, swept_text: str) -> str:
        return swept_text if key in swept else template.format(fmt_value(fixed.get(key)))

    hidden = value("hidden", "hidden width {}", "swept hidden width")
    if "init" in swept:
        init = "swept initialisation"
    elif fixed.get("init") == "normal":
        init = "normal initialisation " + value("init_std", "(std {})", "(swept std)")
    else:
        init = f"{fixed.get('init', '?')} initialisation"
    if "batch_size" in swept:
        batches = "swept batch size"
    elif fixed.get("batch_size") is None:
        batches = "full batch"
    else:
        batches = f"mini-batches of {fmt_value(fixed.get('batch_size'))}"
    if "optimizer.name" in swept:
        optimizer = "a swept optimizer"
    else:
        name = str(fixed.get("optimizer.name", "?"))
        optimizer = OPTIMIZER_NAMES.get(name, name)
        if name == "momentum":
            nesterov = " Nesterov" if fixed.get("optimizer.nesterov") in (True, "True") else ""
            optimizer += value("optimizer.momentum", f" ({{}}{nesterov})", " (swept momentum)")
    lr = value("lr", "learning rate {}", "swept learning rate")
    l2 = fixed.get("l2")
    penalty = (
        ", swept L2 penalty"
        if "l2" in swept
        else f", L2 penalty {fmt_value(l2)}"
        if l2 not in (None, 0, 0.0)
        else ""
    )
    iterations = value("iterations", "{} iterations", "a swept number of iterations")
    every = value("eval_every", "every {} iteration(s)", "at a swept interval")
    return (
        "We trained DoomNet, a multilayer perceptron written in NumPy (ReLU hidden layers, "
        f"softmax cross-entropy; {hidden}, {init}), with {optimizer} ({batches}, {lr}"
        f"{penalty}) for {iterations}, measuring validation accuracy {every}."
    )


def _search_space(sweep: Sweep, frame: pd.DataFrame, swept: Sequence[str]) -> str:
    if sweep.study is not None:
        dists = study_distributions(sweep.study)
        if dists:
            return "; ".join(_distribution_text(n, d) for n, d in sorted(dists.items()))
    parts = []
    for p in swept:
        values = sorted(frame[p].dropna().unique().tolist(), key=lambda v: (str(type(v)), v))
        parts.append(f"{p} ∈ {{{', '.join(fmt_value(v) for v in values)}}}")
    return "; ".join(parts) or "a single configuration"


def _parent_tag(sweep: Sweep, key: str) -> str | None:
    """A tag of the sweep's parent run, e.g. the Optuna sweeper's `optuna.sampler`
    (`TPESampler(seed=3)`; an empty `()` dropped)."""
    value = sweep.parent.tags.get(key) if sweep.parent is not None else None
    return value.removesuffix("()") if value else None


def _sweeper_text(sweep: Sweep) -> str:
    if _parent_tag(sweep, "sweep.sweeper") == "doomnet_grid":
        return "an exhaustive grid (Hydra's basic sweeper, `doomnet_grid`)"
    if sweep.study is None:
        return "the runs of this experiment"
    sampler = _parent_tag(sweep, "optuna.sampler")
    n_trials = _parent_tag(sweep, "optuna.n_trials")
    budget = f" with a budget of {n_trials} complete or pruned trials" if n_trials else ""
    seed = _parent_tag(sweep, "optuna.seed")
    seeded = f" (seed {seed})" if seed and sampler and "seed=" not in sampler else ""
    if sampler:
        return f"Optuna's `{sampler}`{seeded}{budget}"
    return f"Optuna (sampler not recorded in the tracking store){budget}"


def _pruner_text(sweep: Sweep, n_pruned: int) -> str:
    pruner = _parent_tag(sweep, "optuna.pruner")
    if pruner and not pruner.startswith("NopPruner"):
        return (
            f"Unpromising trials were stopped by Optuna's `{pruner}` on the validation "
            f"accuracy reported at every evaluation ({n_pruned} pruned runs)."
        )
    if n_pruned:
        return f"{n_pruned} runs were pruned (pruner not recorded in the tracking store)."
    return "No trials were pruned."
