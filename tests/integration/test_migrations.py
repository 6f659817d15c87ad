"""Migrations: upgrading an empty database gives exactly the schema the models describe,
on SQLite and PostgreSQL, and downgrading to nothing works."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from ctnode.db import migrate
from ctnode.db.engine import create_db_engine
from ctnode.db.models import Base


def test_upgrade_matches_models_and_downgrade_empties(db_url: str) -> None:
    """After `upgrade head` Alembic finds no difference from the models; `downgrade base`
    leaves only the version table."""
    engine = create_db_engine(db_url)
    try:
        migrate.upgrade(engine)
        assert migrate.is_at_head(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
        from alembic import command

        command.downgrade(migrate.alembic_config(engine), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        assert not migrate.is_at_head(engine)
    finally:
        engine.dispose()


def test_head_revision_constant_is_the_newest_script(tmp_path: Path) -> None:
    """``migrate.HEAD_REVISION`` (the fast "already at head" check) names the newest script:
    update it with every new migration."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'head.db'}")
    try:
        assert migrate.head_revision(engine) == migrate.HEAD_REVISION
    finally:
        engine.dispose()
