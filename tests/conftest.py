"""Shared fixtures: databases (SQLite and a fresh PostgreSQL database per run), temp dirs."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pydicom.config
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ctnode.db import migrate
from ctnode.db.engine import create_db_engine, session_factory

# pynetdicom installs its own echoscu/storescu/storescp/findscu/movescu into the venv's bin;
# the tests mean DCMTK's (Debian package, /usr/bin) whatever the PATH of the caller.
os.environ["PATH"] = "/usr/bin:" + os.environ.get("PATH", "")

# Tests craft invalid values on purpose (traversal UIDs, over-long values): do not warn on them.
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

PG_ADMIN = os.environ.get(
    "CTNODE_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
)
PG_HOST = os.environ.get("CTNODE_TEST_PG_HOST", "postgres@127.0.0.1:5432")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ondemand", action="store_true", help="also run the long on-demand variants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--ondemand"):
        return
    for item in items:
        if "ondemand" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="on-demand variant: run with --ondemand"))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (dropped afterwards); yields its URL."""
    name = f"ctnode_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_HOST}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database just for one test."""
    name = f"ctnode_t_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_HOST}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database of each kind (one test runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'ctnode.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    eng = create_db_engine(db_url, busy_timeout=5)
    migrate.upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory on the migrated database."""
    return session_factory(engine)
