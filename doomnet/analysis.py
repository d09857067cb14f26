"""A sweep's runs as tables: one row per run, seed replicates aggregated per configuration,
swept and log-scaled parameters, state counts, fANOVA importances and provenance.

Inputs are `doomnet.tracking.RunRecord`s and, when the runs belong to one, an Optuna study;
the outputs are pandas frames and plain dicts that `doomnet.report` renders.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from doomnet.tracking import RunRecord, Store

OBJECTIVE = "val/final_acc"  # maximised: the value train.py returns to the sweeper
FINAL_METRICS = ("val/final_acc", "val/best_acc", "test/acc", "test/loss", "steps", "time/train_s")
RUN_ID_ATTR = "mlflow.run_id"  # a trial's user attr: its MLflow run (set by the sweeper)


@dataclass
class Sweep:
    """The runs of one report and where they came from."""

    name: str  # the default folder name: reports/<name>/
    source: str  # one line: "experiment doomnet", "sweep run 1dd4...", "Optuna study x"
    store: Store
    runs: list[RunRecord]  # training runs (no sweep parents, no re-runs)
    parent: RunRecord | None = None
    study: Any = None  # optuna.Study
    storage: str | None = None  # where the study lives
    reruns: int = 0  # `doomnet reproduce` runs left out


# --- runs -> tables  -----------------------------------------------------------------------------


def _parse(value: str | None) -> Any:
    """A param as logged (a string) -> int, float, None or the string itself."""
    if value is None or value == "None":
        return None
    try:
        number = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(number, bool) or not isinstance(number, int | float):
        return value
    return number


def _trials(study: Any) -> tuple[dict[int, str], dict[str, int]]:
    """({trial number: state}, {MLflow run id: trial number}) of the sweep's study."""
    if study is None:
        return {}, {}
    trials = study.get_trials(deepcopy=False)
    runs = {t.user_attrs[RUN_ID_ATTR]: t.number for t in trials if RUN_ID_ATTR in t.user_attrs}
    return {t.number: t.state.name for t in trials}, runs


def run_state(run: RunRecord) -> str:
    """FINISHED, PRUNED, FAILED, KILLED or RUNNING (pruned trials end KILLED in MLflow)."""
    if run.status == "KILLED" and run.tags.get("optuna.state") == "PRUNED":
        return "PRUNED"
    return run.status


def runs_frame(runs: Sequence[RunRecord], study: Any = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: ids, state (and the trial's, with a study), every param parsed, the
    final metrics, duration, provenance. Returns (frame, param column names)."""
    trial_states, trial_of_run = _trials(study)
    params = sorted({k for r in runs for k in r.params})
    rows = []
    for r in runs:
        trial = trial_of_run.get(r.run_id, _parse(r.tags.get("optuna.trial")))
        row: dict[str, Any] = {
            "run_id": r.run_id,
            "run": r.name,
            "state": run_state(r),
            "trial": trial if isinstance(trial, int) else None,
        }
        if study is not None:
            row["trial_state"] = trial_states.get(trial) if isinstance(trial, int) else None
        for key in params:
            row[key] = _parse(r.params.get(key))
        for key in FINAL_METRICS:
            row[key] = r.metrics.get(key, math.nan)
        row["last_val_acc"] = r.metrics.get("val/acc", math.nan)
        row["duration_s"] = r.duration_s
        row["started"] = (
            dt.datetime.fromtimestamp(r.start_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            if r.start_ms
            else None
        )
        row["git_commit"] = r.tags.get("git.commit")
        row["git_dirty"] = r.tags.get("git.dirty")
        row["data_checksum"] = r.tags.get("data.checksum")
        row["reason"] = r.tags.get("error") or r.tags.get("doomnet.end_reason") or ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "trial" in frame:
        frame["trial"] = frame["trial"].astype("Int64")
    return frame, params


def swept_params(frame: pd.DataFrame, params: Sequence[str], study: Any = None) -> list[str]:
    """Params that vary across the runs (or that the study searched), seed excluded."""
    swept = [p for p in params if frame[p].map(str).nunique() > 1]
    if study is not None:
        for name in study_distributions(study):
            key = name if name in params else f"{name}.name" if f"{name}.name" in params else None
            if key and key not in swept:
                swept.append(key)
    return [p for p in swept if p != "seed"]


def study_distributions(study: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        found.update(trial.distributions)
    return found


def log_params(frame: pd.DataFrame, swept: Sequence[str], study: Any = None) -> set[str]:
    """Params to draw on a log axis: log in the study's distribution, or positive numbers
    that span at least two decades."""
    logs = set()
    dists = study_distributions(study) if study is not None else {}
    for p in swept:
        dist = dists.get(p)
        if dist is not None and getattr(dist, "log", False):
            logs.add(p)
            continue
        values = pd.to_numeric(frame[p], errors="coerce")
        if values.notna().all() and (values > 0).all() and values.max() / values.min() >= 100:
            logs.add(p)
    return logs


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for n replicates (n - 1 degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def aggregate_seeds(
    frame: pd.DataFrame, params: Sequence[str], objective: str = OBJECTIVE
) -> pd.DataFrame:
    """Seed replicates as one configuration (every param but `seed`), FINISHED runs only:
    n, seeds, mean, sample std, 95% t-interval of the objective; ranked on the mean."""
    config_keys = [p for p in params if p != "seed"]
    done = frame[(frame["state"] == "FINISHED") & frame[objective].notna()]
    if done.empty:
        return pd.DataFrame()
    keyed = done.assign(_key=done[config_keys].map(str).agg("\x1f".join, axis=1))
    rows = []
    for _, group in keyed.groupby("_key", sort=False):
        values = group[objective].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else math.nan
        half = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        best = group.loc[group[objective].idxmax()]
        first = group.iloc[0]
        rows.append(
            {
                **{p: first[p] for p in config_keys},
                "n": n,
                "seeds": ",".join(str(s) for s in sorted(group["seed"].dropna().tolist()))
                if "seed" in group
                else "",
                "mean": mean,
                "std": std,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "test_acc_mean": float(group["test/acc"].mean()),
                "best_run_id": best["run_id"],
                "run_ids": " ".join(group["run_id"]),
                "_first_start": first["started"] or "",
            }
        )
    configs = pd.DataFrame(rows)
    configs = configs.sort_values(
        ["mean", "n", "_first_start"], ascending=[False, False, True], kind="stable"
    ).drop(columns="_first_start")
    configs.insert(0, "rank", range(1, len(configs) + 1))
    return configs.reset_index(drop=True)


def state_counts(frame: pd.DataFrame) -> dict[str, int]:
    order = ["FINISHED", "PRUNED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"]
    counts = Counter(frame["state"])
    return {s: counts[s] for s in order if counts[s]} | {
        s: n for s, n in counts.items() if s not in order
    }


def study_counts(study: Any) -> dict[str, int]:
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    order = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    return {s: counts[s] for s in order if counts[s]}


def importances(study: Any) -> tuple[dict[str, float], str]:
    """fANOVA importances of the study's params (seeded), or ({}, why not)."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = {name for name, dist in study_distributions(study).items() if not dist.single()}
    if len(complete) < 2 or not searched:
        return (
            {},
            f"not computed: {len(complete)} complete trial(s), "
            f"{len(searched)} searched parameter(s)",
        )
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as exc:
        return {}, f"not computed: {exc}"
    return {k: float(v) for k, v in found.items()}, f"fANOVA over {len(complete)} complete trials"


# --- provenance ----------------------------------------------------------------------


def _values(runs: Iterable[RunRecord], key: str) -> Counter:
    return Counter(r.tags.get(key, "not recorded") for r in runs)


def provenance(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """What the runs were made with, each value counted over the runs: commits, lock file,
    training code, packages, Python, BLAS, hosts, data checksums and split sizes."""
    commits = Counter(
        (r.tags.get("git.commit", "not recorded"), r.tags.get("git.dirty", "?")) for r in runs
    )
    packages = sorted({k for r in runs for k in r.tags if k.startswith("version.")})
    data = {}
    for r in runs:
        name = r.params.get("data.name") or r.tags.get("data.name", "?")
        entry = data.setdefault(name, {"checksums": Counter(), "sizes": Counter()})
        entry["checksums"][r.tags.get("data.checksum", "not recorded")] += 1
        entry["sizes"][r.tags.get("data.sizes", "not recorded")] += 1
    return {
        "commits": commits,
        "lock": _values(runs, "lock.sha256"),
        "code": _values(runs, "code.sha256"),
        "packages": {p.removeprefix("version."): _values(runs, p) for p in packages},
        "python": _values(runs, "python"),
        "blas": Counter(
            (
                r.tags.get("blas.library", "not recorded"),
                r.tags.get("blas.threads", "?"),
                r.tags.get("blas.architecture", "?"),
            )
            for r in runs
        ),
        "hosts": _values(runs, "host"),
        "data": data,
    }
