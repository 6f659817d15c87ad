"""Delivery states: the routing decisions taken into forward jobs that ended become
``delivered`` or ``failed``, per instance (the job's item for it; the job's own error when the
item has none), and what was just delivered and a commitment peer has already committed is
handed to retention. Run by every forwarder pass (``routing.forwarder``), which owns the rest of
a decision's life (expansion, stable detection, dispatch).

A failed row is matched again only when its job ended after it was reconciled (``jobs retry``
made the job run again): its ``updated_at`` is the database's clock, the one that wrote the
job's ``finished_at``. Most passes find nothing to reconcile, which they learn without taking
the write lock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from ctnode.config import StorageSettings
from ctnode.db.models import InstanceCommitment, JobItem, RouteMatch
from ctnode.db.models import Job as JobRow
from ctnode.logs import get_logger
from ctnode.queue.repository import JobRepository

log = get_logger("ctnode.routing")

QUEUED = "queued"
DELIVERED = "delivered"
FAILED = "failed"
_DONE_JOB_STATES = ("succeeded", "failed", "cancelled")
_DELIVERED_ITEMS = ("succeeded", "warning")


def _at_least(now: datetime, row: Any) -> datetime:
    """A failed row's ``updated_at``: never before its job's end (a job that ended after this
    transaction began must not be matched again), so only a later end (``jobs retry``) is."""
    finished: datetime | None = row.finished_at
    return now if finished is None or finished <= now else finished


class Deliveries:
    """Delivery states of one node's forward jobs (every node's with a shared store: *mine*)."""

    def __init__(
        self,
        storage: StorageSettings,
        sessions: sessionmaker[Session],
        readers: sessionmaker[Session],
        repo: JobRepository,
        mine: Callable[[], ColumnElement[bool]],
    ) -> None:
        self.storage = storage
        self.sessions = sessions
        self.readers = readers
        self.repo = repo
        self.mine = mine
        #: Retention (``commitment.Retention.apply``): instances delivered everywhere that a
        #: commitment peer already committed leave the disk (their removal waited for routing).
        self.release: Callable[[str, list[str]], int] | None = None

    def reconcile(self, limit: int = 20000) -> int:
        """Rows of forward jobs that ended: delivered or failed per their item; returns how many
        rows changed. Failed rows of a job that later succeeded (``jobs retry``) are updated too."""
        rm = RouteMatch
        query = (
            select(rm.id, rm.route, rm.destination, rm.job_id, rm.sop_instance_uid)
            .add_columns(JobItem.state, JobItem.error)
            .add_columns(JobRow.last_error, JobRow.finished_at, rm.state.label("row_state"))
            .join(JobRow, JobRow.id == rm.job_id)
            .join(
                JobItem,
                and_(JobItem.job_id == rm.job_id, JobItem.sop_instance_uid == rm.sop_instance_uid),
                isouter=True,
            )
            .where(
                self.mine(),
                JobRow.state.in_(_DONE_JOB_STATES),
                or_(
                    rm.state == QUEUED,
                    and_(rm.state == FAILED, JobRow.finished_at > rm.updated_at),
                ),
            )
            .limit(limit)
        )
        # Looked for without the write lock first: most passes find nothing to reconcile.
        with self.readers() as session:
            if not session.execute(query.limit(1)).first():
                return 0
        with self.sessions() as session:
            rows = session.execute(query).all()
            if not rows:
                return 0
            delivered = [r.id for r in rows if r.state in _DELIVERED_ITEMS]
            failed = [r for r in rows if r.state not in _DELIVERED_ITEMS]
            # The database's clock, the one that wrote the job's finished_at (not this host's:
            # a failed row is matched again while finished_at > updated_at).
            now = self.repo.now(session)
            for start in range(0, len(delivered), 500):
                session.execute(
                    update(rm)
                    .where(rm.id.in_(delivered[start : start + 500]))
                    .values(state=DELIVERED, error=None, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            for row in failed:
                error = row.error or row.last_error or "the forward job ended without sending it"
                session.execute(
                    update(rm)
                    .where(rm.id == row.id)
                    .values(state=FAILED, error=error[:2000], updated_at=_at_least(now, row))
                    .execution_options(synchronize_session=False)
                )
            session.commit()
        self._release([r.sop_instance_uid for r in rows if r.state in _DELIVERED_ITEMS])
        by_job: dict[tuple[str, str, int], list[int]] = {}
        for r in rows:
            counts = by_job.setdefault((r.route, r.destination, r.job_id), [0, 0])
            counts[0 if r.state in _DELIVERED_ITEMS else 1] += 1
        for (route, destination, job_id), (ok, bad) in by_job.items():
            event = "route.forward_done" if not bad else "route.forward_failed"
            emit = log.info if not bad else log.warning
            fields = {"route": route, "destination": destination, "job_id": job_id}
            emit(event, **fields, delivered=ok, failed=bad)
        return len(rows)

    def _release(self, delivered: list[str]) -> None:
        """Hand retention the just-delivered instances a commitment peer has committed."""
        storage = self.storage
        if self.release is None or not delivered or not storage.delete_after_commit:
            return
        by_peer: dict[str, list[str]] = {}
        with self.readers() as session:
            for start in range(0, len(delivered), 500):
                for uid, peer in session.execute(
                    select(InstanceCommitment.sop_instance_uid, InstanceCommitment.peer).where(
                        InstanceCommitment.sop_instance_uid.in_(delivered[start : start + 500]),
                        InstanceCommitment.peer.in_(storage.commitment_peers),
                    )
                ):
                    by_peer.setdefault(peer, []).append(uid)
        for peer, uids in by_peer.items():
            self.release(peer, uids)
