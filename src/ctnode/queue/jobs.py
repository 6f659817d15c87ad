"""Job values: kinds, states, the frozen ``Job`` and its JSON contract. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ctnode.dicom.status import hex_status


class JobKind(StrEnum):
    """What a job does."""

    #: C-STORE instances to a peer.
    PUSH = "push"
    #: Study Root C-FIND.
    QUERY = "query"
    #: Study Root C-MOVE.
    MOVE = "move"
    #: Storage commitment (N-ACTION, then wait for the N-EVENT-REPORT).
    COMMIT = "commit"
    #: The N-EVENT-REPORT answering a peer's storage commitment request (ctnode as SCP).
    COMMIT_REPORT = "commit_report"


class JobState(StrEnum):
    """Where a job is in its life."""

    #: Waiting for a worker (possibly until ``not_before``, after a failed attempt).
    QUEUED = "queued"
    #: A worker holds its lease and is making an attempt.
    RUNNING = "running"
    #: Waiting for something outside ctnode (a commitment report) until its deadline.
    WAITING = "waiting"
    #: Done: every item delivered (warnings included).
    SUCCEEDED = "succeeded"
    #: Given up: a permanent failure, or out of attempts. ``last_error`` says why.
    FAILED = "failed"
    #: Cancelled by a user.
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True for succeeded, failed and cancelled."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ItemState(StrEnum):
    """Outcome of one item (instance) of a job."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    #: Delivered with a warning status (0xB000, 0xB006, 0xB007).
    WARNING = "warning"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ItemCounts:
    """How many items are in each state."""

    total: int = 0
    succeeded: int = 0
    warning: int = 0
    failed: int = 0
    pending: int = 0

    @classmethod
    def from_mapping(cls, counts: dict[str, int]) -> ItemCounts:
        """Build from ``{state: count}``."""
        succeeded = counts.get(ItemState.SUCCEEDED, 0)
        warning = counts.get(ItemState.WARNING, 0)
        failed = counts.get(ItemState.FAILED, 0)
        pending = counts.get(ItemState.PENDING, 0)
        return cls(succeeded + warning + failed + pending, succeeded, warning, failed, pending)

    @property
    def delivered(self) -> int:
        """Succeeded plus warning."""
        return self.succeeded + self.warning

    def to_json(self) -> dict[str, int]:
        """The ``items`` object of the job JSON."""
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "warning": self.warning,
            "failed": self.failed,
            "pending": self.pending,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@dataclass(frozen=True, slots=True)
class Job:
    """A job row as an immutable value."""

    id: int
    kind: JobKind
    peer: str
    state: JobState
    priority: int
    not_before: datetime
    attempts: int
    max_attempts: int
    retry_policy: dict[str, Any]
    lease_owner: str | None
    lease_expires_at: datetime | None
    node_name: str | None
    cancel_requested: bool
    last_status: int | None
    last_error: str | None
    idempotency_key: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    progress: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    items: ItemCounts = field(default_factory=ItemCounts)

    @classmethod
    def from_row(cls, row: Any, items: ItemCounts | None = None) -> Job:
        """Build from a ``db.models.Job`` row."""
        return cls(
            id=row.id,
            kind=JobKind(row.kind),
            peer=row.peer,
            state=JobState(row.state),
            priority=row.priority,
            not_before=row.not_before,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            retry_policy=dict(row.retry_policy or {}),
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            node_name=row.node_name,
            cancel_requested=bool(row.cancel_requested),
            last_status=row.last_status,
            last_error=row.last_error,
            idempotency_key=row.idempotency_key,
            payload=dict(row.payload or {}),
            result=dict(row.result) if row.result is not None else None,
            progress=dict(row.progress) if row.progress is not None else None,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            updated_at=row.updated_at,
            items=items or ItemCounts(),
        )

    def log_context(self) -> dict[str, Any]:
        """Fields identifying the job in log lines."""
        return {
            "job": self.id,
            "kind": self.kind.value,
            "peer": self.peer,
            "attempt": self.attempts,
        }

    def to_json(self) -> dict[str, Any]:
        """The job JSON contract of ``ctnode jobs show --json``."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "peer": self.peer,
            "state": self.state.value,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "not_before": _iso(self.not_before),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "last_status": hex_status(self.last_status),
            "last_error": self.last_error,
            "items": self.items.to_json(),
            "result": self.result,
            "progress": self.progress,
            "cancel_requested": self.cancel_requested,
            "node": self.node_name,
        }


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to create with a job."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class ItemRow:
    """An item as an operation sees it."""

    id: int
    seq: int
    state: ItemState
    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None
    path: str | None
    status: int | None
    error: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What an attempt found out about one item."""

    item_id: int
    state: ItemState
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One line of a job's event trail."""

    at: datetime
    event: str
    attempt: int | None
    node: str | None
    status: int | None
    message: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "at": _iso(self.at),
            "event": self.event,
            "attempt": self.attempt,
            "node": self.node,
            "status": hex_status(self.status),
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ItemUpsert:
    """An item keyed by SOP Instance UID, created or updated (C-MOVE arrivals and failures)."""

    sop_instance_uid: str
    state: ItemState
    sop_class_uid: str | None = None
    status: int | None = None
    error: str | None = None
