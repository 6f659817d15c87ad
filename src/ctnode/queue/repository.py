"""The job repository: the one writer of job rows, their items and their events (commit jobs'
rounds and reports are written by ``queue.commit_rounds`` through the same fenced update).

It submits jobs, claims them with a lease, renews the lease, records item outcomes and
arrivals, and ends attempts (finished, retried later, waiting, released); users cancel and
retry through it. Every change to a running job is fenced on its lease owner
(``queue.rows.fenced_update``): a worker that lost its lease can no longer record anything, so a
job never finishes twice. Claiming is a single statement (``queue.transitions``) that takes
``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the transaction is ``BEGIN IMMEDIATE`` (one
writer at a time). Lease times come from the database clock (``queue.rows.QueueDatabase.now``).

Waiting (storage commitment): ``wait_until`` parks a job in ``waiting`` with no lease until a
deadline; claiming it again *resumes* the same attempt (``attempts`` is not incremented).
``wake`` makes a waiting job runnable at once (a commitment report arrived); a wake that comes
while the attempt is still running is not lost: ``wait_until`` keeps the job runnable. The
commitment tables are written by ``queue.commit_rounds`` with the same fenced update.

A ``JobRepository`` is also a ``JobReader`` (``queue.reads``: every write answers with the job
as it is now) and a ``NodeLiveness`` (``queue.nodes``: the worker pool's heartbeat), so one
object serves a worker pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from ctnode.db.models import Job as JobRow
from ctnode.db.models import JobItem
from ctnode.errors import NotFound, UsageError
from ctnode.queue.items import insert_items, record_outcomes, upsert_arrivals
from ctnode.queue.jobs import ItemOutcome, ItemState, ItemUpsert, Job, JobKind, JobState, NewItem
from ctnode.queue.nodes import NodeLiveness
from ctnode.queue.reads import JobReader, QueueSummary
from ctnode.queue.retry import RetryPolicy
from ctnode.queue.rows import append_event, fenced_update, wake_in
from ctnode.queue.transitions import claim_statement, finished, given_back, retry_later, waiting

__all__ = ["JobRepository", "QueueSummary"]


class JobRepository(JobReader, NodeLiveness):
    """Writes jobs; see the module docstring for the fencing and claiming rules."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = 60.0,
        clock_offset: Callable[[], timedelta] | None = None,
    ) -> None:
        super().__init__(engine, clock_offset=clock_offset)
        self.lease = timedelta(seconds=lease_seconds)

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
                now = self.now(session)
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
                count = insert_items(session, row.id, items, now)
                append_event(
                    session, row.id, now, "submitted", message=f"{count} item(s)" if count else None
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
        with self.readers() as session:
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
            now = self.now(session)
            stmt = claim_statement(
                owner, node_name, now, now + self.lease, self.postgres, exclude_peers, kinds
            )
            claimed = session.execute(stmt).first()
            if claimed is None:
                session.rollback()
                return None
            job_id, attempt = claimed
            append_event(session, job_id, now, "claimed", attempt=attempt, node=owner)
            session.commit()
        return self.get(job_id)

    # ------------------------------------------------------------------ fenced updates

    def renew(self, job_id: int, owner: str) -> tuple[bool, bool]:
        """Extend the lease. Returns (still_ours, cancel_requested)."""
        with self.sessions() as session:
            now = self.now(session)
            if not fenced_update(session, job_id, owner, now, lease_expires_at=now + self.lease):
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
            now = self.now(session)
            values: dict[str, Any] = {"lease_expires_at": now + self.lease}
            if progress is not None:
                values["progress"] = progress
            if not fenced_update(session, job_id, owner, now, **values):
                session.rollback()
                return False
            record_outcomes(session, outcomes, now)
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
            now = self.now(session)
            values: dict[str, Any] = {"lease_expires_at": now + self.lease}
            if progress is not None:
                values["progress"] = progress
            if not fenced_update(session, job_id, owner, now, **values):
                session.rollback()
                return False
            upsert_arrivals(session, job_id, items, now)
            session.commit()
            return True

    def set_payload(self, job_id: int, owner: str, payload: dict[str, Any]) -> bool:
        """Replace the payload (e.g. a commitment transaction, persisted before it is sent)."""
        with self.sessions() as session:
            now = self.now(session)
            ok = fenced_update(session, job_id, owner, now, payload=payload)
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
            now = self.now(session)
            if not fenced_update(session, job_id, owner, now, **values(now)):
                session.rollback()
                return False
            attempt = (
                session.scalar(select(JobRow.attempts).where(JobRow.id == job_id))
                if with_attempt
                else None
            )
            append_event(
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
        values = finished(state, status, error, result)
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
        values = retry_later(delay, status, error, result)
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
        values = waiting(seconds, progress, claimed_not_before)
        return self._end_attempt(
            job_id, owner, values, event="waiting", message=message, with_attempt=False
        )

    def wake(self, job_id: int, message: str) -> bool:
        """Make a waiting job runnable now (``queue.rows.wake_in``); False if it is not waiting,
        queued or running."""
        with self.sessions() as session:
            woken = wake_in(session, job_id, self.now(session), message)
            session.commit()
            return woken

    def release(self, job_id: int, owner: str, reason: str) -> bool:
        """Give an unfinished attempt back (shutdown): queued again, attempt not counted."""
        return self._end_attempt(
            job_id,
            owner,
            given_back(self.postgres),
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
            append_event(
                session,
                job_id,
                self.now(session),
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
            now = self.now(session)
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            state = JobState(row.state)
            if state in (JobState.QUEUED, JobState.WAITING):
                row.state = JobState.CANCELLED.value
                row.finished_at = now
                row.updated_at = now
                append_event(session, job_id, now, "cancelled", message="cancelled by user")
            elif state is JobState.RUNNING and not row.cancel_requested:
                row.cancel_requested = True
                row.updated_at = now
                append_event(
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
            now = self.now(session)
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
            append_event(session, job_id, now, "retried", message="retried by user")
            session.commit()
        return self.get(job_id)

    def expire_leases(self, owners: Sequence[str], reason: str) -> int:
        """End the leases of *owners* now (they are known dead); returns how many jobs."""
        if not owners:
            return 0
        with self.sessions() as session:
            now = self.now(session)
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
                    append_event(session, job_id, now, "lease_expired", message=reason)
            session.commit()
            return len(ids)
