"""`hydra/sweeper=doomnet_grid`: Hydra's basic grid, plus an MLflow parent run for the sweep,
every job run to the end even when some fail, and a summary that lists every failure."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.doomnet_sweeper._common import (
    SweepFailed,
    parent_run,
    quote,
    swept_name,
    tracking_config,
)

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.doomnet_sweeper.grid_sweeper.GridSweeper"
    # Optional[...], not `X | None`: OmegaConf reads these annotations at plugin scan time.
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="doomnet_grid", node=GridSweeperConf, provider="doomnet"
)


def job_row(number: int, name: str, ret: JobReturn):
    from doomnet.summary import JobRow

    if ret.status == JobStatus.COMPLETED:
        return JobRow(number, name, "COMPLETE", float(ret._return_value))
    exc = ret._return_value
    return JobRow(number, name, "FAILED", None, f"{type(exc).__name__}: {exc}")


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        from doomnet.config import hydra_project_dir
        from doomnet.summary import format_table

        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(params_conf)
        swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
        self.overrides = self.split_arguments(parsed, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        tracking_cfg = tracking_config(self.config)
        project_dir = hydra_project_dir(self.config.hydra)
        n_jobs = sum(len(batch) for batch in self.overrides)
        title = f"sweep {' '.join(params_conf)}"
        rows = []
        params = {}
        for override in params_conf:
            key, _, value = override.partition("=")
            params[f"sweep.{key}"] = value
        tags = {
            "sweep.sweeper": "doomnet_grid",
            "sweep.dir": str(sweep_dir.resolve()),
            "sweep.jobs": str(n_jobs),
        }
        with parent_run(
            tracking_cfg, project_dir, run_name=title, params=params, tags=tags
        ) as parent:
            parent_id = [f"tracking.parent_run_id={parent.run_id}"] if parent else []
            named = "tracking" in self.config  # DoomNet's schema: the run name is settable
            number = 0
            while not self.is_done():
                jobs = [list(job) for job in self.get_job_batch()]
                names = [swept_name(job, swept) for job in jobs]
                batch = [
                    [*job, *parent_id, *([f"tracking.run_name={quote(name)}"] if named else [])]
                    for job, name in zip(jobs, names, strict=True)
                ]
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=number)
                for name, ret in zip(names, results, strict=True):
                    rows.append(job_row(number, name, ret))
                    number += 1
            table = format_table(rows, title)
            print(table, flush=True)
            failed = [r for r in rows if r.status == "FAILED"]
            completed = [r for r in rows if r.value is not None]
            if parent:
                parent.log_metrics(
                    {
                        "sweep/jobs": len(rows),
                        "sweep/failed": len(failed),
                        **(
                            {"sweep/best_val_acc": max(r.value for r in completed)}
                            if completed
                            else {}
                        ),
                    }
                )
            if failed:
                listing = "; ".join(f"#{r.number} {r.name} ({r.reason})" for r in failed)
                raise SweepFailed(f"{len(failed)} of {len(rows)} jobs failed: {listing}")
        return rows
