"""Exact re-runs: `doomnet reproduce RUN_ID`.

A finished run is re-run from its stored resolved config (`config.yaml`, seed included) in
the same experiment, as a new MLflow run tagged `doomnet.reproduces=<RUN_ID>`, and compared
with the original: the final metrics first, then every weight tensor of `model/weights.npz`.
The verdict is "identical" or the first metric or tensor that differs, and by how much.

What a bit-identical re-run depends on (each is recorded on every run and checked here):

- the same data: the source data's checksum (`data.checksum`) is checked before anything runs;
- the same code: the git commit (`git.commit`, `git.dirty`) and, with or without git, a hash
  of the training code's source (`code.sha256`: doomnet's model, optim, fit, data, run and
  config modules);
- the same numerical libraries: NumPy and the BLAS it calls (`version.numpy`, `blas.library`),
  the CPU kernels BLAS picks (`blas.architecture`) and its thread count (`blas.threads`, set
  with OMP_NUM_THREADS / OPENBLAS_NUM_THREADS): a matrix product summed in another order or
  with other SIMD kernels rounds differently, and the difference grows over the iterations;
- everything random is drawn from generators seeded by the config's `seed` (initial weights,
  validation split, batch order), never from global state.

A difference in any of these is printed as a warning before the run; the comparison decides.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from doomnet.tracking import RunRecord, Store, StoreError

# Compared in this order; time/* metrics measure the machine, not the result.
METRIC_ORDER = ("val/final_acc", "val/best_acc", "test/acc", "test/loss", "steps")
NOT_COMPARED = ("time/",)
ENVIRONMENT_TAGS = ("python", "blas.library", "blas.threads", "blas.architecture")


class ReproduceError(RuntimeError):
    """The run cannot be re-run or compared (one line)."""


@dataclass
class Verdict:
    matches: bool  # bit-identical, or within the tolerance asked for
    message: str  # "identical: ...", "within tolerance: ..." or "differs: <what> ..."
    new_run_id: str


def _config(store: Store, run: RunRecord, tmp: Path):
    import yaml

    from doomnet.config import ConfigError, from_dict

    path = store.download(run.run_id, "config.yaml", tmp / "original")
    try:
        return from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ConfigError, TypeError, AttributeError) as exc:
        raise ReproduceError(f"run {run.run_id}: stored config.yaml is unreadable: {exc}") from exc


def stored_overrides(store: Store, run_id: str, folder: Path) -> list[str] | None:
    """The run's command-line overrides (its `overrides.yaml`), or None if it has none."""
    import yaml

    try:
        path = store.download(run_id, "overrides.yaml", folder)
        loaded = yaml.safe_load(path.read_text())
    except (StoreError, OSError, yaml.YAMLError):
        return None
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def environment_warnings(original: dict[str, str], now: dict[str, str]) -> list[str]:
    """One line per recorded library version, BLAS setting or code version that differs."""
    warnings = []
    keys = [k for k in original if k.startswith("version.")] + list(ENVIRONMENT_TAGS)
    for key in keys:
        if key in original and key in now and original[key] != now[key]:
            warnings.append(
                f"{key} is {now[key]} here but was {original[key]} for the original run: "
                "results may differ in the last bits"
            )
    if original.get("code.sha256") and original["code.sha256"] != now.get("code.sha256"):
        warnings.append(
            "the training code (doomnet's model, optim, fit, data, run, config) differs "
            "from the original run's (code.sha256): results may differ"
        )
    then, here = original.get("git.commit"), now.get("git.commit")
    if then and here and then != here:
        warnings.append(f"the code is at commit {here[:12]}, the original ran at {then[:12]}")
    if original.get("git.dirty") == "True":
        warnings.append("the original run had uncommitted changes: its exact code is unknown")
    if now.get("git.dirty") == "True":
        warnings.append("the working tree has uncommitted changes")
    return warnings


def first_metric_difference(
    original: dict[str, float], new: dict[str, float], atol: float = 0.0
) -> str | None:
    """'metric KEY: A (original) vs B (re-run), |Δ| D' for the first that differs, or None."""
    keys = [k for k in METRIC_ORDER if k in original]
    keys += sorted(k for k in original if k not in keys and not k.startswith(NOT_COMPARED))
    for key in keys:
        a, b = original[key], new.get(key)
        if b is None:
            return f"metric {key}: {a!r} (original) vs missing (re-run)"
        same = a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol
        if not same:
            return f"metric {key}: {a:.17g} (original) vs {b:.17g} (re-run), |Δ| {abs(a - b):.3g}"
    return None


def first_tensor_difference(
    original: dict[str, np.ndarray], new: dict[str, np.ndarray], atol: float = 0.0
) -> str | None:
    """'tensor NAME: ...' for the first weight tensor that differs (shape, dtype or values)."""
    for key in original:
        a, b = original[key], new.get(key)
        if b is None:
            return f"tensor {key}: missing from the re-run's weights"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"tensor {key}: {a.dtype}{list(a.shape)} (original) vs {b.dtype}{list(b.shape)}"
        delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
        bad = delta > atol if atol > 0 else a != b
        if bad.any():
            where = np.unravel_index(int(np.argmax(np.where(bad, delta, -1.0))), a.shape)
            at = ", ".join(str(int(i)) for i in where)
            return (
                f"tensor {key}: {int(bad.sum())} of {a.size} values differ, max |Δ| "
                f"{delta.max():.3g} (at [{at}]: {float(a[where]):.9g} original vs "
                f"{float(b[where]):.9g} re-run)"
            )
    extra = [k for k in new if k not in original]
    if extra:
        return f"tensor {extra[0]}: only in the re-run's weights"
    return None


def _weights(store: Store, run_id: str, folder: Path) -> dict[str, np.ndarray]:
    from doomnet.model import DoomNet

    path = store.download(run_id, "model/weights.npz", folder)
    try:
        return DoomNet.load(path).params
    except ValueError as exc:
        raise ReproduceError(f"run {run_id}: {exc}") from exc


def reproduce(
    store: Store,
    run_id: str,
    *,
    project_dir: Path,
    atol: float = 0.0,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    warn: Callable[[str], None] = lambda line: print(f"warning: {line}", file=sys.stderr),
) -> Verdict:
    """Re-run `run_id` from its stored config and compare. Raises ReproduceError/StoreError
    (one line) before any new run exists if the run cannot be re-run."""
    from doomnet.config import validate
    from doomnet.data import dataset_checksum

    original = store.run(run_id)
    run_id = original.run_id
    if original.tags.get("doomnet.kind") == "sweep":
        raise ReproduceError(f"run {run_id} is a sweep's parent run; give one of its child runs")
    if original.status != "FINISHED":
        state = original.tags.get("optuna.state") or original.status
        raise ReproduceError(
            f"run {run_id} ended {state}: only FINISHED runs have final metrics and weights "
            "to compare"
        )
    with tempfile.TemporaryDirectory(prefix="doomnet-reproduce-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = validate(_config(store, original, tmp))
        old_weights = _weights(store, run_id, tmp / "original")
        recorded = original.tags.get("data.checksum")
        try:
            local = dataset_checksum(cfg.data.name, cfg.data.root, download=True)
        except ValueError as exc:  # DataError: missing or corrupt files, one sentence
            raise ReproduceError(f"cannot load data {cfg.data.name}: {exc}") from exc
        if recorded and recorded != local:
            raise ReproduceError(
                f"data checksum mismatch for {cfg.data.name}: run {run_id[:8]} used "
                f"{recorded[:23]}…, the data here is {local[:23]}…; not re-running"
            )
        if not recorded:
            warn(f"run {run_id[:8]} recorded no data checksum: the data could not be checked")
        # A sweep job may have trained with fewer BLAS threads (trial.threads): so does the
        # re-run, and the environment is read (and recorded) under that limit.
        with _blas_threads(getattr(cfg.trial, "threads", None)):
            new_id = _rerun(store, original, cfg, tmp, project_dir, say, warn)
        new = store.run(new_id)
        difference = first_metric_difference(original.metrics, new.metrics, atol)
        n_metrics = sum(1 for k in original.metrics if not k.startswith(NOT_COMPARED))
        if difference is None:
            new_weights = _weights(store, new_id, tmp / "new")
            difference = first_tensor_difference(old_weights, new_weights, atol)
    compared = f"{n_metrics} final metrics and {len(old_weights)} weight tensors"
    if difference is None and atol == 0:
        verdict = f"identical: {compared} match bit for bit"
    elif difference is None:
        verdict = f"within tolerance: {compared} agree within {atol:g}"
    else:
        verdict = f"differs: {difference}"
    store.set_tags(new_id, {"doomnet.reproduce.result": verdict})
    return Verdict(difference is None, f"{verdict} (new run {new_id})", new_id)


def _blas_threads(threads: int | None) -> contextlib.AbstractContextManager:
    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def _rerun(store: Store, original: RunRecord, cfg, tmp: Path, project_dir: Path, say, warn) -> str:
    """Warn about environment differences, train `cfg` again as a new run in the original's
    experiment (no parent, no Optuna trial) linked by `doomnet.reproduces`; its id."""
    from doomnet import tracking
    from doomnet.config import TrialConfig
    from doomnet.run import run as train_run

    for line in environment_warnings(original.tags, tracking.provenance_tags(project_dir)):
        warn(line)
    cfg.tracking.enabled = True
    cfg.tracking.uri = store.uri
    cfg.tracking.experiment = store.experiment_name(original.experiment_id)
    cfg.tracking.parent_run_id = None  # not a member of the original sweep
    cfg.tracking.run_name = f"reproduce {original.name or original.run_id[:8]}"
    cfg.tracking.log_weights = True
    cfg.trial = TrialConfig()  # never report to the original study
    cfg.progress = "none"
    say(
        f"re-running {original.run_id[:8]} ({original.name}) from its stored config: "
        f"{cfg.iterations} iterations on {cfg.data.name}, seed {cfg.seed}"
        + (", data checksum matches" if original.tags.get("data.checksum") else "")
    )
    with tracking.linked_runs({"doomnet.reproduces": original.run_id}) as created:
        overrides = stored_overrides(store, original.run_id, tmp / "original") or []
        train_run(cfg, overrides=overrides, project_dir=project_dir)
    return created[-1]
