"""The attempt contract: what an operation (push, query, move, commit) is given for one attempt
of a job and what it reports back. The worker pool (``queue.worker``) runs operations through
it; the operations know nothing of the pool.

How a failure becomes the attempt's outcome — one ladder for every operation (``outcome_of``):

* ``PermanentError`` (refused, unsupported, invalid payload) → PERMANENT;
* ``AssociationRejected`` with ``permanent`` (A-ASSOCIATE-RJ result 1) → PERMANENT;
* any other ``TransientError`` (peer unreachable, association aborted, rejected-transient)
  → TRANSIENT.

The error is the exception's message, the status its DIMSE status if it has one. A request's
final DIMSE status counts the same way (``outcome_of_status``): success or warning → DONE,
transient failure → TRANSIENT, permanent failure → PERMANENT. TRANSIENT and PERMANENT then go
to the retry policy (``queue.retry.decide``).

Pure: no I/O; the job, the peer and the repository appear as types only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from ctnode.dicom.status import StatusMeaning
from ctnode.errors import AssociationRejected, PermanentError, TransientError

if TYPE_CHECKING:
    from ctnode.peers import Peer
    from ctnode.queue.jobs import ItemOutcome, ItemRow, ItemState, ItemUpsert, Job


class Outcome(StrEnum):
    """How an attempt ended."""

    #: Everything the job had to do is done: the job succeeds.
    DONE = "done"
    #: A failure retrying cannot fix: the job fails.
    PERMANENT = "permanent"
    #: A failure that may pass: the retry policy decides.
    TRANSIENT = "transient"
    #: The attempt stopped early because it was asked to (cancel, shutdown, lease lost).
    STOPPED = "stopped"
    #: The job now waits for something outside ctnode until ``wait_seconds`` from now.
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What an operation reports after one attempt."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    wait_seconds: float = 0.0
    message: str | None = None


def outcome_of(
    exc: TransientError | PermanentError, *, result: dict[str, Any] | None = None
) -> AttemptResult:
    """The result of an attempt that ended with *exc* (the ladder in the module docstring),
    carrying the job's *result* so far."""
    permanent = isinstance(exc, PermanentError) or (
        isinstance(exc, AssociationRejected) and exc.permanent
    )
    outcome = Outcome.PERMANENT if permanent else Outcome.TRANSIENT
    return AttemptResult(outcome, status=exc.status, error=str(exc), result=result)


def outcome_of_status(meaning: StatusMeaning) -> Outcome:
    """The outcome of an attempt whose request ended with a status of this *meaning*."""
    return {
        StatusMeaning.SUCCESS: Outcome.DONE,
        StatusMeaning.WARNING: Outcome.DONE,
        StatusMeaning.TRANSIENT_FAILURE: Outcome.TRANSIENT,
        StatusMeaning.PERMANENT_FAILURE: Outcome.PERMANENT,
    }[meaning]


class StopReason(StrEnum):
    """Why an attempt was asked to stop."""

    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease lost"


class StopFlag:
    """Set from the event loop, read by the operation's thread between items."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: StopReason | None = None

    def set(self, reason: StopReason) -> None:
        """Ask the attempt to stop at the next boundary (the first reason wins)."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to *timeout* seconds unless stopped; True if stopped."""
        return self._event.wait(timeout)


class JobStore(Protocol):
    """What an operation needs from the queue repository (``queue.repository.JobRepository``):
    its job and items, and writes fenced by the lease (False: the lease was lost)."""

    def get(self, job_id: int) -> Job:
        """The job as it is now (its item counts included)."""

    def items(self, job_id: int, states: Iterable[ItemState] | None = None) -> list[ItemRow]:
        """The job's items, in order; only those in *states* if given."""

    def record_items(
        self,
        job_id: int,
        owner: str,
        outcomes: Sequence[ItemOutcome],
        *,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Write item outcomes (and progress)."""

    def record_arrivals(
        self,
        job_id: int,
        owner: str,
        items: Sequence[ItemUpsert],
        *,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Add or update items by SOP Instance UID (a move's arrivals), and progress."""

    def set_payload(self, job_id: int, owner: str, payload: dict[str, Any]) -> bool:
        """Replace the job's payload."""

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
        """Add an event to the job's trail."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """Everything an operation needs for one attempt."""

    job: Job
    peer: Peer
    #: The lease owner: every fenced write names it.
    owner: str
    repo: JobStore
    stop: StopFlag
    #: A logger bound to the job's log context.
    log: Any


class Operation(Protocol):
    """One kind of job (push, query, move, commit)."""

    def run(self, attempt: Attempt) -> AttemptResult:
        """Make one attempt (blocking; runs in a worker thread)."""
