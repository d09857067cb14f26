"""`doomnet server`: one MLflow tracking server for many workers.

Run metadata goes to the backend store (PostgreSQL for several machines; the project's SQLite
file by default), artifacts are uploaded to the server, which keeps them under
`--artifacts-destination`. Workers point at it with `tracking=server` (or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import sys
from pathlib import Path


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database `url` names if it does not exist; True if created."""
    import sqlalchemy

    try:
        target = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:  # not a database URL (a file store, a server)
        return False
    if target.get_backend_name() != "postgresql":
        return False
    admin = target.set(database="postgres")
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            ).scalar()
            if exists:
                return False
            name = target.database.replace('"', '""')
            try:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
            except sqlalchemy.exc.DBAPIError:  # another worker created it at the same moment
                if not conn.execute(
                    sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                    {"name": target.database},
                ).scalar():
                    raise
                return False
            return True
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        raise RuntimeError(
            f"Cannot reach PostgreSQL at {admin.render_as_string()}: {reason}"
        ) from None
    finally:
        engine.dispose()


def server_command(
    backend_store_uri: str,
    artifacts: Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
) -> list[str]:
    """The `mlflow server` command line: metadata in `backend_store_uri`, artifacts served."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        Path(artifacts).resolve().as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if host not in ("127.0.0.1", "localhost", "::1"):
        # MLflow refuses unknown Host headers; workers on other machines use this address.
        command += ["--allowed-hosts", f"{host}:{port},{host},localhost:{port},127.0.0.1:{port}"]
    return command


def cmd_server(args) -> int:
    """Start `mlflow server` on the project defaults; creates a PostgreSQL database if needed."""
    import os

    from doomnet import tracking
    from doomnet.cli import find_project
    from doomnet.config import TrackingConfig

    project = Path(args.project).resolve() if args.project else find_project()
    backend = args.backend_store_uri or tracking.store_uri(TrackingConfig(), project)
    artifacts = Path(args.artifacts_destination or project / "mlruns" / "served-artifacts")
    if ensure_database(backend):
        print(f"created database {backend.rsplit('/', 1)[-1]}")
    # Tables only: experiments are created through the server, so their artifacts are served.
    tracking.create_schema(backend)
    artifacts.mkdir(parents=True, exist_ok=True)
    command = server_command(backend, artifacts, args.host, args.port, args.workers)
    print(f"MLflow tracking server: metadata in {backend}, artifacts in {artifacts}")
    print(
        f"workers: tracking=server with DOOMNET_TRACKING_SERVER=http://{args.host}:{args.port}",
        flush=True,
    )
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process


def add_command(commands) -> None:
    """Register `doomnet server` on the CLI's subparsers."""
    server = commands.add_parser("server", help="start an MLflow tracking server for many workers")
    server.add_argument(
        "--backend-store-uri",
        help="where run metadata goes, e.g. "
        "postgresql://postgres@127.0.0.1:5432/mlflow (default: the project's "
        "SQLite store, or $MLFLOW_TRACKING_URI)",
    )
    server.add_argument(
        "--artifacts-destination",
        help="folder the server keeps artifacts in (default mlruns/served-artifacts)",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    server.add_argument("--workers", type=int, default=2, help="server worker processes")
    server.add_argument("--project", help="project folder (default: the one holding conf/)")
    server.set_defaults(func=cmd_server)
