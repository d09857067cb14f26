"""`doomnet` console script (also `python -m doomnet`): commands around the tracking store."""

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
    tracking.open_store(TrackingConfig(), project)
    command = tracking.ui_command(project, host=args.host, port=args.port)
    print(f"MLflow UI for {tracking.store_uri(TrackingConfig(), project)}")
    print(f"open http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="doomnet", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    ui = commands.add_parser("ui", help="open the MLflow UI on the project's store")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--project", help="project folder (default: the one holding conf/)")
    ui.set_defaults(func=cmd_ui)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
