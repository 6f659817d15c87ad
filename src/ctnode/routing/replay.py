"""Evaluating routes on files rather than on arrivals: ``ctnode routes test`` (a dry run on any
DICOM file) and ``ctnode routes replay`` (stored instances evaluated again, e.g. after adding a
route; what was delivered is skipped).

A file is read the way the receive path reads an arriving data set (the same walk, the same
facts), so a test explains exactly what the receive path would decide.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from ctnode.db.models import Instance, RouteMatch
from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import IrregularMeta, NotPart10, read_file_meta
from ctnode.dicom.scan import DatasetError, scan_dataset
from ctnode.routing.decisions import PENDING, facts_from_values, match_row, tags_read
from ctnode.routing.match import InstanceFacts, Verdict, decide, explain
from ctnode.routing.rules import Route, RouteSet


@dataclass(frozen=True, slots=True)
class FileVerdicts:
    """``routes test`` for one file: every route's verdict, or why the file cannot be read."""

    path: Path
    verdicts: tuple[Verdict, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """One entry of ``routes test --json``."""
        return {
            "file": str(self.path),
            "error": self.error,
            "routes": [
                {
                    "route": v.route,
                    "matched": v.matched,
                    "reason": v.reason,
                    "destinations": list(v.destinations),
                    "skipped_senders": list(v.skipped_senders),
                }
                for v in self.verdicts
            ],
        }


def read_facts(
    path: Path, routes: RouteSet, *, calling_ae: str | None, retrieved: bool = False
) -> tuple[InstanceFacts, dict[int, bytes]]:
    """The routing facts of a Part 10 file (and its raw values); OSError, NotPart10,
    IrregularMeta or DatasetError when it cannot be read."""
    with path.open("rb") as fh:
        meta = read_file_meta(fh)
        fh.seek(meta.dataset_offset)
        data = fh.read()
    syntax = meta.transfer_syntax_uid
    scan = scan_dataset(
        data,
        explicit_vr=is_explicit_vr(syntax),
        deflated=syntax == DEFLATED_EXPLICIT_VR_LE,
        wanted=tags.INDEX_TAGS | frozenset(tag for tag, _ in tags_read(routes, everything=True)),
    )
    facts = facts_from_values(
        scan.values,
        calling_ae=calling_ae,
        sop_class_uid=scan.text(tags.SOP_CLASS_UID) or meta.sop_class_uid,
        retrieved=retrieved,
        read=tags_read(routes, everything=True),
    )
    return facts, scan.values


def test_files(paths: list[Path], routes: RouteSet, calling_ae: str | None) -> list[FileVerdicts]:
    """Every route's verdict (disabled ones included) on each file, routes by name."""
    ordered = sorted(routes, key=lambda r: r.name)
    out: list[FileVerdicts] = []
    for path in paths:
        try:
            facts, _ = read_facts(path, routes, calling_ae=calling_ae)
        except (OSError, NotPart10, IrregularMeta, DatasetError) as exc:
            out.append(FileVerdicts(path, error=str(exc)))
            continue
        out.append(FileVerdicts(path, tuple(explain(ordered, facts))))
    return out


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What ``routes replay`` did."""

    examined: int
    #: New pending matches (instances the route had not forwarded to that destination).
    added: int
    #: Failed matches made pending again.
    retried: int
    #: Already delivered, queued or waiting to that destination: left alone.
    skipped: int
    #: Files that could not be read.
    unreadable: int


def _stored(session: Session, *, study: str | None, since: datetime | None) -> Iterator[Instance]:
    query = select(Instance).where(Instance.deleted_at.is_(None))
    if study is not None:
        query = query.where(Instance.study_instance_uid == study)
    if since is not None:
        query = query.where(Instance.received_at >= since)
    yield from session.scalars(query.order_by(Instance.id)).all()


def replay(
    session: Session,
    route: Route,
    routes: RouteSet,
    store_dir: Path,
    node_name: str,
    *,
    study: str | None = None,
    since: datetime | None = None,
) -> ReplayOutcome:
    """Evaluate *route* on stored instances again (a study's, or those received since
    *since*): a match to a destination that has no row yet becomes a pending row, a failed row
    becomes pending again, anything else is skipped. Commits; the running node forwards once
    the study is stable."""
    examined = added = retried = skipped = unreadable = 0
    instances = list(_stored(session, study=study, since=since))
    existing: dict[tuple[str, str], RouteMatch] = {}
    uids = [i.sop_instance_uid for i in instances]
    for start in range(0, len(uids), 500):
        for found in session.scalars(
            select(RouteMatch).where(RouteMatch.sop_instance_uid.in_(uids[start : start + 500]))
        ):
            existing[(found.sop_instance_uid, found.destination)] = found
    for inst in instances:
        examined += 1
        try:
            facts, _ = read_facts(
                store_dir / inst.path, routes, calling_ae=inst.calling_ae, retrieved=False
            )
        except (OSError, NotPart10, IrregularMeta, DatasetError):
            unreadable += 1
            continue
        for _, dest in decide([route], facts):
            row = existing.get((inst.sop_instance_uid, dest))
            if row is None:
                session.execute(
                    insert(RouteMatch),
                    [
                        match_row(
                            route,
                            dest,
                            inst.sop_instance_uid,
                            inst.study_instance_uid,
                            inst.series_instance_uid,
                            node_name,
                        )
                    ],
                )
                added += 1
            elif row.state == "failed":
                session.execute(
                    update(RouteMatch)
                    .where(RouteMatch.id == row.id, RouteMatch.state == "failed")
                    .values(
                        state=PENDING,
                        route=route.name,
                        batch=None,
                        job_id=None,
                        error=None,
                        matched_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
                retried += 1
            else:
                skipped += 1
    session.commit()
    return ReplayOutcome(examined, added, retried, skipped, unreadable)
