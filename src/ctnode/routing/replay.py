"""Evaluating routes on files rather than on arrivals: ``ctnode routes test`` (a dry run on any
DICOM file) and ``ctnode routes replay`` (stored instances evaluated again, e.g. after adding a
route; what was delivered is skipped).

A file is read the way the receive path reads an arriving data set (the same walk, the same
facts), so a test explains exactly what the receive path would decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, select, update
from sqlalchemy.orm import Session

from ctnode.db.engine import READ_ONLY, insert_ignoring_conflicts, session_factory
from ctnode.db.models import Instance, RouteMatch
from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import IrregularMeta, NotPart10, read_file_meta
from ctnode.dicom.scan import DatasetError, scan_dataset
from ctnode.routing.arrivals import PENDING, arriving
from ctnode.routing.decisions import facts_from_values, match_row, tags_read
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


#: Rows written per transaction by ``replay`` (inserted or made pending again).
BATCH = 500
_MATCHES = RouteMatch.__table__
assert isinstance(_MATCHES, Table)
_MATCHES_TABLE: Table = _MATCHES
#: A row that appeared meanwhile (this unique key taken) is skipped by the database too.
_UNIQUE = ("sop_instance_uid", "destination")


@dataclass(frozen=True, slots=True)
class _Stored:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str
    calling_ae: str | None


def _stored(session: Session, *, study: str | None, since: datetime | None) -> list[_Stored]:
    query = select(
        Instance.sop_instance_uid,
        Instance.study_instance_uid,
        Instance.series_instance_uid,
        Instance.path,
        Instance.calling_ae,
    ).where(Instance.deleted_at.is_(None))
    if study is not None:
        query = query.where(Instance.study_instance_uid == study)
    if since is not None:
        query = query.where(Instance.received_at >= since)
    return [_Stored(*row) for row in session.execute(query.order_by(Instance.id))]


class _Writer:
    """Replay's writes, in short transactions of ``batch`` rows each (between them, and while
    files are read, no transaction is open: ingest is not kept waiting on SQLite's lock)."""

    def __init__(self, engine: Engine, route: str, batch: int) -> None:
        self.sessions = session_factory(engine)
        self.route = route
        self.batch = batch
        self.inserts: list[dict[str, Any]] = []
        self.resets: list[int] = []
        self.added = self.retried = self.skipped = 0

    def insert(self, row: dict[str, Any]) -> None:
        self.inserts.append(row)
        self._maybe_flush()

    def reset(self, row_id: int) -> None:
        self.resets.append(row_id)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.inserts) + len(self.resets) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write what is waiting, in one transaction: a row that appeared since it was read is
        left alone (skipped), and so is a failed row no longer failed."""
        if not self.inserts and not self.resets:
            return
        inserts, resets = self.inserts, self.resets
        self.inserts, self.resets = [], []
        with self.sessions() as session:
            now = utcnow()
            uids = list({r["sop_instance_uid"] for r in inserts})
            # Arrivals first: one expanded between the two reads is then seen in one of them.
            there = {
                (uid, d.destination) for uid, ds in arriving(session, uids).items() for d in ds
            }
            there.update(
                (uid, dest)
                for uid, dest in session.execute(
                    select(RouteMatch.sop_instance_uid, RouteMatch.destination).where(
                        RouteMatch.sop_instance_uid.in_(uids)
                    )
                )
            )
            fresh = [r for r in inserts if (r["sop_instance_uid"], r["destination"]) not in there]
            if fresh:
                dialect = session.get_bind().dialect.name
                session.execute(insert_ignoring_conflicts(_MATCHES_TABLE, _UNIQUE, dialect), fresh)
            reset = 0
            if resets:
                reset = session.execute(
                    update(RouteMatch)
                    .where(RouteMatch.id.in_(resets), RouteMatch.state == "failed")
                    .values(
                        state=PENDING,
                        route=self.route,
                        batch=None,
                        job_id=None,
                        error=None,
                        matched_at=now,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
            session.commit()
        self.added += len(fresh)
        self.retried += reset
        self.skipped += len(inserts) - len(fresh) + len(resets) - reset


def replay(
    engine: Engine,
    route: Route,
    routes: RouteSet,
    store_dir: Path,
    node_name: str,
    *,
    study: str | None = None,
    since: datetime | None = None,
    batch: int = BATCH,
) -> ReplayOutcome:
    """Evaluate *route* on stored instances again (a study's, or those received since
    *since*): a match to a destination that has no row yet becomes a pending row, a failed row
    becomes pending again, anything else is skipped (a decision still in its arrival, not yet
    expanded, is pending); the running node forwards once the study is stable. The instances
    and their rows are read read-only, the files with no transaction open, and the rows
    written *batch* at a time (each batch committed)."""
    examined = skipped = unreadable = 0
    with session_factory(engine.execution_options(**{READ_ONLY: True}))() as session:
        instances = _stored(session, study=study, since=since)
        existing: dict[tuple[str, str], tuple[int, str]] = {}
        uids = [i.sop_instance_uid for i in instances]
        # Arrivals before rows: one expanded between the two reads is seen in one of them.
        arrived = {(uid, d.destination) for uid, ds in arriving(session, uids).items() for d in ds}
        for start in range(0, len(uids), 500):
            for row_id, uid, dest, state in session.execute(
                select(
                    RouteMatch.id,
                    RouteMatch.sop_instance_uid,
                    RouteMatch.destination,
                    RouteMatch.state,
                ).where(RouteMatch.sop_instance_uid.in_(uids[start : start + 500]))
            ):
                existing[(uid, dest)] = (row_id, state)
    writer = _Writer(engine, route.name, batch)
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
            found = existing.get((inst.sop_instance_uid, dest))
            if (inst.sop_instance_uid, dest) in arrived:
                skipped += 1
            elif found is None:
                writer.insert(
                    match_row(
                        route,
                        dest,
                        inst.sop_instance_uid,
                        inst.study_instance_uid,
                        inst.series_instance_uid,
                        node_name,
                    )
                )
            elif found[1] == "failed":
                writer.reset(found[0])
            else:
                skipped += 1
    writer.flush()
    return ReplayOutcome(
        examined, writer.added, writer.retried, skipped + writer.skipped, unreadable
    )
