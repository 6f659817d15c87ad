"""Open the configured database for a process (the node or a CLI command)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from ctnode.db import migrate
from ctnode.db.engine import create_db_engine, is_sqlite
from ctnode.errors import DatabaseError, SchemaNotAtHead

if TYPE_CHECKING:
    from ctnode.config import Settings


def open_database(
    settings: Settings,
    *,
    migrate_sqlite: bool,
    on_migrated: Callable[[str | None, str | None], None] | None = None,
) -> Engine:
    """Engine for the configured database, checked to be at the schema head.

    SQLite is migrated automatically when *migrate_sqlite* (then *on_migrated* is told the
    revisions before and after, e.g. to log them); PostgreSQL never is (an operator runs
    ``ctnode db upgrade``, so several nodes do not race to migrate). A database already at head
    costs one query (Alembic is not even imported).
    """
    engine = create_db_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
    try:
        if migrate.stored_revisions(engine) == [migrate.HEAD_REVISION]:
            return engine
        if is_sqlite(engine) and migrate_sqlite:
            before = migrate.current_revision(engine)
            migrate.upgrade(engine)
            after = migrate.current_revision(engine)
            if after != before and on_migrated is not None:
                on_migrated(before, after)
        elif not migrate.is_at_head(engine):
            engine.dispose()
            raise SchemaNotAtHead(
                f"the database at {engine.url.render_as_string(hide_password=True)} is at "
                f"revision {migrate.current_revision(engine)!r}, not "
                f"{migrate.head_revision(engine)!r}: run `ctnode db upgrade`"
            )
    except SchemaNotAtHead:
        raise
    except Exception as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot use the database {engine.url.render_as_string(hide_password=True)}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return engine
