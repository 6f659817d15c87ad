"""What every writer of the queue's tables shares: the database and its clock, the fenced update
of a running job, the event trail, and waking a job.

*Fencing*: every change to a running job is ``UPDATE jobs … WHERE id = :id AND lease_owner =
:me AND state = 'running'`` (``fenced_update``). A worker that lost its lease (it stalled, the
lease expired and another worker reclaimed the job) can no longer record anything, so a job never
finishes twice; a caller that gets False rolls its transaction back.

*Time* comes from the database (``QueueDatabase.now``): on PostgreSQL its ``now()`` (the
transaction's time), so nodes with skewed or stepped clocks agree; SQLite lives on one host and
uses that host's clock. Every function here works inside the caller's session and transaction;
none commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from ctnode.db.engine import READ_ONLY, session_factory
from ctnode.db.models import Job as JobRow
from ctnode.db.models import JobEvent
from ctnode.db.types import utcnow
from ctnode.queue.jobs import JobState

#: Rows per statement when a write or a read names many rows (``IN (…)``, executemany).
CHUNK = 500

T = TypeVar("T")


def chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """*values* in slices of at most ``CHUNK``."""
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


class QueueDatabase:
    """The queue's database: new sessions, its dialect, and its clock.

    *clock_offset* is added to the database's now (none by default; tests move time forward
    with it instead of sleeping).
    """

    def __init__(
        self, engine: Engine, *, clock_offset: Callable[[], timedelta] | None = None
    ) -> None:
        self.engine = engine
        self.sessions = session_factory(engine)
        #: For what only reads (``queue.reads``): on SQLite a plain BEGIN, so a read neither
        #: takes nor waits for the write lock (a job read back after its submission, ``jobs
        #: list``, ``status``).
        self.readers = session_factory(engine.execution_options(**{READ_ONLY: True}))
        self.postgres = engine.dialect.name == "postgresql"
        self.clock_offset = clock_offset or timedelta

    def now(self, session: Session) -> datetime:
        """The database's notion of now (PostgreSQL: transaction time; SQLite: this host)."""
        if self.postgres:
            value = session.execute(select(func.now())).scalar_one()
            assert isinstance(value, datetime)
            return value + self.clock_offset()
        return utcnow() + self.clock_offset()


def fenced_update(session: Session, job_id: int, owner: str, now: datetime, **values: Any) -> bool:
    """Set *values* (and ``updated_at``) on job *job_id* if it is running under *owner*'s lease;
    False (nothing changed) if the lease is no longer *owner*'s."""
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


def append_event(
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
    """Add *event* to the job's trail (not fenced: events only add information)."""
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


def wake_in(session: Session, job_id: int, now: datetime, message: str) -> bool:
    """Make a waiting (or queued) job runnable now; False if it is not waiting, queued or running.

    On a running job this only moves ``not_before``, which ``JobRepository.wait_until`` then
    honours (a wake that comes while the attempt still runs is not lost).
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
    append_event(session, job_id, now, "woken", message=message)
    return True
