"""Incoming storage commitment transactions as values: their states, a transaction and its
items as read back, and the state a read derives from the report job (``effective_state``).
Written and read by ``commitment_scp.transactions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, case

from ctnode.commitment_scp.decide import Answer
from ctnode.db.models import IncomingCommitment, Job
from ctnode.dicom.commitment_messages import SopReference

#: Report job states that end it without the report; a transaction still ``pending`` then is
#: ``failed``.
ABANDONED_JOB_STATES = ("failed", "cancelled")
#: Report job states in which the report is still being sent (a retried job included).
LIVE_JOB_STATES = ("queued", "running", "waiting")


def effective_state() -> ColumnElement[str]:
    """The transaction's state derived from its report job (needs ``Job`` outer-joined on
    ``report_job_id``; see the module docstring)."""
    return case(
        (IncomingCommitment.state == "reported", IncomingCommitment.state),
        (Job.state.in_(ABANDONED_JOB_STATES), "failed"),
        (Job.state.in_(LIVE_JOB_STATES), "pending"),
        else_=IncomingCommitment.state,
    )


def with_report_job(query: Any) -> Any:
    """*query* joined with each transaction's report job (outer: a job may not exist yet)."""
    return query.outerjoin(Job, Job.id == IncomingCommitment.report_job_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class IncomingState(StrEnum):
    """Where an incoming transaction is."""

    #: Persisted and answered; its report is not yet answered by the requestor.
    PENDING = "pending"
    #: The requestor answered the N-EVENT-REPORT.
    REPORTED = "reported"
    #: Sending the report was given up (the report job ran out of attempts).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class IncomingTransaction:
    """An incoming transaction with its instance counts."""

    transaction_uid: str
    peer: str
    calling_ae: str
    peer_address: str
    mode: str
    upstream: tuple[str, ...]
    state: IncomingState
    received_at: datetime
    deadline: datetime | None
    decided_at: datetime | None
    reported_at: datetime | None
    event_type: int | None
    report_job_id: int | None
    report_attempts: int
    last_error: str | None
    instances: int = 0
    committed: int = 0
    failed: int = 0

    @classmethod
    def from_row(
        cls,
        row: IncomingCommitment,
        counts: dict[str, int],
        state: str | None = None,
        job_error: str | None = None,
    ) -> IncomingTransaction:
        """Build from a row and ``{item state: count}``; *state*: the effective state (None:
        the stored one), *job_error*: the report job's last error (shown for a ``failed``
        transaction that has none of its own)."""
        effective = IncomingState(state or row.state)
        return cls(
            row.transaction_uid,
            row.peer,
            row.calling_ae,
            row.peer_address,
            row.mode,
            tuple(row.upstream or ()),
            effective,
            row.received_at,
            row.deadline,
            row.decided_at,
            row.reported_at,
            row.event_type,
            row.report_job_id,
            row.report_attempts,
            row.last_error
            or (job_error if effective is IncomingState.FAILED and job_error else None),
            sum(counts.values()),
            counts.get(Answer.COMMITTED, 0),
            counts.get(Answer.FAILED, 0),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``ctnode commitments --json`` contract."""
        return {
            "transaction_uid": self.transaction_uid,
            "peer": self.peer,
            "calling_ae": self.calling_ae,
            "peer_address": self.peer_address,
            "mode": self.mode,
            "upstream": list(self.upstream),
            "state": self.state.value,
            "instances": self.instances,
            "committed": self.committed,
            "failed": self.failed,
            "pending": self.instances - self.committed - self.failed,
            "received_at": _iso(self.received_at),
            "deadline": _iso(self.deadline),
            "decided_at": _iso(self.decided_at),
            "reported_at": _iso(self.reported_at),
            "event_type": self.event_type,
            "report_job": self.report_job_id,
            "report_attempts": self.report_attempts,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class IncomingItem:
    """One requested instance and ctnode's answer so far."""

    reference: SopReference
    answer: Answer
    failure_reason: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON form (``commitments show --json``)."""
        return {
            "sop_class_uid": self.reference.sop_class_uid,
            "sop_instance_uid": self.reference.sop_instance_uid,
            "state": self.answer.value,
            "failure_reason": (
                f"0x{self.failure_reason:04X}" if self.failure_reason is not None else None
            ),
        }


class DuplicateTransaction(Exception):
    """The Transaction UID is already used by another peer's request."""
