"""Reading the queue: jobs with their item counts, listings, a job's items and event trail, the
nodes seen, and the counts behind ``ctnode status`` and the metrics. Nothing here writes.

``JobReader`` is what a command that only looks opens (``jobs list``, ``jobs show``,
``status``); ``JobRepository`` (the writer) is a ``JobReader`` too, so a job just written is
read back through the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ctnode.db.models import Job as JobRow
from ctnode.db.models import JobEvent, JobItem, Node
from ctnode.errors import NotFound
from ctnode.queue.jobs import EventRow, ItemCounts, ItemRow, ItemState, Job, JobKind, JobState
from ctnode.queue.rows import QueueDatabase


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """Counts for status lines and metrics."""

    by_state: dict[str, int]
    by_kind_state: dict[tuple[str, str], int]
    oldest_queued_age: float | None
    failed_last_day: int


def item_counts(session: Session, job_ids: Sequence[int]) -> dict[int, ItemCounts]:
    """Each job's items counted by state (every id of *job_ids* is a key)."""
    if not job_ids:
        return {}
    raw: dict[int, dict[str, int]] = {}
    for job_id, state, count in session.execute(
        select(JobItem.job_id, JobItem.state, func.count())
        .where(JobItem.job_id.in_(job_ids))
        .group_by(JobItem.job_id, JobItem.state)
    ):
        raw.setdefault(job_id, {})[state] = count
    return {job_id: ItemCounts.from_mapping(raw.get(job_id, {})) for job_id in job_ids}


class JobReader(QueueDatabase):
    """Reads of the jobs, job_items, job_events and nodes tables."""

    def get(self, job_id: int) -> Job:
        """A job with its item counts; NotFound if it does not exist."""
        with self.readers() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job {job_id} (see `ctnode jobs list`)")
            return Job.from_row(row, item_counts(session, [job_id])[job_id])

    def list_jobs(
        self,
        *,
        states: Iterable[JobState] | None = None,
        kind: JobKind | None = None,
        peer: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Newest first."""
        with self.readers() as session:
            query = select(JobRow)
            if states is not None:
                query = query.where(JobRow.state.in_([s.value for s in states]))
            if kind is not None:
                query = query.where(JobRow.kind == kind.value)
            if peer is not None:
                query = query.where(JobRow.peer == peer)
            rows = list(session.scalars(query.order_by(JobRow.id.desc()).limit(limit)))
            counts = item_counts(session, [r.id for r in rows])
            return [Job.from_row(r, counts[r.id]) for r in rows]

    def failed_since(self, hours: float = 24, limit: int = 20) -> list[Job]:
        """Jobs that failed in the last *hours*, newest first."""
        with self.readers() as session:
            now = self.now(session)
            rows = list(
                session.scalars(
                    select(JobRow)
                    .where(
                        JobRow.state == JobState.FAILED.value,
                        JobRow.finished_at >= now - timedelta(hours=hours),
                    )
                    .order_by(JobRow.finished_at.desc())
                    .limit(limit)
                )
            )
            counts = item_counts(session, [r.id for r in rows])
            return [Job.from_row(r, counts[r.id]) for r in rows]

    def nodes(self, within: float = 30.0) -> list[dict[str, Any]]:
        """The 20 nodes seen last, with whether they are alive (heartbeat within *within* s)."""
        with self.readers() as session:
            now = self.now(session)
            out = []
            for node in session.scalars(select(Node).order_by(Node.last_seen.desc()).limit(20)):
                alive = node.stopped_at is None and (now - node.last_seen).total_seconds() < within
                out.append(
                    {
                        "owner": node.owner,
                        "name": node.name,
                        "pid": node.pid,
                        "version": node.version,
                        "alive": alive,
                        "started_at": node.started_at.isoformat(),
                        "last_seen": node.last_seen.isoformat(),
                    }
                )
            return out

    def items(self, job_id: int, states: Iterable[ItemState] | None = None) -> list[ItemRow]:
        """A job's items in submission order."""
        with self.readers() as session:
            query = select(JobItem).where(JobItem.job_id == job_id)
            if states is not None:
                query = query.where(JobItem.state.in_([s.value for s in states]))
            return [
                ItemRow(
                    r.id,
                    r.seq,
                    ItemState(r.state),
                    r.sop_class_uid,
                    r.sop_instance_uid,
                    r.transfer_syntax_uid,
                    r.path,
                    r.status,
                    r.error,
                    r.attempts,
                )
                for r in session.scalars(query.order_by(JobItem.seq))
            ]

    def events(self, job_id: int) -> list[EventRow]:
        """A job's event trail, oldest first."""
        with self.readers() as session:
            return [
                EventRow(e.at, e.event, e.attempt, e.node, e.status, e.message)
                for e in session.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
                )
            ]

    def summary(self) -> QueueSummary:
        """Counts by state and kind, age of the oldest runnable queued job, recent failures."""
        with self.readers() as session:
            now = self.now(session)
            by_kind_state: dict[tuple[str, str], int] = {}
            by_state: dict[str, int] = {}
            for kind, state, count in session.execute(
                select(JobRow.kind, JobRow.state, func.count()).group_by(JobRow.kind, JobRow.state)
            ):
                by_kind_state[(kind, state)] = count
                by_state[state] = by_state.get(state, 0) + count
            oldest = session.scalar(
                select(func.min(JobRow.not_before)).where(
                    JobRow.state == JobState.QUEUED.value, JobRow.not_before <= now
                )
            )
            failed = session.scalar(
                select(func.count())
                .select_from(JobRow)
                .where(
                    JobRow.state == JobState.FAILED.value,
                    JobRow.finished_at >= now - timedelta(days=1),
                )
            )
        age = (now - oldest).total_seconds() if oldest is not None else None
        return QueueSummary(by_state, by_kind_state, age, int(failed or 0))
