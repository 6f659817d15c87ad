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


def test_0007_adds_route_arrivals_and_its_downgrade_expands_them(db_url: str) -> None:
    """From 0006 with a routing decision: 0007 adds ``route_arrivals`` and keeps the decision;
    going back to 0006 expands the arrivals left into ``route_matches`` (pending, matched_at
    kept, a decision already there left as it is) before dropping the table."""
    from alembic import command
    from sqlalchemy import insert, select

    from ctnode.db.models import RouteArrival, RouteMatch
    from ctnode.db.types import utcnow

    engine = create_db_engine(db_url)
    try:
        migrate.upgrade(engine, "0006")
        earlier, now = utcnow(), utcnow()
        decided = {
            "route": "r",
            "destination": "pacs",
            "sop_instance_uid": "1.2.1",
            "study_instance_uid": "1.2",
            "series_instance_uid": "1.2.9",
            "trigger": "study",
            "stable_after": 30.0,
            "commit": True,
            "node_name": "n",
            "state": "delivered",
            "matched_at": earlier,
            "updated_at": earlier,
        }
        with engine.begin() as conn:
            conn.execute(insert(RouteMatch), [decided])
        migrate.upgrade(engine)
        assert "route_arrivals" in inspect(engine).get_table_names()
        both = '[["r","pacs","study",30.0,true],["a","archive","instance",2,false]]'
        with engine.begin() as conn:
            conn.execute(
                insert(RouteArrival),
                [
                    {
                        "sop_instance_uid": uid,
                        "study_instance_uid": "1.2",
                        "series_instance_uid": "1.2.9",
                        "node_name": "n",
                        "matched_at": now,
                        "decisions": both,
                    }
                    for uid in ("1.2.1", "1.2.2")
                ],
            )
        command.downgrade(migrate.alembic_config(engine), "0006")
        assert "route_arrivals" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    RouteMatch.sop_instance_uid,
                    RouteMatch.route,
                    RouteMatch.destination,
                    RouteMatch.trigger,
                    RouteMatch.stable_after,
                    RouteMatch.commit,
                    RouteMatch.state,
                    RouteMatch.matched_at,
                    RouteMatch.updated_at,
                ).order_by(RouteMatch.sop_instance_uid, RouteMatch.destination)
            ).all()
        assert [tuple(r) for r in rows] == [
            ("1.2.1", "a", "archive", "instance", 2.0, False, "pending", now, now),
            ("1.2.1", "r", "pacs", "study", 30.0, True, "delivered", earlier, earlier),
            ("1.2.2", "a", "archive", "instance", 2.0, False, "pending", now, now),
            ("1.2.2", "r", "pacs", "study", 30.0, True, "pending", now, now),
        ]
    finally:
        engine.dispose()
