"""What a storage commitment transaction is: its states, and its ``commit_transactions`` row as
a value.

A commit job asks in *rounds*: each round is one transaction (a new Transaction UID). States:

``open``
    persisted, N-ACTION not confirmed yet (a report for it is still accepted: the peer may have
    received the N-ACTION even if its response was lost);
``requested``
    the peer accepted the N-ACTION; a report is due before ``deadline``;
``reported``
    the report arrived and was applied;
``expired``
    the deadline passed without a report;
``superseded``
    no longer awaited: a newer round replaced it, or a late report of an earlier round already
    committed every instance of the job it still asked about.

Rounds are written by ``queue.commit_rounds``, reports applied by ``queue.commit_reports``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ctnode.db.models import CommitTransaction


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with ``Z`` for UTC (None stays None)."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class TransactionState(StrEnum):
    """Where a commitment transaction is (see the module docstring)."""

    OPEN = "open"
    REQUESTED = "requested"
    REPORTED = "reported"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


#: States in which a transaction is awaited: a report for it is on time and applies in full.
AWAITING = (TransactionState.OPEN.value, TransactionState.REQUESTED.value)


@dataclass(frozen=True, slots=True)
class Transaction:
    """A ``commit_transactions`` row as a value."""

    transaction_uid: str
    job_id: int
    peer: str
    peer_ae_title: str
    state: TransactionState
    created_at: datetime
    requested_at: datetime | None
    deadline: datetime | None
    reported_at: datetime | None
    event_type: int | None

    @classmethod
    def from_row(cls, row: CommitTransaction) -> Transaction:
        """From a model row."""
        return cls(
            row.transaction_uid,
            row.job_id,
            row.peer,
            row.peer_ae_title,
            TransactionState(row.state),
            row.created_at,
            row.requested_at,
            row.deadline,
            row.reported_at,
            row.event_type,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form (``jobs show --json``)."""
        return {
            "transaction_uid": self.transaction_uid,
            "state": self.state.value,
            "created_at": iso(self.created_at),
            "requested_at": iso(self.requested_at),
            "deadline": iso(self.deadline),
            "reported_at": iso(self.reported_at),
            "event_type": self.event_type,
        }
