"""Alembic, driven from code: upgrade to head, and check the schema is at head.

Alembic itself is imported only when a migration has to run or the scripts have to be read:
``HEAD_REVISION`` (kept equal to the newest script's revision, which a test checks) lets a
command that opens a database already at head find that out with one query.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from ctnode.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

#: The newest revision in ``migrations/versions`` (update with every new migration).
HEAD_REVISION = "0007"


def migrations_dir() -> Path:
    """The Alembic scripts: packaged in the wheel, or ``migrations/`` of a source checkout."""
    packaged = resources.files("ctnode") / "_migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "migrations"
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError("the Alembic migrations are missing from this installation; reinstall")


def alembic_config(engine: Engine) -> Config:
    """An Alembic Config bound to *engine*."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: Engine) -> str | None:
    """The newest revision in the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when it has never been migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def stored_revisions(engine: Engine) -> list[str]:
    """The revisions in the ``alembic_version`` table (empty when there is none), read with
    one plain query."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return []
        rows = conn.execute(text("SELECT version_num FROM alembic_version"))
        return [str(v) for v in rows.scalars()]


def is_at_head(engine: Engine) -> bool:
    """True if the database schema is at the newest revision."""
    if stored_revisions(engine) == [HEAD_REVISION]:
        return True
    return current_revision(engine) == head_revision(engine)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to *revision*."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)
