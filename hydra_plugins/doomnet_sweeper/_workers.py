"""Several sweep processes on one study -- on one machine or many -- and how they coordinate.

    python train.py -m sweeps=lr_hidden hydra.sweeper.storage=postgresql://db-host/optuna

run on N machines is one study: Optuna's storage is the shared state, and this module adds
the little it lacks for N sweepers to behave like one:

- `StudyLock`: a lock every sweeper of a study takes for two short moments -- joining the
  study (create it, find or create its one MLflow parent run, take a worker number) and
  asking for a trial (is there room under `n_trials`? then ask). With it `n_trials` is the
  study's total across all workers, never overshot by two workers asking at once. On
  PostgreSQL it is an advisory lock (any machine; released by the server if the holder dies),
  on MySQL a named lock, for a journal or SQLite file a file lock (one machine).
- `join`: the number of sweeps that joined the study before this one, so workers started at
  the same moment do not seed their samplers alike (and propose the same parameters).
- `ensure_database`: a PostgreSQL storage's database is created on first use.

(A leading underscore: Hydra's plugin scanner skips this module; the sweeper imports it.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from pathlib import Path
from typing import Any

JOINED_ATTR = "doomnet.sweeps_joined"  # study system attribute: sweeps that joined so far


def _url(storage: str) -> Any | None:
    """The SQLAlchemy URL of an RDB storage string, or None for a journal file path."""
    from doomnet.trial import is_url

    if not is_url(storage):
        return None
    from sqlalchemy.engine import make_url

    return make_url(storage)


class StudyLock:
    """A lock shared by every sweeper of one study (a context manager; reentrant per process).

    Held only for short critical sections; a holder that dies releases it (the database
    closes its session, the kernel its file lock)."""

    def __init__(self, storage: str, study_name: str) -> None:
        digest = hashlib.sha256(f"doomnet.study:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)  # pg_advisory_lock(bigint)
        self._name = f"doomnet.{digest.hex()[:40]}"  # MySQL GET_LOCK names: <= 64 characters
        self._local = threading.RLock()  # threads of this process queue here first
        self._depth = 0
        self._release: Any = None
        url = _url(storage)
        self.kind = "none"
        self._engine = None
        self._path: Path | None = None
        if url is None:
            self.kind, self._path = "file", Path(f"{storage}.doomnet-lock")
        elif url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                self.kind, self._path = "file", Path(f"{url.database}.doomnet-lock")
        elif url.get_backend_name() in ("postgresql", "mysql"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self.kind = url.get_backend_name()
            # One connection per hold: nothing idles between holds, a broken one is not reused.
            self._engine = sqlalchemy.create_engine(
                url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
            )

    def __enter__(self) -> StudyLock:
        self._local.acquire()
        try:
            if self._depth == 0:
                self._release = self._acquire()
            self._depth += 1
        except BaseException:
            self._local.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                release, self._release = self._release, None
                release()
        finally:
            self._local.release()

    def _acquire(self):
        """Take the lock across processes; returns the function that releases it."""
        if self.kind == "file":
            self._path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self._path, "a")  # noqa: SIM115  (closed by the release function)
            fcntl.flock(handle, fcntl.LOCK_EX)

            def release_file() -> None:
                with contextlib.suppress(OSError):
                    fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

            return release_file
        if self._engine is None:
            return lambda: None
        import sqlalchemy

        conn = self._engine.connect()
        try:
            if self.kind == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            else:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": self._name})
        except BaseException:
            conn.close()
            raise

        def release_db() -> None:
            try:
                if self.kind == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                else:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": self._name})
            except Exception:  # a lost connection: the server has released the lock with it
                pass
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

        return release_db

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def join(storage: Any, study_id: int) -> int:
    """Count this sweep in the study; the number of sweeps that joined before it (call it
    under the study's lock)."""
    joined = int(storage.get_study_system_attrs(study_id).get(JOINED_ATTR, 0))
    storage.set_study_system_attr(study_id, JOINED_ATTR, joined + 1)
    return joined


def worker_seed(seed: int, n_before: int, joined: int) -> int:
    """The sampler seed of a sweep that joins a study with `n_before` trials after `joined`
    other sweeps: the first sweep of a new study keeps `seed`; a resumed one does not redraw
    its old points; two started at the same moment draw different ones."""
    return (int(seed) + n_before + 1_000_003 * joined) % 2**32


def ensure_database(storage: str) -> None:
    """Create the PostgreSQL database of an Optuna storage URL if it does not exist yet (the
    first worker does; a user without CREATEDB gets Optuna's own error when it is missing)."""
    url = _url(storage)
    if url is None or url.get_backend_name() != "postgresql":
        return
    from doomnet.server import ensure_database as create

    with contextlib.suppress(Exception):
        create(url.render_as_string(hide_password=False))
