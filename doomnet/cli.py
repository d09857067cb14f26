"""`doomnet` console script (also `python -m doomnet`): commands around the tracking store.

    doomnet ui                         the MLflow UI on the project's store
    doomnet server                     an MLflow tracking server for many workers
    doomnet report TARGET | --study N  a research report of a sweep
    doomnet reproduce RUN_ID           an exact re-run, compared with the original
    doomnet compare RUN_A RUN_B ...    runs side by side

Exit status: 0 done (and, for reproduce, identical), 1 reproduce found a difference,
2 an error (one line on stderr: bad id, empty experiment, unreadable store, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def find_project(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding `conf/config.yaml`."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / "config.yaml").is_file():
            return folder
    return here


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the project's store, bound to 127.0.0.1 by default."""
    from doomnet import tracking
    from doomnet.config import TrackingConfig

    project = Path(args.project).resolve() if args.project else find_project()
    # Create the store (schema and experiment) before the server opens it.
    _, experiment_id = tracking.open_store(TrackingConfig(), project)
    command = tracking.ui_command(project, host=args.host, port=args.port)
    print(f"MLflow UI for {tracking.store_uri(TrackingConfig(), project)}")
    print(
        f"open http://{args.host}:{args.port}/#/experiments/{experiment_id}/runs"
        "  (Ctrl-C stops it)",
        flush=True,
    )
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process


def _store(args: argparse.Namespace):
    """(project folder, read-only Store) for --project / --tracking-uri / $MLFLOW_TRACKING_URI."""
    from doomnet import tracking
    from doomnet.config import TrackingConfig

    project = Path(args.project).resolve() if args.project else find_project()
    uri = tracking.store_uri(TrackingConfig(uri=args.tracking_uri), project)
    return project, tracking.Store(uri)


def cmd_report(args: argparse.Namespace) -> int:
    """Write a research report of a sweep, an experiment or an Optuna study."""
    from doomnet import report

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    project, store = _store(args)
    sweep = report.resolve(
        store, args.target, study=args.study, storage=args.storage, project_dir=project
    )
    out = Path(args.out) if args.out else project / "reports" / sweep.name
    built = report.write_report(sweep, out, top=args.top)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in built.counts.items())
    print(f"report: {built.folder}/report.html ({built.n_runs} runs: {counts})")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Re-run a finished run from its stored config; 0 if identical, 1 if it differs."""
    from doomnet.reproduce import reproduce

    if args.atol < 0:
        raise ValueError(f"--atol must be >= 0, got {args.atol}")
    project, store = _store(args)
    verdict = reproduce(store, args.run_id, project_dir=project, atol=args.atol)
    print(verdict.message, flush=True)
    return 0 if verdict.matches else 1


def cmd_compare(args: argparse.Namespace) -> int:
    """Side-by-side params and metrics of runs, and their curves as a PNG."""
    from doomnet.compare import compare_runs

    project, store = _store(args)
    ids = [r[:8] for r in args.run_ids]
    out = Path(args.out) if args.out else project / "reports" / f"compare-{'-'.join(ids)}.png"
    print(compare_runs(store, args.run_ids, out, color=sys.stdout.isatty()))
    return 0


def _store_args(command: argparse.ArgumentParser) -> None:
    command.add_argument("--project", help="project folder (default: the one holding conf/)")
    command.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else <project>/mlruns/mlflow.db)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="doomnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True)
    ui = commands.add_parser("ui", help="open the MLflow UI on the project's store")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--project", help="project folder (default: the one holding conf/)")
    ui.set_defaults(func=cmd_ui)
    from doomnet import server

    server.add_command(commands)

    rep = commands.add_parser(
        "report",
        help="write a research report (Markdown, HTML, CSV, figures) of a sweep",
        description="Write reports/<name>/: report.md, report.html, runs.csv, "
        "configurations.csv and PNG figures, swapped in only when complete.",
    )
    rep.add_argument("target", nargs="?", help="an experiment name or a sweep's parent run id")
    rep.add_argument("--study", help="an Optuna study name (instead of TARGET)")
    rep.add_argument(
        "--storage",
        help="the study's Optuna storage: a journal file or a database URL "
        "(default: <project>/mlruns/optuna.journal)",
    )
    rep.add_argument("--out", help="report folder (default: <project>/reports/<name>)")
    rep.add_argument("--top", type=int, default=5, help="best configurations shown (default 5)")
    _store_args(rep)
    rep.set_defaults(func=cmd_report)

    rep = commands.add_parser(
        "reproduce",
        help="re-run a run from its stored config and check it comes out identical",
        description="Exit status: 0 identical, 1 differs, 2 could not re-run.",
    )
    rep.add_argument("run_id", help="the run to re-run (a full id or a unique 8+ prefix)")
    rep.add_argument(
        "--atol",
        type=float,
        default=0.0,
        help="tolerated absolute difference (default 0: bit-identical)",
    )
    _store_args(rep)
    rep.set_defaults(func=cmd_reproduce)

    cmp = commands.add_parser(
        "compare", help="compare runs side by side (terminal table and a PNG of the curves)"
    )
    cmp.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="two or more run ids")
    cmp.add_argument("--out", help="PNG path (default: <project>/reports/compare-<ids>.png)")
    _store_args(cmp)
    cmp.set_defaults(func=cmd_compare)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        # StoreError, ReportError, ReproduceError, ConfigError, DataError: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
