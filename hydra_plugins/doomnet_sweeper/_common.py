"""What DoomNet's sweepers share: one-line exits, override quoting, run names, the parent run.

(A leading underscore: Hydra's plugin scanner skips this module; the sweepers import it.)
"""

import contextlib
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class SweepFailed(SystemExit):
    """The sweep ran but did not succeed: exit code 1 after one line saying why (a SystemExit,
    so Hydra adds no stack-trace hint under it). Ends the MLflow parent run FAILED."""

    exit_code = 1
    run_status = "FAILED"

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr, flush=True)
        super().__init__(self.exit_code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SweepConfigError(SweepFailed):
    """A bad sweep definition: exit code 2 after one line, before any study or run exists."""

    exit_code = 2


def quote(value: str) -> str:
    """`value` as a quoted Hydra override value (any characters, e.g. a path or a URL)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def swept_name(job: Iterable[str], swept: set[str]) -> str:
    """The part of a job's overrides that varies across the sweep: `lr=0.05 hidden=20`."""
    job = list(job)
    return " ".join(o for o in job if o.split("=", 1)[0] in swept) or " ".join(job)


def tracking_config(config: Any):
    """The task's `TrackingConfig` if it has a `tracking` section with tracking enabled (any
    Hydra app can use the sweepers; only DoomNet's has one), else None."""
    from omegaconf import OmegaConf

    from doomnet.config import TrackingConfig

    section = config.get("tracking") if hasattr(config, "get") else None
    if section is None:
        return None
    tracking_cfg = TrackingConfig(**OmegaConf.to_container(section, resolve=True))
    return tracking_cfg if tracking_cfg.enabled else None


def parent_run(
    tracking_cfg: Any,
    project_dir: Path,
    *,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    run_id: str | None = None,
):
    """The sweep's MLflow parent run (`doomnet.tracking.sweep_run`), or a null context when
    the task has no tracking; `run_id` reopens an existing one."""
    if tracking_cfg is None:
        return contextlib.nullcontext()
    from doomnet import tracking

    return tracking.sweep_run(
        tracking_cfg,
        project_dir=project_dir,
        run_name=run_name,
        params=params,
        tags=tags,
        run_id=run_id,
    )
