"""Reading the local instance index (the ``instances`` table) and who committed each instance:
``ctnode studies`` and ``ctnode instances``, the instances a push or commit of a study sends,
and which instances a move already has here. Nothing here writes.

``IndexReader`` opens a session per read; the functions under it read in the caller's session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ctnode.db.models import Instance, InstanceCommitment


@dataclass(frozen=True, slots=True)
class StudySummary:
    """One study in the local store."""

    study_instance_uid: str
    patient_id: str | None
    study_date: str | None
    modalities: list[str]
    series: int
    instances: int
    bytes: int
    last_received: datetime | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (ISO-8601 times)."""
        out = asdict(self)
        out["last_received"] = self.last_received.isoformat() if self.last_received else None
        return out


def list_studies(session: Session) -> list[StudySummary]:
    """Every study with stored (not deleted) instances, newest first."""
    live = Instance.deleted_at.is_(None)
    rows = session.execute(
        select(
            Instance.study_instance_uid,
            func.max(Instance.patient_id),
            func.max(Instance.study_date),
            func.count(func.distinct(Instance.series_instance_uid)),
            func.count(Instance.id),
            func.sum(Instance.size_bytes),
            func.max(Instance.received_at),
        )
        .where(live)
        .group_by(Instance.study_instance_uid)
        .order_by(func.max(Instance.received_at).desc())
    ).all()
    modalities: dict[str, set[str]] = {}
    for study, modality in session.execute(
        select(Instance.study_instance_uid, Instance.modality)
        .where(live, Instance.modality.is_not(None))
        .distinct()
    ):
        if modality:
            modalities.setdefault(study, set()).add(modality)
    out = []
    for study, patient, date, n_series, n_instances, size, last in rows:
        out.append(
            StudySummary(
                study,
                patient,
                date,
                sorted(modalities.get(study, ())),
                int(n_series),
                int(n_instances),
                int(size or 0),
                last,
            )
        )
    return out


def list_instances(
    session: Session,
    *,
    study: str | None = None,
    series: str | None = None,
    include_deleted: bool = False,
) -> list[Instance]:
    """Instances of a study or series, in series/instance order."""
    query = select(Instance)
    if study is not None:
        query = query.where(Instance.study_instance_uid == study)
    if series is not None:
        query = query.where(Instance.series_instance_uid == series)
    if not include_deleted:
        query = query.where(Instance.deleted_at.is_(None))
    query = query.order_by(
        Instance.series_number, Instance.series_instance_uid, Instance.instance_number, Instance.id
    )
    return list(session.scalars(query))


def commitments_of(session: Session, sop_instance_uids: list[str]) -> dict[str, list[Any]]:
    """Which peers committed each instance: ``{uid: [{peer, transaction_uid, committed_at}]}``."""
    out: dict[str, list[Any]] = {}
    for start in range(0, len(sop_instance_uids), 500):
        chunk = sop_instance_uids[start : start + 500]
        for row in session.scalars(
            select(InstanceCommitment)
            .where(InstanceCommitment.sop_instance_uid.in_(chunk))
            .order_by(InstanceCommitment.peer)
        ):
            out.setdefault(row.sop_instance_uid, []).append(
                {
                    "peer": row.peer,
                    "transaction_uid": row.transaction_uid,
                    "committed_at": row.committed_at.isoformat(),
                }
            )
    return out


def instance_json(row: Instance, committed_by: list[Any] | None = None) -> dict[str, Any]:
    """JSON form of an index row (no patient name), with the peers that committed it."""
    return {
        "sop_instance_uid": row.sop_instance_uid,
        "sop_class_uid": row.sop_class_uid,
        "study_instance_uid": row.study_instance_uid,
        "series_instance_uid": row.series_instance_uid,
        "modality": row.modality,
        "series_number": row.series_number,
        "instance_number": row.instance_number,
        "transfer_syntax_uid": row.transfer_syntax_uid,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "calling_ae": row.calling_ae,
        "received_at": row.received_at.isoformat(),
        "path": row.path,
        "node": row.node_name,
        "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None,
        "committed_by": committed_by or [],
    }


def present_instances(
    session: Session, sop_instance_uids: list[str], *, node_name: str | None = None
) -> set[str]:
    """Which of *sop_instance_uids* are stored (not deleted), on *node_name* if given."""
    found: set[str] = set()
    for start in range(0, len(sop_instance_uids), 500):
        query = select(Instance.sop_instance_uid).where(
            Instance.sop_instance_uid.in_(sop_instance_uids[start : start + 500]),
            Instance.deleted_at.is_(None),
        )
        if node_name is not None:
            query = query.where(Instance.node_name == node_name)
        found.update(session.scalars(query))
    return found


def stored_instances(
    session: Session, sop_instance_uids: list[str], *, node_name: str | None = None
) -> list[Instance]:
    """The stored (not deleted) instances among *sop_instance_uids*, on *node_name* if given,
    in no particular order."""
    found: list[Instance] = []
    for start in range(0, len(sop_instance_uids), 500):
        query = select(Instance).where(
            Instance.sop_instance_uid.in_(sop_instance_uids[start : start + 500]),
            Instance.deleted_at.is_(None),
        )
        if node_name is not None:
            query = query.where(Instance.node_name == node_name)
        found.extend(session.scalars(query))
    return found


class IndexReader:
    """Reads of the instance index, each in a new session from *sessions*."""

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self.sessions = sessions

    def studies(self) -> list[StudySummary]:
        """Every study with stored (not deleted) instances, newest first."""
        with self.sessions() as session:
            return list_studies(session)

    def instances(
        self, *, study: str | None = None, series: str | None = None, include_deleted: bool = False
    ) -> list[Instance]:
        """Instances of a study or series, in series/instance order (detached rows)."""
        with self.sessions() as session:
            return list_instances(
                session, study=study, series=series, include_deleted=include_deleted
            )

    def instances_json(
        self, *, study: str | None = None, series: str | None = None, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """``instance_json`` of each instance of a study or series, with the peers that
        committed it."""
        with self.sessions() as session:
            found = list_instances(
                session, study=study, series=series, include_deleted=include_deleted
            )
            commits = commitments_of(session, [r.sop_instance_uid for r in found])
            return [instance_json(r, commits.get(r.sop_instance_uid)) for r in found]

    def stored(
        self, sop_instance_uids: list[str], *, node_name: str | None = None
    ) -> list[Instance]:
        """The stored (not deleted) instances among *sop_instance_uids*, on *node_name* if
        given (detached rows)."""
        with self.sessions() as session:
            return stored_instances(session, sop_instance_uids, node_name=node_name)

    def present(self, sop_instance_uids: list[str], *, node_name: str | None = None) -> set[str]:
        """Which of *sop_instance_uids* are stored (not deleted), on *node_name* if given."""
        with self.sessions() as session:
            return present_instances(session, sop_instance_uids, node_name=node_name)
