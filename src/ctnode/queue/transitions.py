"""How a job row moves between states, as SQL: the claim that starts (or resumes) an attempt,
and the column values of each way an attempt ends — finished for good, queued again for a retry,
parked in ``waiting``, or given back at shutdown.

Claiming is one statement (``claim_statement``): ``UPDATE … WHERE id = (SELECT … LIMIT 1)
RETURNING``; on PostgreSQL the sub-select takes ``FOR UPDATE SKIP LOCKED``. The end of an attempt
is ``values(now)``, which ``JobRepository`` applies with the fenced update
(``queue.rows.fenced_update``) in the transaction that logs the matching event; every way of
ending drops the lease. Nothing here executes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, and_, case, func, literal, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from ctnode.db.models import Job as JobRow
from ctnode.db.types import UTCDateTime
from ctnode.queue.jobs import JobKind, JobState

#: Column values of a job row, given the database's now.
Values = Callable[[datetime], dict[str, Any]]

_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def claim_statement(
    owner: str,
    node_name: str,
    now: datetime,
    lease_until: datetime,
    postgres: bool,
    exclude_peers: Iterable[str] = (),
    kinds: Iterable[JobKind] | None = None,
) -> Update:
    """Take the next runnable job for *owner* with a lease until *lease_until*, returning its id
    and attempt number (no row: nothing runnable).

    Runnable: queued or waiting with ``not_before`` passed, or running with an expired lease
    held by someone else; not pinned to another node than *node_name*; not for an excluded
    peer; of one of *kinds* if given. Highest priority first, then oldest ``not_before``.
    """
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
    if postgres:
        candidate = candidate.with_for_update(skip_locked=True)
    return (
        update(JobRow)
        .where(JobRow.id == candidate.scalar_subquery())
        .values(
            state=JobState.RUNNING.value,
            lease_owner=owner,
            lease_expires_at=lease_until,
            # A waiting job resumes its attempt; anything else starts a new one.
            attempts=JobRow.attempts + case((JobRow.state == JobState.WAITING.value, 0), else_=1),
            started_at=func.coalesce(JobRow.started_at, now),
            updated_at=now,
        )
        .returning(JobRow.id, JobRow.attempts)
    )


def _with_outcome(
    fields: dict[str, Any], status: int | None, error: str | None, result: dict[str, Any] | None
) -> dict[str, Any]:
    """*fields* plus the lease dropped and the attempt's outcome (and *result*, if given)."""
    out: dict[str, Any] = {**fields, **_NO_LEASE, "last_status": status, "last_error": error}
    if result is not None:
        out["result"] = result
    return out


def finished(
    state: JobState, status: int | None, error: str | None, result: dict[str, Any] | None
) -> Values:
    """Final *state* (succeeded, failed or cancelled), finished now."""
    return lambda now: _with_outcome(
        {"state": state.value, "finished_at": now}, status, error, result
    )


def retry_later(
    delay: float, status: int | None, error: str | None, result: dict[str, Any] | None
) -> Values:
    """Queued again, runnable *delay* seconds from now."""
    return lambda now: _with_outcome(
        {"state": JobState.QUEUED.value, "not_before": now + timedelta(seconds=delay)},
        status,
        error,
        result,
    )


def waiting(
    seconds: float, progress: dict[str, Any] | None, claimed_not_before: datetime | None
) -> Values:
    """Waiting until *seconds* from now, unless a wake moved ``not_before`` past
    *claimed_not_before* (its value when the job was claimed): then it stays that way."""

    def values(now: datetime) -> dict[str, Any]:
        deadline: Any = now + timedelta(seconds=seconds)
        if claimed_not_before is not None:
            deadline = case(
                (JobRow.not_before > claimed_not_before, JobRow.not_before),
                else_=literal(deadline, UTCDateTime()),
            )
        out: dict[str, Any] = {"state": JobState.WAITING.value, "not_before": deadline, **_NO_LEASE}
        if progress is not None:
            out["progress"] = progress
        return out

    return values


def given_back(postgres: bool) -> Values:
    """Queued again and runnable now, the attempt not counted (``attempts`` minus one)."""
    previous = (
        func.greatest(JobRow.attempts - 1, 0) if postgres else func.max(JobRow.attempts - 1, 0)
    )
    return lambda now: {
        "state": JobState.QUEUED.value,
        "not_before": now,
        **_NO_LEASE,
        "attempts": previous,
    }
