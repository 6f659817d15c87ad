"""The commitment section of the job repository: the only writer of ``commit_transactions`` and
``instance_commitments``, and of what a commitment report changes on a commit job's items.

A commit job asks in *rounds*: each round is one transaction (a new Transaction UID). The
transaction row and its Referenced SOP Sequence (the job items tagged with its UID) are written
in one database transaction *before* the N-ACTION is sent. States of a transaction:

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

A report is *late* when its transaction is no longer awaited (``expired`` or ``superseded``,
e.g. the N-ACTION reached the peer but its response was lost in a crash and the restarted node
asked again). A late report from the right peer is still the peer's word on those instances and
is applied unless the job has finished, under one rule per instance: **the answer to the newest
question asked about an instance wins, and an older transaction can only add proof**. An item
is tagged with the transaction that last asked about it; a report's verdict on an item tagged
with its own transaction applies in full (committed, or failed with its reason, even over an
earlier commitment); on an item a newer transaction has asked about since, only "committed"
applies, and only while that item is still pending (a failure from an older round never
downgrades anything: the instance may have been pushed again since). If a late report leaves no
item of the job pending, the rounds still awaited are superseded and the job is woken, to
conclude as after an on-time report. A report for a finished job changes nothing but the
transaction's ``reported_at`` and the job's event trail. A repeat of a report already processed
(``reported_at`` set) changes nothing.

Writes made for a running attempt are fenced on its lease like every other job write. Applying a
report is not (the job is usually waiting, with no lease): it is matched by Transaction UID and
sender and serialised on the job and transaction rows (``FOR UPDATE``, in the order the fenced
writes take them, on PostgreSQL; SQLite has one writer at a time). Item changes, instance
commitments, the transaction's state and the wake of the waiting job are one database
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ctnode.db.models import CommitTransaction, InstanceCommitment, JobItem
from ctnode.db.models import Job as JobRow
from ctnode.dicom import status as st
from ctnode.dicom.commitment import CommitmentReport, Sender, sender_problem
from ctnode.queue.jobs import ItemState, JobKind, JobState
from ctnode.queue.repository import JobRepository

_CHUNK = 500
T = TypeVar("T")


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class TransactionState(StrEnum):
    """Where a commitment transaction is (see the module docstring)."""

    OPEN = "open"
    REQUESTED = "requested"
    REPORTED = "reported"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


#: States in which a report is applied in full (committed and failed instances).
_AWAITING = (TransactionState.OPEN.value, TransactionState.REQUESTED.value)


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
            "created_at": _iso(self.created_at),
            "requested_at": _iso(self.requested_at),
            "deadline": _iso(self.deadline),
            "reported_at": _iso(self.reported_at),
            "event_type": self.event_type,
        }


class ReportOutcome(StrEnum):
    """What applying a report did."""

    #: The awaited report: items and instance commitments updated, the job woken.
    APPLIED = "applied"
    #: A report for an expired or superseded transaction of an unfinished job: applied under
    #: the newest-question rule (module docstring); the job is woken if nothing is left pending.
    LATE_APPLIED = "late_applied"
    #: A report for a transaction of a job that has finished: recorded, results not applied.
    JOB_FINISHED = "job_finished"
    #: The transaction's report was already processed: nothing changed.
    DUPLICATE = "duplicate"
    #: No such transaction, or not from the peer that was asked: nothing changed (0x0110).
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ReportResult:
    """The answer to one report and what it changed."""

    outcome: ReportOutcome
    status: int
    reason: str | None = None
    transaction: Transaction | None = None
    #: SOP Instance UIDs recorded as committed by this report.
    committed: tuple[str, ...] = ()
    failed: int = 0
    #: SOP Instance UIDs in the report that were not in the transaction.
    ignored: tuple[str, ...] = field(default_factory=tuple)
    woken: bool = False


@dataclass(frozen=True, slots=True)
class _Item:
    """A job item a report names: its id, state and the transaction that last asked about it."""

    item_id: int
    sop_instance_uid: str
    state: str
    transaction_uid: str | None


@dataclass(frozen=True, slots=True)
class _Verdicts:
    """What a report changes: items to commit, items to fail (with the Failure Reason), and
    the SOP Instance UIDs it names that it has no say on."""

    committed: dict[str, list[int]]
    failed: dict[str, tuple[int, list[int]]]
    ignored: list[str]
    #: Instances whose verdict was not applied because a newer round asked about them since.
    outdated: int


def _verdicts(
    report: CommitmentReport,
    transaction_uid: str,
    items: dict[str, list[_Item]],
    newer: set[str],
) -> _Verdicts:
    """Apply the newest-question rule (module docstring) to a report.

    *items*: the job's items named in the report, by SOP Instance UID; *newer*: the job's
    transactions created after the report's. An instance listed both as committed and failed
    counts as failed. Instances the transaction never asked about are ignored.
    """
    failed_reasons = {bad.sop_instance_uid: bad.failure_reason for bad in report.failed}
    committed: dict[str, list[int]] = {}
    failed: dict[str, tuple[int, list[int]]] = {}
    ignored: list[str] = []
    outdated = 0
    named = list(dict.fromkeys([*failed_reasons, *(r.sop_instance_uid for r in report.committed)]))
    for uid in named:
        own = [i for i in items.get(uid, []) if i.transaction_uid == transaction_uid]
        later = [i for i in items.get(uid, []) if i.transaction_uid in newer]
        if not own and not later:
            ignored.append(uid)
            continue
        if uid in failed_reasons:
            if own:
                failed[uid] = (failed_reasons[uid], [i.item_id for i in own])
            else:
                outdated += 1
            continue
        upgradable = [i.item_id for i in later if i.state == ItemState.PENDING.value]
        if any(i.state == ItemState.FAILED.value for i in later):
            outdated += 1
        if own or upgradable:
            committed[uid] = [i.item_id for i in own] + upgradable
    return _Verdicts(committed, failed, ignored, outdated)


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
    """Commitment transactions and instance commitments (see the module docstring)."""

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
            now = self.jobs._now(session)
            if not self.jobs._fenced(session, job_id, owner, now, payload=payload):
                session.rollback()
                return False
            session.execute(
                update(CommitTransaction)
                .where(
                    CommitTransaction.job_id == job_id,
                    CommitTransaction.state.in_(_AWAITING),
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
            for chunk in _chunks(list(item_ids)):
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
            self.jobs._event(
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
            now = self.jobs._now(session)
            if not self.jobs._fenced(
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
            self.jobs._event(
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
            now = self.jobs._now(session)
            if not self.jobs._fenced(session, job_id, owner, now):
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
                self.jobs._event(
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
        """Match a report by Transaction UID and sender, and apply it (see the module docstring).

        Only the job's items the transaction asked about can change; other instances in the
        report are returned in ``ignored``.
        """
        uid = report.transaction_uid
        with self.sessions() as session:
            now = self.jobs._now(session)
            row = session.get(CommitTransaction, uid)
            if row is not None and self.postgres:
                # Same lock order as the fenced writes of a running round: the job row, then
                # the transaction row (no deadlock with a worker starting the next round).
                session.execute(select(JobRow.id).where(JobRow.id == row.job_id).with_for_update())
                session.refresh(row, with_for_update=True)
            if row is None:
                session.rollback()
                return ReportResult(
                    ReportOutcome.REFUSED,
                    st.PROCESSING_FAILURE,
                    f"unknown Transaction UID {uid} (from {sender.label()})",
                )
            problem = sender_problem(row.peer, row.peer_ae_title, sender)
            if problem is not None:
                session.rollback()
                return ReportResult(
                    ReportOutcome.REFUSED,
                    st.PROCESSING_FAILURE,
                    f"report for transaction {uid} refused: {problem}",
                    Transaction.from_row(row),
                )
            if row.reported_at is not None:
                session.rollback()
                return ReportResult(
                    ReportOutcome.DUPLICATE,
                    st.SUCCESS,
                    f"transaction {uid} was already reported at {_iso(row.reported_at)}",
                    Transaction.from_row(row),
                )
            job = session.get(JobRow, row.job_id)
            job_state = JobState(job.state) if job is not None else JobState.CANCELLED
            if job_state.final:
                return self._after_finish(session, row, report, job_state, now)
            return self._apply(session, row, report, now)

    def _after_finish(
        self,
        session: Session,
        row: CommitTransaction,
        report: CommitmentReport,
        job_state: JobState,
        now: datetime,
    ) -> ReportResult:
        """A report for a transaction of a finished job: noted, its results not applied."""
        reason = (
            f"job {row.job_id} already {job_state.value}: results of transaction "
            f"{row.transaction_uid} not applied (submit a new commit job to ask again)"
        )
        row.reported_at = now
        row.event_type = report.event_type
        self.jobs._event(
            session,
            row.job_id,
            now,
            "commit_report_after_finish",
            message=f"{row.transaction_uid}: event type {report.event_type}, "
            f"{len(report.committed)} committed, {len(report.failed)} failed in the report; "
            f"not applied: the job is already {job_state.value}",
        )
        session.commit()
        return ReportResult(
            ReportOutcome.JOB_FINISHED, st.SUCCESS, reason, Transaction.from_row(row)
        )

    def _apply(
        self, session: Session, row: CommitTransaction, report: CommitmentReport, now: datetime
    ) -> ReportResult:
        """Apply a report to an unfinished job under the newest-question rule."""
        uid = row.transaction_uid
        on_time = row.state in _AWAITING
        newer = set(
            session.scalars(
                select(CommitTransaction.transaction_uid).where(
                    CommitTransaction.job_id == row.job_id,
                    CommitTransaction.created_at > row.created_at,
                )
            )
        )
        verdicts = _verdicts(report, uid, self._named_items(session, row.job_id, report), newer)
        self._mark_committed(session, row, list(verdicts.committed), verdicts.committed, now)
        self._mark_failed(session, row, verdicts.failed, now)
        row.reported_at = now
        row.event_type = report.event_type
        if on_time:
            row.state = TransactionState.REPORTED.value
        counts = (
            f"event type {report.event_type}, {len(verdicts.committed)} committed, "
            f"{len(verdicts.failed)} failed"
            + (f", {verdicts.outdated} asked again since (kept)" if verdicts.outdated else "")
            + (
                f", {len(verdicts.ignored)} not in the transaction (ignored)"
                if verdicts.ignored
                else ""
            )
        )
        self.jobs._event(
            session,
            row.job_id,
            now,
            "commit_reported" if on_time else "commit_late_report_applied",
            message=f"{uid}: {counts}" + ("" if on_time else f" (transaction was {row.state})"),
        )
        woken = False
        if on_time:
            woken = self.jobs.wake_in(
                session, row.job_id, now, f"commitment report for {uid} arrived"
            )
        elif (verdicts.committed or verdicts.failed) and not self._pending(session, row.job_id):
            woken = self._conclude_late(session, row, now)
        session.commit()
        return ReportResult(
            ReportOutcome.APPLIED if on_time else ReportOutcome.LATE_APPLIED,
            st.SUCCESS,
            None,
            Transaction.from_row(row),
            tuple(verdicts.committed),
            len(verdicts.failed),
            tuple(verdicts.ignored),
            woken,
        )

    @staticmethod
    def _named_items(
        session: Session, job_id: int, report: CommitmentReport
    ) -> dict[str, list[_Item]]:
        """The job's items the report names, by SOP Instance UID."""
        named = list(
            dict.fromkeys(
                [r.sop_instance_uid for r in report.committed]
                + [r.sop_instance_uid for r in report.failed]
            )
        )
        items: dict[str, list[_Item]] = {}
        for chunk in _chunks(named):
            for item_id, sop_instance_uid, state, tagged in session.execute(
                select(
                    JobItem.id, JobItem.sop_instance_uid, JobItem.state, JobItem.transaction_uid
                ).where(JobItem.job_id == job_id, JobItem.sop_instance_uid.in_(chunk))
            ):
                if sop_instance_uid is not None:
                    items.setdefault(sop_instance_uid, []).append(
                        _Item(item_id, sop_instance_uid, state, tagged)
                    )
        return items

    @staticmethod
    def _pending(session: Session, job_id: int) -> int:
        """How many items of the job are still undecided."""
        return int(
            session.scalar(
                select(func.count())
                .select_from(JobItem)
                .where(JobItem.job_id == job_id, JobItem.state == ItemState.PENDING.value)
            )
            or 0
        )

    def _conclude_late(self, session: Session, row: CommitTransaction, now: datetime) -> bool:
        """A late report left nothing pending: the rounds still awaited have nothing left to
        answer (superseded) and the job is woken to conclude, as after an on-time report."""
        awaited = list(
            session.scalars(
                select(CommitTransaction.transaction_uid).where(
                    CommitTransaction.job_id == row.job_id,
                    CommitTransaction.state.in_(_AWAITING),
                )
            )
        )
        if awaited:
            session.execute(
                update(CommitTransaction)
                .where(CommitTransaction.transaction_uid.in_(awaited))
                .values(state=TransactionState.SUPERSEDED.value)
            )
            self.jobs._event(
                session,
                row.job_id,
                now,
                "commit_superseded",
                message=f"{', '.join(awaited)}: nothing left to ask, the late report of "
                f"{row.transaction_uid} decided every instance",
            )
        return self.jobs.wake_in(
            session, row.job_id, now, f"late commitment report for {row.transaction_uid} arrived"
        )

    def _mark_committed(
        self,
        session: Session,
        row: CommitTransaction,
        uids: Sequence[str],
        items: dict[str, list[int]],
        now: datetime,
    ) -> None:
        ids = [item_id for uid in uids for item_id in items[uid]]
        for chunk in _chunks(ids):
            session.execute(
                update(JobItem)
                .where(JobItem.id.in_(chunk))
                .values(
                    state=ItemState.SUCCEEDED.value, status=st.SUCCESS, error=None, updated_at=now
                )
            )
        rows = [
            {
                "sop_instance_uid": uid,
                "peer": row.peer,
                "transaction_uid": row.transaction_uid,
                "committed_at": now,
            }
            for uid in uids
        ]
        insert_fn = pg_insert if self.postgres else sqlite_insert
        for row_chunk in _chunks(rows):
            stmt = insert_fn(InstanceCommitment).values(list(row_chunk))
            stmt = stmt.on_conflict_do_update(
                index_elements=["sop_instance_uid", "peer"],
                set_={
                    "transaction_uid": stmt.excluded.transaction_uid,
                    "committed_at": stmt.excluded.committed_at,
                },
            )
            session.execute(stmt)

    def _mark_failed(
        self,
        session: Session,
        row: CommitTransaction,
        failed: dict[str, tuple[int, list[int]]],
        now: datetime,
    ) -> None:
        updates = [
            {
                "id": item_id,
                "state": ItemState.FAILED.value,
                "status": reason,
                "error": f"peer {row.peer!r} did not commit it: {st.describe(reason)}",
                "updated_at": now,
            }
            for reason, item_ids in failed.values()
            for item_id in item_ids
        ]
        for chunk in _chunks(updates):
            session.execute(update(JobItem), list(chunk))
        # A peer that now says it does not hold an instance no longer vouches for it.
        uids = list(failed)
        for uid_chunk in _chunks(uids):
            session.execute(
                delete(InstanceCommitment).where(
                    InstanceCommitment.peer == row.peer,
                    InstanceCommitment.sop_instance_uid.in_(uid_chunk),
                )
            )

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
        uids = list(dict.fromkeys(sop_instance_uids))
        out: set[str] = set()
        with self.sessions() as session:
            for chunk in _chunks(uids):
                out.update(
                    session.scalars(
                        select(InstanceCommitment.sop_instance_uid).where(
                            InstanceCommitment.peer == peer,
                            InstanceCommitment.sop_instance_uid.in_(chunk),
                        )
                    )
                )
        return out
