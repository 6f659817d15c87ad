"""Storage commitment on the queue's side: the rounds a commit job asks in, and reading what they
decided. ``CommitmentRepository`` is the only writer of ``commit_transactions`` and of what a
round or a report changes on a commit job's items.

A commit job asks in *rounds* (``queue.commit_transactions``: one transaction, a new Transaction
UID, each). The transaction row and its Referenced SOP Sequence (the job items tagged with its
UID) are written in one database transaction *before* the N-ACTION is sent (``begin``); the
peer's acceptance sets the report's deadline (``mark_requested``); a deadline passed with no
report expires the round (``expire``). These writes are made for a running attempt and are
fenced on its lease like every other job write (``queue.rows``).

Reports, on time or late, are applied by ``queue.commit_reports`` (``apply_report``, not
fenced; the newest-question rule is in that module); who committed what is kept by
``queue.instance_commitments`` (``committed_by``). The names other code imports from here
(``Transaction``, ``TransactionState``, ``ReportOutcome``, ``ReportResult``) are re-exported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from ctnode.db.models import CommitTransaction, JobItem
from ctnode.db.models import Job as JobRow
from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import CommitmentReport, Sender
from ctnode.queue import commit_reports, instance_commitments
from ctnode.queue.commit_reports import ReportOutcome, ReportResult
from ctnode.queue.commit_transactions import AWAITING, Transaction, TransactionState
from ctnode.queue.jobs import ItemState, JobKind
from ctnode.queue.repository import JobRepository
from ctnode.queue.rows import append_event, chunks, fenced_update

__all__ = [
    "COMMITMENT_STATE",
    "CommitmentRepository",
    "InstanceState",
    "ReportOutcome",
    "ReportResult",
    "Transaction",
    "TransactionState",
]


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One instance of a commit job: committed, failed (with its reason) or pending."""

    sop_instance_uid: str | None
    state: str
    status: int | None
    error: str | None
    transaction_uid: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON form (``jobs show --json``)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "state": self.state,
            "status": st.hex_status(self.status),
            "error": self.error,
            "transaction_uid": self.transaction_uid,
        }


#: Item state -> commitment state shown to users.
COMMITMENT_STATE = {
    ItemState.SUCCEEDED.value: "committed",
    ItemState.WARNING.value: "committed",
    ItemState.FAILED.value: "failed",
    ItemState.PENDING.value: "pending",
}


class CommitmentRepository:
    """Commitment rounds, reports and instance commitments (see the module docstring)."""

    def __init__(self, jobs: JobRepository) -> None:
        self.jobs = jobs
        self.sessions = jobs.sessions
        self.postgres = jobs.postgres

    # ------------------------------------------------------------------ rounds (fenced)

    def begin(
        self,
        job_id: int,
        owner: str,
        *,
        transaction_uid: str,
        peer: str,
        peer_ae_title: str,
        item_ids: Sequence[int],
        payload: dict[str, Any],
    ) -> bool:
        """Persist a new round before its N-ACTION is sent; False if the lease was lost.

        Earlier transactions of the job still open or requested are superseded; the items are
        tagged with the new Transaction UID and are pending again (except those a late report
        committed since they were chosen); *payload* (which names the round) is stored.
        """
        with self.sessions() as session:
            now = self.jobs.now(session)
            if not fenced_update(session, job_id, owner, now, payload=payload):
                session.rollback()
                return False
            session.execute(
                update(CommitTransaction)
                .where(
                    CommitTransaction.job_id == job_id,
                    CommitTransaction.state.in_(AWAITING),
                )
                .values(state=TransactionState.SUPERSEDED.value)
            )
            session.add(
                CommitTransaction(
                    transaction_uid=transaction_uid,
                    job_id=job_id,
                    peer=peer,
                    peer_ae_title=peer_ae_title,
                    state=TransactionState.OPEN.value,
                    created_at=now,
                )
            )
            session.flush()
            for chunk in chunks(list(item_ids)):
                # A late report may have committed some of them since they were chosen.
                session.execute(
                    update(JobItem)
                    .where(
                        JobItem.job_id == job_id,
                        JobItem.id.in_(chunk),
                        JobItem.state.in_([ItemState.PENDING.value, ItemState.FAILED.value]),
                    )
                    .values(
                        transaction_uid=transaction_uid,
                        state=ItemState.PENDING.value,
                        status=None,
                        error=None,
                        updated_at=now,
                    )
                )
            append_event(
                session,
                job_id,
                now,
                "commit_transaction",
                message=f"{transaction_uid}: {len(item_ids)} instance(s)",
            )
            session.commit()
            return True

    def mark_requested(
        self, job_id: int, owner: str, transaction_uid: str, seconds: float
    ) -> Transaction | None:
        """The peer accepted the N-ACTION: the report is due within *seconds*. Fenced.

        Returns the transaction as it is now (``reported`` if the report already arrived), or
        None if the lease was lost.
        """
        with self.sessions() as session:
            now = self.jobs.now(session)
            if not fenced_update(
                session, job_id, owner, now, lease_expires_at=now + self.jobs.lease
            ):
                session.rollback()
                return None
            session.execute(
                update(CommitTransaction)
                .where(
                    CommitTransaction.transaction_uid == transaction_uid,
                    CommitTransaction.requested_at.is_(None),
                )
                .values(requested_at=now)
            )
            result = session.execute(
                update(CommitTransaction)
                .where(
                    CommitTransaction.transaction_uid == transaction_uid,
                    CommitTransaction.state == TransactionState.OPEN.value,
                )
                .values(
                    state=TransactionState.REQUESTED.value,
                    deadline=now + timedelta(seconds=seconds),
                )
            )
            row = session.get(CommitTransaction, transaction_uid)
            append_event(
                session,
                job_id,
                now,
                "commit_requested",
                message=f"{transaction_uid}: report due within {seconds:g} s"
                if result.rowcount == 1  # type: ignore[attr-defined]
                else f"{transaction_uid}: accepted (it is {row.state if row else 'gone'} already)",
            )
            session.commit()
            return Transaction.from_row(row) if row is not None else None

    def expire(self, job_id: int, owner: str, transaction_uid: str) -> bool:
        """Deadline passed with no report: ``requested`` -> ``expired``. Fenced.

        False if the lease was lost, the deadline has not passed, or the report won the race.
        """
        with self.sessions() as session:
            now = self.jobs.now(session)
            if not fenced_update(session, job_id, owner, now):
                session.rollback()
                return False
            result = session.execute(
                update(CommitTransaction)
                .where(
                    CommitTransaction.transaction_uid == transaction_uid,
                    CommitTransaction.state == TransactionState.REQUESTED.value,
                    CommitTransaction.deadline <= now,
                )
                .values(state=TransactionState.EXPIRED.value)
            )
            expired = bool(result.rowcount == 1)  # type: ignore[attr-defined]
            if expired:
                append_event(
                    session,
                    job_id,
                    now,
                    "commit_expired",
                    message=f"{transaction_uid}: no report before the deadline",
                )
            session.commit()
            return expired

    # ------------------------------------------------------------------ reports (not fenced)

    def apply_report(self, report: CommitmentReport, sender: Sender) -> ReportResult:
        """Match a report by Transaction UID and sender, and apply it
        (``queue.commit_reports.apply_report``).

        Only the job's items the transaction asked about can change; other instances in the
        report are returned in ``ignored``.
        """
        return commit_reports.apply_report(self.jobs, report, sender)

    # ------------------------------------------------------------------ reads

    def get(self, transaction_uid: str) -> Transaction | None:
        """A transaction by UID."""
        with self.sessions() as session:
            row = session.get(CommitTransaction, transaction_uid)
            return Transaction.from_row(row) if row is not None else None

    def transactions(self, job_id: int) -> list[Transaction]:
        """A job's transactions, oldest first."""
        with self.sessions() as session:
            return [
                Transaction.from_row(r)
                for r in session.scalars(
                    select(CommitTransaction)
                    .where(CommitTransaction.job_id == job_id)
                    .order_by(CommitTransaction.created_at, CommitTransaction.transaction_uid)
                )
            ]

    def instance_states(self, job_id: int) -> list[InstanceState]:
        """Each instance of a commit job with its commitment state, in submission order."""
        with self.sessions() as session:
            return [
                InstanceState(
                    r.sop_instance_uid,
                    COMMITMENT_STATE.get(r.state, r.state),
                    r.status,
                    r.error,
                    r.transaction_uid,
                )
                for r in session.scalars(
                    select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.seq)
                )
            ]

    def counts(self) -> dict[str, int]:
        """Commitment items by state across commit jobs, plus transactions that timed out
        (for the ``ctnode_commitments`` gauge and ``ctnode status``)."""
        out = {"pending": 0, "committed": 0, "failed": 0, "timed_out": 0}
        with self.sessions() as session:
            for state, count in session.execute(
                select(JobItem.state, func.count())
                .join(JobRow, JobRow.id == JobItem.job_id)
                .where(JobRow.kind == JobKind.COMMIT.value)
                .group_by(JobItem.state)
            ):
                key = COMMITMENT_STATE.get(state, state)
                out[key] = out.get(key, 0) + int(count)
            out["timed_out"] = int(
                session.scalar(
                    select(func.count())
                    .select_from(CommitTransaction)
                    .where(CommitTransaction.state == "expired")
                )
                or 0
            )
        return out

    def committed_by(self, peer: str, sop_instance_uids: Iterable[str]) -> set[str]:
        """Which of *sop_instance_uids* *peer* has committed."""
        with self.sessions() as session:
            return instance_commitments.committed_by(session, peer, sop_instance_uids)
