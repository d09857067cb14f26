"""`doomnet compare RUN_A RUN_B ...`: runs side by side.

The terminal gets a table (params that differ first and marked `*`, then the final metrics,
then the params all runs share, on one line); the validation-accuracy and training-loss curves
of every run are overlaid in one PNG. Nothing is written unless every run can be read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from doomnet import plots
from doomnet.analysis import run_state
from doomnet.report import ReportError, histories, parent_folders
from doomnet.tracking import RunRecord, Store

METRICS = ("val/final_acc", "val/best_acc", "test/acc", "test/loss", "steps", "time/train_s")
NAME_WIDTH = 28  # longest run name shown in a column


def table(runs: Sequence[RunRecord], *, color: bool = False) -> str:
    """The side-by-side text table of `runs` (ANSI bold on differing params if `color`)."""
    keys = sorted({k for r in runs for k in r.params})
    differ = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    same = [k for k in keys if k not in differ]
    label_width = max(16, *(len(k) + 2 for k in [*keys, *METRICS]))
    col = max(12, *(min(len(r.name), NAME_WIDTH) + 2 for r in runs))

    def line(label: str, cells: Sequence[str], mark: str = " ") -> str:
        text = f"{mark} {label:<{label_width}}" + "".join(f"{c[: col - 2]:<{col}}" for c in cells)
        return text.rstrip()

    def metric(run: RunRecord, key: str) -> str:
        value = run.metrics.get(key)
        if value is None:
            return "-"
        return str(int(value)) if key == "steps" else f"{value:.4f}"

    bold = (lambda s: f"\033[1m{s}\033[0m") if color else (lambda s: s)
    lines = [
        line("run", [r.run_id[:8] for r in runs]),
        line("name", [r.name for r in runs]),
        line("state", [run_state(r) for r in runs]),
        "",
        f"params that differ ({len(differ)}):" if differ else "params: all the same",
        *[bold(line(k, [r.params.get(k, "-") for r in runs], "*")) for k in differ],
        "",
        "final metrics:",
        *[line(m, [metric(r, m) for r in runs]) for m in METRICS],
        "",
        f"same in all runs ({len(same)}): " + ", ".join(f"{k}={runs[0].params[k]}" for k in same),
    ]
    return "\n".join(lines)


def compare_runs(store: Store, run_ids: Sequence[str], out: Path, *, color: bool = False) -> str:
    """Read the runs (full ids or unique 8+ prefixes), write their overlaid curves to `out`
    (a PNG, replaced atomically) and return the table with the PNG's path on its last line.
    Raises ReportError/StoreError, having written nothing, if a run cannot be read."""
    if len(run_ids) < 2:
        raise ReportError("compare needs at least two run ids")
    runs = [store.run(r) for r in run_ids]
    if len({r.run_id for r in runs}) != len(runs):
        raise ReportError("the same run is given twice")
    for r in runs:
        if r.tags.get("doomnet.kind") == "sweep":
            raise ReportError(f"run {r.run_id} is a sweep's parent run, not a training run")
    curves = [(f"{r.run_id[:8]} {r.name}", histories(store, r.run_id)) for r in runs]
    if not any(history["val/acc"] for _, history in curves):
        raise ReportError("none of these runs logged val/acc: no curves to draw")

    out = Path(out).absolute()
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")
    with parent_folders(out):
        try:
            plots.compare_curves(curves, tmp)
            os.replace(tmp, out)  # a reader never sees a half-written PNG
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    return table(runs, color=color) + f"\n\ncurves: {out}"
