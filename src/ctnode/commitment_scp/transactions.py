"""Incoming storage commitment transactions: the one writer of ``incoming_commitments`` and
``incoming_commitment_items`` (and a reader of the index for what ctnode holds).

A transaction is persisted, with every requested instance, before the N-ACTION is answered;
its state is ``pending`` until the requestor answered the report (N-EVENT-REPORT-RSP), then
``reported``; ``failed`` when the report job gave up.

Reads derive ``failed`` from the report job's final state (``effective_state``): a transaction
not ``reported`` whose report job ended ``failed`` or ``cancelled`` (out of attempts, a
permanent outcome, a crash, a cancel — however the worker ended it) reads as ``failed``, one
whose job is queued, running or waiting again (``ctnode jobs retry``) reads as ``pending``.
``record_abandoned`` (the daemon's periodic recovery) also stores that ``failed`` state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ctnode.commitment_scp.decide import Answer, Held, Verdict
from ctnode.commitment_scp.incoming import (
    ABANDONED_JOB_STATES,
    DuplicateTransaction,
    IncomingItem,
    IncomingState,
    IncomingTransaction,
    effective_state,
    with_report_job,
)
from ctnode.db.models import IncomingCommitment, IncomingCommitmentItem, Instance, Job
from ctnode.db.types import utcnow
from ctnode.dicom.commitment_messages import CommitmentAction, SopReference

__all__ = [
    "DuplicateTransaction",
    "IncomingCommitments",
    "IncomingItem",
    "IncomingReader",
    "IncomingState",
    "IncomingTransaction",
    "effective_state",
]

T = TypeVar("T")
_CHUNK = 500


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


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
        """The transaction (its effective state), or None."""
        query = with_report_job(
            select(IncomingCommitment, effective_state(), Job.last_error).where(
                IncomingCommitment.transaction_uid == transaction_uid
            )
        )
        with self.sessions() as session:
            found = session.execute(query).first()
            if found is None:
                return None
            row, state, job_error = found
            counts = self._counts(session, [transaction_uid])
            return IncomingTransaction.from_row(
                row, counts.get(transaction_uid, {}), state, job_error
            )

    def transactions(
        self, *, peer: str | None = None, state: str | None = None, limit: int = 200
    ) -> list[IncomingTransaction]:
        """Transactions, newest first (*state*: the effective state)."""
        effective = effective_state()
        query = with_report_job(select(IncomingCommitment, effective, Job.last_error))
        if peer is not None:
            query = query.where(IncomingCommitment.peer == peer)
        if state is not None:
            query = query.where(effective == state)
        query = query.order_by(IncomingCommitment.received_at.desc()).limit(limit)
        with self.sessions() as session:
            rows = list(session.execute(query))
            counts = self._counts(session, [r.transaction_uid for r, _, _ in rows])
            return [
                IncomingTransaction.from_row(r, counts.get(r.transaction_uid, {}), st, error)
                for r, st, error in rows
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

    def pending_without_job(self, received_before: datetime | None = None) -> list[str]:
        """Pending transactions whose report job was never recorded (a crash in between, or
        the queueing failed); *received_before*: only those received before then (not one
        whose N-ACTION is being answered right now)."""
        query = select(IncomingCommitment.transaction_uid).where(
            IncomingCommitment.state == IncomingState.PENDING.value,
            IncomingCommitment.report_job_id.is_(None),
        )
        if received_before is not None:
            query = query.where(IncomingCommitment.received_at < received_before)
        with self.sessions() as session:
            return list(session.scalars(query))

    def counts(self) -> dict[str, int]:
        """Incoming transactions by (effective) state (metrics)."""
        out = {state.value: 0 for state in IncomingState}
        effective = effective_state()
        with self.sessions() as session:
            for state, count in session.execute(
                with_report_job(select(effective, func.count())).group_by(effective)
            ):
                out[state] = int(count)
        return out

    def held(
        self, sop_instance_uids: Iterable[str], *, node_name: str | None = None
    ) -> dict[str, Held]:
        """What the index says about these instances (absent: never received); *node_name*:
        only what that node's store holds (storage not shared between nodes)."""
        uids = list(dict.fromkeys(sop_instance_uids))
        out: dict[str, Held] = {}
        with self.sessions() as session:
            for chunk in _chunks(uids):
                query = select(
                    Instance.sop_instance_uid, Instance.sop_class_uid, Instance.deleted_at
                ).where(Instance.sop_instance_uid.in_(chunk))
                if node_name is not None:
                    query = query.where(Instance.node_name == node_name)
                for uid, sop_class, deleted_at in session.execute(query):
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
        (its event type set). Returns True when decided.

        Only the items whose answer changed are written, in one batched UPDATE by primary key
        (an upstream transaction is looked at again and again, mostly unchanged)."""
        decided = all(v.answer is not Answer.PENDING for v in verdicts)
        wanted = {
            (v.reference.sop_class_uid, v.reference.sop_instance_uid): (
                v.answer.value,
                v.failure_reason,
            )
            for v in verdicts
        }
        with self.sessions() as session:
            changed = []
            for item_id, sop_class, sop_instance, state, reason in session.execute(
                select(
                    IncomingCommitmentItem.id,
                    IncomingCommitmentItem.sop_class_uid,
                    IncomingCommitmentItem.sop_instance_uid,
                    IncomingCommitmentItem.state,
                    IncomingCommitmentItem.failure_reason,
                ).where(IncomingCommitmentItem.transaction_uid == transaction_uid)
            ):
                new = wanted.get((sop_class, sop_instance))
                if new is not None and new != (state, reason):
                    changed.append({"id": item_id, "state": new[0], "failure_reason": new[1]})
            for chunk in _chunks(changed):
                session.execute(update(IncomingCommitmentItem), list(chunk))
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

    def record_abandoned(self) -> int:
        """Store ``failed`` for every ``pending`` transaction whose report job ended without
        the report (``failed``/``cancelled``: a permanent outcome, a crash, out of attempts as
        the worker decided, a cancel); returns how many. Reads already show them failed."""
        job = select(Job.id).where(
            Job.id == IncomingCommitment.report_job_id, Job.state.in_(ABANDONED_JOB_STATES)
        )
        job_error = (
            select(Job.last_error).where(Job.id == IncomingCommitment.report_job_id)
        ).scalar_subquery()
        with self.sessions() as session:
            result = session.execute(
                update(IncomingCommitment)
                .where(
                    and_(
                        IncomingCommitment.state == IncomingState.PENDING.value,
                        IncomingCommitment.report_job_id.is_not(None),
                        job.exists(),
                    )
                )
                .values(
                    state=IncomingState.FAILED.value,
                    last_error=func.coalesce(
                        IncomingCommitment.last_error, job_error, "the report job ended"
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            session.commit()
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _update(self, transaction_uid: str, **values: Any) -> None:
        with self.sessions() as session:
            session.execute(
                update(IncomingCommitment)
                .where(IncomingCommitment.transaction_uid == transaction_uid)
                .values(**values)
            )
            session.commit()
