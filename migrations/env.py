"""Alembic environment: run against the engine ctnode passes in (``ctnode db upgrade``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

from ctnode.db.models import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine  # type: ignore[no-any-return]
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("use `ctnode db upgrade` (or alembic -x url=DATABASE_URL)")
    return create_engine(url)


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render ctnode's UTCDateTime as a plain timezone-aware DateTime in revisions."""
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_online() -> None:
    """Migrate in one transaction per revision."""
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=_render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `ctnode db upgrade`")
run_migrations_online()
