"""One run: validated config -> data -> DoomNet -> fit -> MLflow run -> objective.

Everything that can be checked is checked before the MLflow run exists, so bad input leaves
no trace in the store. The run always ends FINISHED, FAILED or KILLED (see `doomnet.tracking`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from doomnet.config import Config, check_batch_size, hydra_project_dir
from doomnet.data import load_dataset
from doomnet.fit import fit
from doomnet.model import DoomNet
from doomnet.optim import make_optimizer
from doomnet.progress import Progress

HIDDEN_OVERRIDES = ("tracking.", "trial.", "hydra.", "progress=")


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so runs close as KILLED instead of staying RUNNING."""

    run_status = "KILLED"


class Pruned(Exception):
    """The trial's pruner stopped the run: it ends KILLED in MLflow, tagged optuna.state=PRUNED."""

    run_status = "KILLED"
    run_tags = {"optuna.state": "PRUNED"}


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def hydra_context() -> tuple[list[str], Path]:
    """(this job's command-line overrides, project dir) from Hydra, if Hydra is running."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return [], Path.cwd()
    return list(hydra_cfg.overrides.task), hydra_project_dir(hydra_cfg)


def run_name(overrides: list[str]) -> str:
    """A readable name from the overrides that define the run: `lr=0.05 hidden=20`."""
    shown = [o for o in overrides if not o.lstrip("+~").startswith(HIDDEN_OVERRIDES)]
    return " ".join(shown) or "defaults"


def build_model(cfg: Config, n_features: int, n_classes: int) -> DoomNet:
    return DoomNet(
        n_features,
        list(cfg.hidden_sizes),
        n_classes,
        std=cfg.init_std,
        seed=cfg.seed,
        init=cfg.init,
        l2=cfg.l2,
    )


def build_optimizer(cfg: Config):
    opt = cfg.optimizer
    common = {"weight_decay": opt.weight_decay, "clip_norm": opt.clip_norm}
    if opt.name == "momentum":
        return make_optimizer("momentum", momentum=opt.momentum, nesterov=opt.nesterov, **common)
    if opt.name == "adam":
        return make_optimizer("adam", beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps, **common)
    return make_optimizer(opt.name, **common)


def run(
    cfg: Config,
    *,
    overrides: list[str] | None = None,
    project_dir: Path | None = None,
    callbacks: tuple[Callable[[int, dict], Any], ...] = (),
) -> float:
    """Train one DoomNet as `cfg` says, tracked in MLflow; return the final validation accuracy.

    `overrides`/`project_dir` default to Hydra's (job overrides, parent of `conf/`).
    """
    hydra_overrides, hydra_dir = hydra_context()
    overrides = hydra_overrides if overrides is None else overrides
    project_dir = Path(project_dir or hydra_dir)
    name = cfg.tracking.run_name or run_name(overrides)

    splits = load_dataset(
        cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed, root=cfg.data.root
    )
    check_batch_size(cfg.batch_size, len(splits.y_train), cfg.data.name)
    model = build_model(cfg, splits.n_features, splits.n_classes)
    optimizer = build_optimizer(cfg)
    progress = None
    trial = None  # the Optuna trial handle when this run is a trial of a study

    def train(extra_callbacks: tuple) -> tuple[Any, dict[str, float]]:
        nonlocal progress
        progress = Progress(cfg.iterations, name, cfg.progress)
        result = fit(
            model,
            splits,
            iterations=cfg.iterations,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=optimizer,
            eval_every=cfg.eval_every,
            seed=cfg.seed,
            callbacks=(*extra_callbacks, *callbacks, progress),
        )
        if trial is not None and trial.pruned_at is not None:
            raise Pruned(
                f"pruned by {type(trial.study.pruner).__name__} at step {trial.pruned_at}"
                f" (val/acc {result.final['val/acc']:.4f})"
            )
        test_loss, test_acc = model.evaluate(splits.X_test, splits.y_test)
        summary = {
            "val/best_acc": result.best_val_acc,
            "val/final_acc": result.final["val/acc"],
            "test/loss": test_loss,
            "test/acc": test_acc,
            "time/train_s": result.train_time_s,
            "time/samples_per_s": result.samples_seen / max(result.train_time_s, 1e-9),
            "steps": result.steps,
        }
        return result, summary

    status = "failed"  # what the progress line says if the body raises
    try:
        with sigterm_raises(), _trial(cfg) as trial:
            pruning = (trial,) if trial is not None else ()
            if not cfg.tracking.enabled:
                result, summary = train(pruning)
            else:
                from doomnet import tracking

                tags = {
                    "data.name": splits.name,
                    "data.checksum": splits.checksum,
                    "data.sizes": str(splits.sizes()),
                }
                if trial is not None:
                    tags |= {
                        "optuna.study": cfg.trial.study_name,
                        "optuna.trial": str(trial.number),
                    }
                with tracking.training_run(
                    cfg, project_dir=project_dir, run_name=name, tags=tags
                ) as tracker:
                    if trial is not None:
                        trial.attach_run(tracker.run_id)
                    result, summary = train((tracker, *pruning))
                    tracker.log_metrics(summary, step=result.steps)
                    _log_artifacts(tracker, cfg, model, result.history, name, overrides)
        status = "stopped early" if result.stopped_early else "done"
    except Pruned:
        status = "pruned"
        raise
    finally:
        if progress is not None:
            progress.close(status)
    return float(result.final["val/acc"])


def _trial(cfg: Config) -> contextlib.AbstractContextManager:
    """The Optuna trial this run belongs to (`doomnet.trial`, imported only for trials)."""
    if cfg.trial.study_name is None:
        return contextlib.nullcontext()
    from doomnet.trial import open_trial

    return open_trial(cfg.trial)


def _log_artifacts(
    tracker, cfg: Config, model: DoomNet, history, name: str, overrides: list[str]
) -> None:
    from omegaconf import OmegaConf

    from doomnet.plots import learning_curve

    if cfg.tracking.log_weights:
        tracker.log_file(model.save, "weights.npz", "model")
    tracker.log_file(
        lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.create(asdict(cfg)))), "config.yaml"
    )
    tracker.log_file(
        lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.create(overrides))), "overrides.yaml"
    )
    tracker.log_file(lambda p: learning_curve(history, name, p), "learning_curve.png")


def cli(main: Callable[[], Any], config_dir: Path) -> None:
    """Run a Hydra `main` from the command line: check every override first (one line and
    exit 2 on bad input, before any job or run exists), exit 130 on Ctrl-C, 143 on SIGTERM."""
    from doomnet.config import check_command_line

    try:
        check_command_line(sys.argv[1:], config_dir=config_dir)
    except ValueError as exc:  # ConfigError, or DataError for a missing/corrupt data file
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        with sigterm_raises():
            main()
    except Terminated:
        print("terminated (SIGTERM): runs closed as KILLED", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted: runs closed as KILLED", file=sys.stderr)
        sys.exit(130)
