"""The job repository: the only code that writes job, item and event rows.

Every state change of a running job is *fenced* on its lease owner (``WHERE id = :id AND
lease_owner = :me AND state = 'running'``): a worker that lost its lease (it stalled, the lease
expired and another worker reclaimed the job) can no longer record anything, so a job never
finishes twice. Claiming is a single ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING``: on
PostgreSQL the sub-select takes ``FOR UPDATE SKIP LOCKED``, on SQLite the transaction is
``BEGIN IMMEDIATE`` (one writer at a time). Lease times come from the database clock on
PostgreSQL (``now()``), so nodes with skewed or stepped clocks agree; SQLite lives on one host
and uses that host's clock.

Waiting (storage commitment): ``wait_until`` parks a job in ``waiting`` with no lease until a
deadline; claiming it again *resumes* the same attempt (``attempts`` is not incremented).
``wake`` makes a waiting job runnable at once (a commitment report arrived); a wake that comes
while the attempt is still running is not lost: ``wait_until`` keeps the job runnable. The
commitment tables are written by ``queue.commitment`` (the commitment section of this repository).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ctnode.db.engine import session_factory
from ctnode.db.models import Job as JobRow
from ctnode.db.models import JobEvent, JobItem, Node
from ctnode.db.types import UTCDateTime, utcnow
from ctnode.errors import NotFound, UsageError
from ctnode.queue.jobs import (
    EventRow,
    ItemCounts,
    ItemOutcome,
    ItemRow,
    ItemState,
    ItemUpsert,
    Job,
    JobKind,
    JobState,
    NewItem,
)
from ctnode.queue.retry import RetryPolicy

_INSERT_CHUNK = 500

_ITEMS: Table = JobItem.__table__  # type: ignore[assignment]
#: An item's outcome, and one more attempt on it (executemany, one row per item).
_RECORD_OUTCOME = (
    update(_ITEMS)
    .where(_ITEMS.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        updated_at=bindparam("b_at"),
        attempts=_ITEMS.c.attempts + 1,
    )
)


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """Counts for status lines and metrics."""

    by_state: dict[str, int]
    by_kind_state: dict[tuple[str, str], int]
    oldest_queued_age: float | None
    failed_last_day: int


def _released(
    fields: dict[str, Any], status: int | None, error: str | None, result: dict[str, Any] | None
) -> dict[str, Any]:
    """Column values ending an attempt: *fields* plus the lease dropped and the last outcome."""
    out: dict[str, Any] = {
        **fields,
        "lease_owner": None,
        "lease_expires_at": None,
        "last_status": status,
        "last_error": error,
    }
    if result is not None:
        out["result"] = result
    return out


class JobRepository:
    """Reads and writes jobs; see the module docstring for the fencing and claiming rules."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 60.0,
        clock_offset: Callable[[], timedelta] | None = None,
    ) -> None:
        self.engine = engine
        self.sessions = session_factory(engine)
        self.postgres = engine.dialect.name == "postgresql"
        self.lease = timedelta(seconds=lease_seconds)
        #: Added to the database's now; none by default (tests move time forward with it).
        self.clock_offset = clock_offset or timedelta

    # ------------------------------------------------------------------ clock

    def _now(self, session: Session) -> datetime:
        """The database's notion of now (PostgreSQL: transaction time; SQLite: this host)."""
        if self.postgres:
            value = session.execute(select(func.now())).scalar_one()
            assert isinstance(value, datetime)
            return value + self.clock_offset()
        return utcnow() + self.clock_offset()

    @staticmethod
    def _event(
        session: Session,
        job_id: int,
        at: datetime,
        event: str,
        *,
        attempt: int | None = None,
        node: str | None = None,
        status: int | None = None,
        message: str | None = None,
    ) -> None:
        session.add(
            JobEvent(
                job_id=job_id,
                at=at,
                event=event,
                attempt=attempt,
                node=node,
                status=status,
                message=message,
            )
        )

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        kind: JobKind,
        peer: str,
        payload: dict[str, Any],
        items: Sequence[NewItem] = (),
        *,
        policy: RetryPolicy,
        priority: int = 0,
        node_name: str | None = None,
        idempotency_key: str | None = None,
        delay: float = 0.0,
    ) -> tuple[Job, bool]:
        """Create a job with its items in one transaction; returns (job, created).

        With an *idempotency_key* already used, the existing job is returned (created False).
        """
        if idempotency_key is not None:
            existing = self._by_key(idempotency_key)
            if existing is not None:
                return existing, False
        try:
            with self.sessions() as session:
                now = self._now(session)
                row = JobRow(
                    kind=kind.value,
                    peer=peer,
                    state=JobState.QUEUED.value,
                    priority=priority,
                    not_before=now + timedelta(seconds=delay),
                    attempts=0,
                    max_attempts=policy.max_attempts,
                    retry_policy=policy.to_json(),
                    node_name=node_name,
                    cancel_requested=False,
                    idempotency_key=idempotency_key,
                    payload=payload,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                rows = [
                    {
                        "job_id": row.id,
                        "seq": seq,
                        "state": ItemState.PENDING.value,
                        "sop_class_uid": it.sop_class_uid,
                        "sop_instance_uid": it.sop_instance_uid,
                        "transfer_syntax_uid": it.transfer_syntax_uid,
                        "path": it.path,
                        "attempts": 0,
                        "updated_at": now,
                    }
                    for seq, it in enumerate(items)
                ]
                for start in range(0, len(rows), _INSERT_CHUNK):
                    session.execute(insert(JobItem), rows[start : start + _INSERT_CHUNK])
                self._event(
                    session,
                    row.id,
                    now,
                    "submitted",
                    message=f"{len(rows)} item(s)" if rows else None,
                )
                session.commit()
                job_id = row.id
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = self._by_key(idempotency_key)
            if existing is None:
                raise
            return existing, False
        return self.get(job_id), True

    def _by_key(self, key: str) -> Job | None:
        with self.sessions() as session:
            job_id = session.scalar(select(JobRow.id).where(JobRow.idempotency_key == key))
        return self.get(job_id) if job_id is not None else None

    # ------------------------------------------------------------------ claim

    def claim(
        self,
        owner: str,
        node_name: str,
        *,
        exclude_peers: Iterable[str] = (),
        kinds: Iterable[JobKind] | None = None,
    ) -> Job | None:
        """Take the next runnable job, with a lease; None if there is none.

        Runnable: queued or waiting with ``not_before`` passed, or running with an expired lease
        held by someone else; not pinned to another node; not for an excluded peer.
        """
        with self.sessions() as session:
            now = self._now(session)
            claimable: list[ColumnElement[bool]] = [
                or_(
                    and_(
                        JobRow.state.in_([JobState.QUEUED.value, JobState.WAITING.value]),
                        JobRow.not_before <= now,
                    ),
                    and_(
                        JobRow.state == JobState.RUNNING.value,
                        JobRow.lease_expires_at < now,
                        JobRow.lease_owner != owner,
                    ),
                ),
                or_(JobRow.node_name.is_(None), JobRow.node_name == node_name),
            ]
            excluded = list(exclude_peers)
            if excluded:
                claimable.append(JobRow.peer.not_in(excluded))
            if kinds is not None:
                claimable.append(JobRow.kind.in_([k.value for k in kinds]))
            candidate = (
                select(JobRow.id)
                .where(*claimable)
                .order_by(JobRow.priority.desc(), JobRow.not_before, JobRow.id)
                .limit(1)
            )
            if self.postgres:
                candidate = candidate.with_for_update(skip_locked=True)
            stmt = (
                update(JobRow)
                .where(JobRow.id == candidate.scalar_subquery())
                .values(
                    state=JobState.RUNNING.value,
                    lease_owner=owner,
                    lease_expires_at=now + self.lease,
                    # A waiting job resumes its attempt; anything else starts a new one.
                    attempts=JobRow.attempts
                    + case((JobRow.state == JobState.WAITING.value, 0), else_=1),
                    started_at=func.coalesce(JobRow.started_at, now),
                    updated_at=now,
                )
                .returning(JobRow.id, JobRow.attempts)
            )
            claimed = session.execute(stmt).first()
            if claimed is None:
                session.rollback()
                return None
            job_id, attempt = claimed
            self._event(session, job_id, now, "claimed", attempt=attempt, node=owner)
            session.commit()
        return self.get(job_id)

    # ------------------------------------------------------------------ fenced updates

    def _fenced(
        self, session: Session, job_id: int, owner: str, now: datetime, **values: Any
    ) -> bool:
        result = session.execute(
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.lease_owner == owner,
                JobRow.state == JobState.RUNNING.value,
            )
            .values(updated_at=now, **values)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def renew(self, job_id: int, owner: str) -> tuple[bool, bool]:
        """Extend the lease. Returns (still_ours, cancel_requested)."""
        with self.sessions() as session:
            now = self._now(session)
            if not self._fenced(session, job_id, owner, now, lease_expires_at=now + self.lease):
                session.rollback()
                return False, False
            cancel = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
            session.commit()
            return True, bool(cancel)

    def record_items(
        self,
        job_id: int,
        owner: str,
        outcomes: Sequence[ItemOutcome],
        *,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Record item outcomes (one transaction for the batch); False if the lease was lost."""
        with self.sessions() as session:
            now = self._now(session)
            values: dict[str, Any] = {"lease_expires_at": now + self.lease}
            if progress is not None:
                values["progress"] = progress
            if not self._fenced(session, job_id, owner, now, **values):
                session.rollback()
                return False
            if outcomes:
                # One plain executemany (not the ORM's bulk update): this runs every
                # BATCH_ITEMS instances of a push, on the sending thread.
                session.execute(
                    _RECORD_OUTCOME,
                    [
                        {
                            "b_id": o.item_id,
                            "b_state": o.state.value,
                            "b_status": o.status,
                            "b_error": o.error,
                            "b_at": now,
                        }
                        for o in outcomes
                    ],
                )
            session.commit()
            return True

    def record_arrivals(
        self,
        job_id: int,
        owner: str,
        items: Sequence[ItemUpsert],
        *,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Create or update items by SOP Instance UID, with progress, in one fenced transaction.

        A failure never overwrites an item that already arrived (succeeded or warning). Returns
        False if the lease was lost.
        """
        with self.sessions() as session:
            now = self._now(session)
            values: dict[str, Any] = {"lease_expires_at": now + self.lease}
            if progress is not None:
                values["progress"] = progress
            if not self._fenced(session, job_id, owner, now, **values):
                session.rollback()
                return False
            latest = {item.sop_instance_uid: item for item in items}
            uids = list(latest)
            existing: dict[str, tuple[int, str]] = {}
            for start in range(0, len(uids), _INSERT_CHUNK):
                for item_id, uid, state in session.execute(
                    select(JobItem.id, JobItem.sop_instance_uid, JobItem.state).where(
                        JobItem.job_id == job_id,
                        JobItem.sop_instance_uid.in_(uids[start : start + _INSERT_CHUNK]),
                    )
                ):
                    if uid is not None:
                        existing[uid] = (item_id, state)
            delivered = (ItemState.SUCCEEDED.value, ItemState.WARNING.value)
            updates: list[dict[str, Any]] = []
            inserts: list[dict[str, Any]] = []
            max_seq = session.scalar(select(func.max(JobItem.seq)).where(JobItem.job_id == job_id))
            next_seq = 0 if max_seq is None else int(max_seq) + 1
            for uid, item in latest.items():
                row = {
                    "state": item.state.value,
                    "status": item.status,
                    "error": item.error,
                    "updated_at": now,
                }
                if uid in existing:
                    item_id, state = existing[uid]
                    if item.state is ItemState.FAILED and state in delivered:
                        continue
                    updates.append({"id": item_id, **row})
                else:
                    inserts.append(
                        {
                            "job_id": job_id,
                            "seq": next_seq,
                            "sop_class_uid": item.sop_class_uid,
                            "sop_instance_uid": uid,
                            "attempts": 1,
                            **row,
                        }
                    )
                    next_seq += 1
            for start in range(0, len(updates), _INSERT_CHUNK):
                chunk = updates[start : start + _INSERT_CHUNK]
                session.execute(update(JobItem), chunk)
                session.execute(
                    update(JobItem)
                    .where(JobItem.id.in_([u["id"] for u in chunk]))
                    .values(attempts=JobItem.attempts + 1)
                )
            for start in range(0, len(inserts), _INSERT_CHUNK):
                session.execute(insert(JobItem), inserts[start : start + _INSERT_CHUNK])
            session.commit()
            return True

    def set_payload(self, job_id: int, owner: str, payload: dict[str, Any]) -> bool:
        """Replace the payload (e.g. a commitment transaction, persisted before it is sent)."""
        with self.sessions() as session:
            now = self._now(session)
            ok = self._fenced(session, job_id, owner, now, payload=payload)
            if ok:
                session.commit()
            else:
                session.rollback()
            return ok

    def _end_attempt(
        self,
        job_id: int,
        owner: str,
        values: Callable[[datetime], dict[str, Any]],
        *,
        event: str,
        status: int | None = None,
        message: str | None = None,
        with_attempt: bool = True,
    ) -> bool:
        """Apply *values(now)* to a running job we own (fenced), log *event*, commit.

        Returns False (and changes nothing) if the lease is no longer ours.
        """
        with self.sessions() as session:
            now = self._now(session)
            if not self._fenced(session, job_id, owner, now, **values(now)):
                session.rollback()
                return False
            attempt = (
                session.scalar(select(JobRow.attempts).where(JobRow.id == job_id))
                if with_attempt
                else None
            )
            self._event(
                session,
                job_id,
                now,
                event,
                attempt=attempt,
                node=owner,
                status=status,
                message=message,
            )
            session.commit()
            return True

    def finish(
        self,
        job_id: int,
        owner: str,
        state: JobState,
        *,
        status: int | None = None,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        """End an attempt for good: succeeded, failed or cancelled. Fenced."""
        assert state.final

        def values(now: datetime) -> dict[str, Any]:
            return _released({"state": state.value, "finished_at": now}, status, error, result)

        return self._end_attempt(
            job_id, owner, values, event=state.value, status=status, message=message or error
        )

    def schedule_retry(
        self,
        job_id: int,
        owner: str,
        delay: float,
        *,
        status: int | None,
        error: str,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Back to queued, runnable after *delay* seconds. Fenced."""

        def values(now: datetime) -> dict[str, Any]:
            return _released(
                {"state": JobState.QUEUED.value, "not_before": now + timedelta(seconds=delay)},
                status,
                error,
                result,
            )

        return self._end_attempt(
            job_id,
            owner,
            values,
            event="retry_scheduled",
            status=status,
            message=f"in {delay:.1f} s: {error}",
        )

    def wait_until(
        self,
        job_id: int,
        owner: str,
        seconds: float,
        *,
        message: str,
        progress: dict[str, Any] | None = None,
        claimed_not_before: datetime | None = None,
    ) -> bool:
        """Park a job in ``waiting`` (no worker held) until *seconds* from now. Fenced.

        *claimed_not_before* is the job's ``not_before`` when it was claimed: if ``wake`` moved
        it since (the awaited event already happened), the job stays runnable instead.
        """

        def values(now: datetime) -> dict[str, Any]:
            deadline: Any = now + timedelta(seconds=seconds)
            if claimed_not_before is not None:
                deadline = case(
                    (JobRow.not_before > claimed_not_before, JobRow.not_before),
                    else_=literal(deadline, UTCDateTime()),
                )
            out: dict[str, Any] = {
                "state": JobState.WAITING.value,
                "not_before": deadline,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            if progress is not None:
                out["progress"] = progress
            return out

        return self._end_attempt(
            job_id, owner, values, event="waiting", message=message, with_attempt=False
        )

    def wake_in(self, session: Session, job_id: int, now: datetime, message: str) -> bool:
        """Make a waiting (or queued) job runnable now, inside the caller's transaction.

        On a running job this only moves ``not_before``, which ``wait_until`` then honours.
        """
        result = session.execute(
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.state.in_(
                    [JobState.WAITING.value, JobState.QUEUED.value, JobState.RUNNING.value]
                ),
            )
            .values(not_before=now, updated_at=now)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self._event(session, job_id, now, "woken", message=message)
        return True

    def wake(self, job_id: int, message: str) -> bool:
        """Make a waiting job runnable now (see ``wake_in``); False if it is not waiting,
        queued or running."""
        with self.sessions() as session:
            woken = self.wake_in(session, job_id, self._now(session), message)
            session.commit()
            return woken

    def release(self, job_id: int, owner: str, reason: str) -> bool:
        """Give an unfinished attempt back (shutdown): queued again, attempt not counted."""
        previous = (
            func.greatest(JobRow.attempts - 1, 0)
            if self.postgres
            else func.max(JobRow.attempts - 1, 0)
        )
        return self._end_attempt(
            job_id,
            owner,
            lambda now: {
                "state": JobState.QUEUED.value,
                "not_before": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "attempts": previous,
            },
            event="released",
            message=reason,
            with_attempt=False,
        )

    def event(
        self,
        job_id: int,
        event: str,
        *,
        message: str | None = None,
        status: int | None = None,
        attempt: int | None = None,
        node: str | None = None,
    ) -> None:
        """Append to a job's event trail (not fenced: events only add information)."""
        with self.sessions() as session:
            self._event(
                session,
                job_id,
                self._now(session),
                event,
                attempt=attempt,
                node=node,
                status=status,
                message=message,
            )
            session.commit()

    # ------------------------------------------------------------------ user actions

    def cancel(self, job_id: int) -> Job:
        """Cancel: queued/waiting at once; running at the next item boundary."""
        with self.sessions() as session:
            now = self._now(session)
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            state = JobState(row.state)
            if state in (JobState.QUEUED, JobState.WAITING):
                row.state = JobState.CANCELLED.value
                row.finished_at = now
                row.updated_at = now
                self._event(session, job_id, now, "cancelled", message="cancelled by user")
            elif state is JobState.RUNNING and not row.cancel_requested:
                row.cancel_requested = True
                row.updated_at = now
                self._event(
                    session,
                    job_id,
                    now,
                    "cancel_requested",
                    message="stops at the next item boundary",
                )
            session.commit()
        return self.get(job_id)

    def retry(self, job_id: int) -> Job:
        """Run a failed or cancelled job again: attempts reset, failed items pending again."""
        with self.sessions() as session:
            now = self._now(session)
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            if row.state not in (JobState.FAILED.value, JobState.CANCELLED.value):
                raise UsageError(
                    f"job {job_id} is {row.state}; only failed or cancelled jobs can be retried"
                )
            row.state = JobState.QUEUED.value
            row.attempts = 0
            row.not_before = now
            row.cancel_requested = False
            row.finished_at = None
            row.updated_at = now
            session.execute(
                update(JobItem)
                .where(JobItem.job_id == job_id, JobItem.state == ItemState.FAILED.value)
                .values(state=ItemState.PENDING.value, status=None, error=None, updated_at=now)
            )
            self._event(session, job_id, now, "retried", message="retried by user")
            session.commit()
        return self.get(job_id)

    # ------------------------------------------------------------------ reads

    def _counts(self, session: Session, job_ids: Sequence[int]) -> dict[int, ItemCounts]:
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

    def get(self, job_id: int) -> Job:
        """A job with its item counts; NotFound if it does not exist."""
        with self.sessions() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job {job_id} (see `ctnode jobs list`)")
            return Job.from_row(row, self._counts(session, [job_id])[job_id])

    def list_jobs(
        self,
        *,
        states: Iterable[JobState] | None = None,
        kind: JobKind | None = None,
        peer: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Newest first."""
        with self.sessions() as session:
            query = select(JobRow)
            if states is not None:
                query = query.where(JobRow.state.in_([s.value for s in states]))
            if kind is not None:
                query = query.where(JobRow.kind == kind.value)
            if peer is not None:
                query = query.where(JobRow.peer == peer)
            rows = list(session.scalars(query.order_by(JobRow.id.desc()).limit(limit)))
            counts = self._counts(session, [r.id for r in rows])
            return [Job.from_row(r, counts[r.id]) for r in rows]

    def failed_since(self, hours: float = 24, limit: int = 20) -> list[Job]:
        """Jobs that failed in the last *hours*, newest first."""
        with self.sessions() as session:
            now = self._now(session)
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
            counts = self._counts(session, [r.id for r in rows])
            return [Job.from_row(r, counts[r.id]) for r in rows]

    def nodes(self, within: float = 30.0) -> list[dict[str, Any]]:
        """Known nodes with whether they are alive (heartbeat within *within* s)."""
        with self.sessions() as session:
            now = self._now(session)
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
        with self.sessions() as session:
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
        with self.sessions() as session:
            return [
                EventRow(e.at, e.event, e.attempt, e.node, e.status, e.message)
                for e in session.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
                )
            ]

    def summary(self) -> QueueSummary:
        """Counts by state and kind, age of the oldest runnable queued job, recent failures."""
        with self.sessions() as session:
            now = self._now(session)
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

    def lease_owners(self) -> list[str]:
        """Owners of the leases of running jobs."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(JobRow.lease_owner)
                    .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_owner.is_not(None))
                    .distinct()
                )
            )

    def expire_leases(self, owners: Sequence[str], reason: str) -> int:
        """End the leases of *owners* now (they are known dead); returns how many jobs."""
        if not owners:
            return 0
        with self.sessions() as session:
            now = self._now(session)
            ids = list(
                session.scalars(
                    select(JobRow.id).where(
                        JobRow.state == JobState.RUNNING.value, JobRow.lease_owner.in_(owners)
                    )
                )
            )
            if ids:
                session.execute(
                    update(JobRow)
                    .where(JobRow.id.in_(ids))
                    .values(lease_expires_at=now, updated_at=now)
                )
                for job_id in ids:
                    self._event(session, job_id, now, "lease_expired", message=reason)
            session.commit()
            return len(ids)

    # ------------------------------------------------------------------ nodes

    def node_started(self, owner: str, name: str, version: str) -> None:
        """Register this process (heartbeats follow)."""
        with self.sessions() as session:
            now = self._now(session)
            session.merge(
                Node(
                    owner=owner,
                    name=name,
                    pid=os.getpid(),
                    version=version,
                    started_at=now,
                    last_seen=now,
                    stopped_at=None,
                )
            )
            session.commit()

    def node_heartbeat(self, owner: str) -> None:
        """This process is alive."""
        with self.sessions() as session:
            now = self._now(session)
            session.execute(update(Node).where(Node.owner == owner).values(last_seen=now))
            session.commit()

    def node_stopped(self, owner: str) -> None:
        """This process stopped cleanly."""
        with self.sessions() as session:
            now = self._now(session)
            session.execute(
                update(Node).where(Node.owner == owner).values(stopped_at=now, last_seen=now)
            )
            session.commit()

    def live_nodes(self, within: float = 30.0) -> list[str]:
        """Owners of nodes that sent a heartbeat within *within* seconds."""
        with self.sessions() as session:
            now = self._now(session)
            return list(
                session.scalars(
                    select(Node.owner).where(
                        Node.stopped_at.is_(None), Node.last_seen >= now - timedelta(seconds=within)
                    )
                )
            )
