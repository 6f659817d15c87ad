"""Engine and session factory. The only place (with queue/repository.py) that knows dialects.

SQLite: WAL, ``synchronous=FULL`` (a commit survives power loss), a busy timeout, and every
transaction opened with ``BEGIN IMMEDIATE`` so that writers queue on the database lock up front
instead of failing on upgrade (connections with the ``READ_ONLY`` execution option, which never
write, use a plain ``BEGIN``). PostgreSQL: psycopg 3, with connect, lock and statement timeouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Insert, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ctnode.errors import ConfigError

#: Execution option for a connection that only reads: on SQLite its transactions start with a
#: plain (deferred) BEGIN, which in WAL mode neither waits for nor blocks the writer.
READ_ONLY = "ctnode_read_only"


def create_db_engine(url: str, *, busy_timeout: float = 10.0, pool_size: int = 8) -> Engine:
    """Create an engine for *url* configured for durability and bounded waits."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"database.url {url!r} is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=16,
        )
        _sqlite_setup(engine, busy_timeout)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        timeout_ms = int(busy_timeout * 1000)
        return create_engine(
            parsed,
            connect_args={
                "connect_timeout": max(1, int(busy_timeout)),
                "options": f"-c lock_timeout={timeout_ms} -c statement_timeout={timeout_ms * 6}",
            },
            pool_size=pool_size,
            max_overflow=16,
            pool_pre_ping=True,
        )
    raise ConfigError(
        f"database.url uses {backend!r}; use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    )


def _sqlite_setup(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that do not expire objects on commit (values stay readable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignoring_conflicts(table: Table, unique: Sequence[str], dialect: str) -> Insert:
    """An INSERT into *table* that skips a row whose *unique* columns (a unique constraint) are
    already taken: ``ON CONFLICT (...) DO NOTHING``, on SQLite and PostgreSQL alike."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=list(unique))
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(unique))


def is_sqlite(engine: Engine) -> bool:
    """True for SQLite engines."""
    return engine.dialect.name == "sqlite"


def is_unavailable(exc: BaseException) -> bool:
    """True when a database error means "locked, full or unreachable" rather than a bug."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
