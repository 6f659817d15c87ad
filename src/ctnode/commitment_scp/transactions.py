"""Incoming storage commitment transactions: the one writer of ``incoming_commitments`` and
``incoming_commitment_items`` (and a reader of the index for what ctnode holds).

A transaction is persisted, with every requested instance, before the N-ACTION is answered;
its state is ``pending`` until the requestor answered the report (N-EVENT-REPORT-RSP), then
``reported``; ``failed`` when the report job gave up (out of attempts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ctnode.commitment_scp.decide import Answer, Held, Verdict
from ctnode.db.models import IncomingCommitment, IncomingCommitmentItem, Instance
from ctnode.db.types import utcnow
from ctnode.dicom.commitment_messages import CommitmentAction, SopReference

T = TypeVar("T")
_CHUNK = 500


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


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
    def from_row(cls, row: IncomingCommitment, counts: dict[str, int]) -> IncomingTransaction:
        """Build from a row and ``{item state: count}``."""
        return cls(
            row.transaction_uid,
            row.peer,
            row.calling_ae,
            row.peer_address,
            row.mode,
            tuple(row.upstream or ()),
            IncomingState(row.state),
            row.received_at,
            row.deadline,
            row.decided_at,
            row.reported_at,
            row.event_type,
            row.report_job_id,
            row.report_attempts,
            row.last_error,
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


class IncomingReader:
    """Reads of incoming transactions and of what the index holds of their instances (the
    ``ctnode commitments`` commands open only this)."""

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self.sessions = sessions

    def _counts(self, session: Session, uids: Sequence[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for chunk in _chunks(list(uids)):
            for uid, state, count in session.execute(
                select(
                    IncomingCommitmentItem.transaction_uid,
                    IncomingCommitmentItem.state,
                    func.count(),
                )
                .where(IncomingCommitmentItem.transaction_uid.in_(chunk))
                .group_by(IncomingCommitmentItem.transaction_uid, IncomingCommitmentItem.state)
            ):
                out.setdefault(uid, {})[state] = int(count)
        return out

    def get(self, transaction_uid: str) -> IncomingTransaction | None:
        """The transaction, or None."""
        with self.sessions() as session:
            row = session.get(IncomingCommitment, transaction_uid)
            if row is None:
                return None
            counts = self._counts(session, [transaction_uid])
            return IncomingTransaction.from_row(row, counts.get(transaction_uid, {}))

    def transactions(
        self, *, peer: str | None = None, state: str | None = None, limit: int = 200
    ) -> list[IncomingTransaction]:
        """Transactions, newest first."""
        query = select(IncomingCommitment)
        if peer is not None:
            query = query.where(IncomingCommitment.peer == peer)
        if state is not None:
            query = query.where(IncomingCommitment.state == state)
        query = query.order_by(IncomingCommitment.received_at.desc()).limit(limit)
        with self.sessions() as session:
            rows = list(session.scalars(query))
            counts = self._counts(session, [r.transaction_uid for r in rows])
            return [
                IncomingTransaction.from_row(r, counts.get(r.transaction_uid, {})) for r in rows
            ]

    def items(self, transaction_uid: str) -> list[IncomingItem]:
        """The requested instances, in request order."""
        with self.sessions() as session:
            return [
                IncomingItem(
                    SopReference(r.sop_class_uid, r.sop_instance_uid),
                    Answer(r.state),
                    r.failure_reason,
                )
                for r in session.scalars(
                    select(IncomingCommitmentItem)
                    .where(IncomingCommitmentItem.transaction_uid == transaction_uid)
                    .order_by(IncomingCommitmentItem.seq)
                )
            ]

    def pending_without_job(self) -> list[str]:
        """Pending transactions whose report job was never recorded (a crash in between)."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(IncomingCommitment.transaction_uid).where(
                        IncomingCommitment.state == IncomingState.PENDING.value,
                        IncomingCommitment.report_job_id.is_(None),
                    )
                )
            )

    def counts(self) -> dict[str, int]:
        """Incoming transactions by state (metrics)."""
        out = {state.value: 0 for state in IncomingState}
        with self.sessions() as session:
            for state, count in session.execute(
                select(IncomingCommitment.state, func.count()).group_by(IncomingCommitment.state)
            ):
                out[state] = int(count)
        return out

    def held(self, sop_instance_uids: Iterable[str]) -> dict[str, Held]:
        """What the index says about these instances (absent: never received)."""
        uids = list(dict.fromkeys(sop_instance_uids))
        out: dict[str, Held] = {}
        with self.sessions() as session:
            for chunk in _chunks(uids):
                for uid, sop_class, deleted_at in session.execute(
                    select(
                        Instance.sop_instance_uid, Instance.sop_class_uid, Instance.deleted_at
                    ).where(Instance.sop_instance_uid.in_(chunk))
                ):
                    out[uid] = Held(sop_class, deleted_at is None)
        return out


class IncomingCommitments(IncomingReader):
    """Reads and writes incoming transactions (see the module docstring)."""

    def __init__(
        self, sessions: Callable[[], Session], clock: Callable[[], datetime] = utcnow
    ) -> None:
        super().__init__(sessions)
        self.clock = clock

    # ------------------------------------------------------------------ writes

    def receive(
        self,
        action: CommitmentAction,
        *,
        peer: str,
        calling_ae: str,
        peer_address: str,
        mode: str,
        upstream: Sequence[str],
        report_within: float,
    ) -> tuple[IncomingTransaction, bool]:
        """Persist a request (one database transaction); returns (transaction, created).

        A repeat of a Transaction UID by the same peer returns the stored one (created False);
        by another peer it raises DuplicateTransaction.
        """
        existing = self.get(action.transaction_uid)
        if existing is None:
            now = self.clock()
            try:
                with self.sessions() as session:
                    session.add(
                        IncomingCommitment(
                            transaction_uid=action.transaction_uid,
                            peer=peer,
                            calling_ae=calling_ae,
                            peer_address=peer_address,
                            mode=mode,
                            upstream=list(upstream),
                            state=IncomingState.PENDING.value,
                            received_at=now,
                            deadline=(
                                now + timedelta(seconds=report_within)
                                if mode == "upstream"
                                else None
                            ),
                            report_attempts=0,
                        )
                    )
                    session.flush()
                    rows = [
                        {
                            "transaction_uid": action.transaction_uid,
                            "seq": seq,
                            "sop_class_uid": ref.sop_class_uid,
                            "sop_instance_uid": ref.sop_instance_uid,
                            "state": Answer.PENDING.value,
                        }
                        for seq, ref in enumerate(action.references)
                    ]
                    for chunk in _chunks(rows):
                        session.execute(insert(IncomingCommitmentItem), list(chunk))
                    session.commit()
                stored = self.get(action.transaction_uid)
                assert stored is not None
                return stored, True
            except IntegrityError:
                existing = self.get(action.transaction_uid)
                if existing is None:
                    raise
        if existing.peer != peer:
            raise DuplicateTransaction(
                f"Transaction UID {action.transaction_uid} is already used by peer "
                f"{existing.peer!r}"
            )
        return existing, False

    def set_report_job(self, transaction_uid: str, job_id: int) -> None:
        """Remember the job that sends this transaction's report."""
        self._update(transaction_uid, report_job_id=job_id)

    def record(self, transaction_uid: str, verdicts: Sequence[Verdict]) -> bool:
        """Write every instance's answer; once none is pending, the transaction is decided
        (its event type set). Returns True when decided."""
        decided = all(v.answer is not Answer.PENDING for v in verdicts)
        with self.sessions() as session:
            for verdict in verdicts:
                session.execute(
                    update(IncomingCommitmentItem)
                    .where(
                        IncomingCommitmentItem.transaction_uid == transaction_uid,
                        IncomingCommitmentItem.sop_instance_uid
                        == verdict.reference.sop_instance_uid,
                    )
                    .values(state=verdict.answer.value, failure_reason=verdict.failure_reason)
                )
            if decided:
                failures = any(v.answer is Answer.FAILED for v in verdicts)
                session.execute(
                    update(IncomingCommitment)
                    .where(
                        IncomingCommitment.transaction_uid == transaction_uid,
                        IncomingCommitment.decided_at.is_(None),
                    )
                    .values(decided_at=self.clock(), event_type=2 if failures else 1)
                )
            session.commit()
        return decided

    def attempt_failed(self, transaction_uid: str, error: str) -> None:
        """A report attempt failed (the requestor unreachable, refused, ...)."""
        with self.sessions() as session:
            session.execute(
                update(IncomingCommitment)
                .where(IncomingCommitment.transaction_uid == transaction_uid)
                .values(report_attempts=IncomingCommitment.report_attempts + 1, last_error=error)
            )
            session.commit()

    def reported(self, transaction_uid: str, event_type: int) -> bool:
        """The requestor answered the report: ``reported`` (False if it already was)."""
        with self.sessions() as session:
            result = session.execute(
                update(IncomingCommitment)
                .where(
                    IncomingCommitment.transaction_uid == transaction_uid,
                    IncomingCommitment.state != IncomingState.REPORTED.value,
                )
                .values(
                    state=IncomingState.REPORTED.value,
                    reported_at=self.clock(),
                    event_type=event_type,
                    report_attempts=IncomingCommitment.report_attempts + 1,
                    last_error=None,
                )
            )
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def gave_up(self, transaction_uid: str, error: str) -> None:
        """The report job ran out of attempts: ``failed`` (unless already reported)."""
        with self.sessions() as session:
            session.execute(
                update(IncomingCommitment)
                .where(
                    IncomingCommitment.transaction_uid == transaction_uid,
                    IncomingCommitment.state == IncomingState.PENDING.value,
                )
                .values(state=IncomingState.FAILED.value, last_error=error)
            )
            session.commit()

    def _update(self, transaction_uid: str, **values: Any) -> None:
        with self.sessions() as session:
            session.execute(
                update(IncomingCommitment)
                .where(IncomingCommitment.transaction_uid == transaction_uid)
                .values(**values)
            )
            session.commit()
