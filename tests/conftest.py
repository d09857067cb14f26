"""Shared fixtures: a throwaway PostgreSQL database for the scale-out tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the server `$DOOMNET_TEST_PG` names, dropped afterwards.

    Skips (with the reason) when the variable is unset or the server does not answer, so the
    suite passes on a laptop; `.ci/run` sets it when the server is up."""
    base = os.environ.get("DOOMNET_TEST_PG")
    if not base:
        pytest.skip(
            "DOOMNET_TEST_PG is not set (e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        )
    import sqlalchemy

    admin_url = sqlalchemy.engine.make_url(base)
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"doomnet_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {admin_url.render_as_string()} is unreachable: {exc.orig}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
