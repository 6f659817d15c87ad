"""The local store: ``studies`` and ``instances``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ctnode.cli.common import JsonOpt, emit_json, fail, print_table, settings_of
from ctnode.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")


def _with_session(settings: Settings, work: Callable[[Session], T]) -> T:
    """Run *work* in a session on the configured database (migrated when it is SQLite)."""
    from ctnode.db.engine import session_factory
    from ctnode.db.opening import open_database

    engine = open_database(settings, migrate_sqlite=True)
    try:
        with session_factory(engine)() as session:
            return work(session)
    finally:
        engine.dispose()


def studies(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the studies in the local store, with each one's routing state per destination."""
    from ctnode.index import list_studies
    from ctnode.routing.state import study_routes

    settings = settings_of(ctx)

    def read(session: Session) -> tuple[list[Any], dict[str, list[Any]]]:
        found = list_studies(session)
        return found, study_routes(session, [s.study_instance_uid for s in found])

    found, routing = _with_session(settings, read)
    if as_json:
        emit_json(
            [
                {
                    **s.to_json(),
                    "routes": [r.to_json() for r in routing.get(s.study_instance_uid, [])],
                }
                for s in found
            ]
        )
        return
    print_table(
        [
            "STUDY INSTANCE UID",
            "PATIENT ID",
            "DATE",
            "MODALITIES",
            "SERIES",
            "INSTANCES",
            "ROUTING",
        ],
        [
            [
                s.study_instance_uid,
                s.patient_id,
                s.study_date,
                ",".join(s.modalities),
                s.series,
                s.instances,
                "; ".join(r.text() for r in routing.get(s.study_instance_uid, [])) or "-",
            ]
            for s in found
        ],
    )


def instances(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Series Instance UID.")] = None,
    deleted: Annotated[
        bool,
        typer.Option("--deleted", help="Also list instances removed after storage commitment."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the instances of a study (or series) in the local store, with the peers that
    committed each one (storage commitment)."""
    from ctnode.index import commitments_of, instance_json, list_instances

    if study is None and series is None:
        fail("give --study UID or --series UID", 2)
    settings = settings_of(ctx)

    def work(session: Session) -> list[dict[str, Any]]:
        found = list_instances(session, study=study, series=series, include_deleted=deleted)
        commits = commitments_of(session, [r.sop_instance_uid for r in found])
        return [instance_json(r, commits.get(r.sop_instance_uid)) for r in found]

    rows = _with_session(settings, work)
    if as_json:
        emit_json(rows)
        return
    headers = ["SOP INSTANCE UID", "MODALITY", "SERIES", "NUMBER", "BYTES", "RECEIVED"]
    print_table(
        [*headers, "COMMITTED BY", *(["DELETED"] if deleted else [])],
        [
            [
                r["sop_instance_uid"],
                r["modality"],
                r["series_number"],
                r["instance_number"],
                r["size_bytes"],
                r["received_at"],
                ",".join(c["peer"] for c in r["committed_by"]),
                *([r["deleted_at"] or ""] if deleted else []),
            ]
            for r in rows
        ],
    )
