"""Applying a storage commitment report to the commit job that asked: on time or late.

A report is matched by Transaction UID and sender. It is *on time* while its transaction is
awaited (``open`` or ``requested``) and *late* once it is not (``expired`` or ``superseded``,
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

Applying a report is not fenced (the job is usually waiting, with no lease): it is serialised
on the job and transaction rows (``FOR UPDATE``, in the order the fenced writes of a round take
them, on PostgreSQL; SQLite has one writer at a time). Item changes, instance commitments
(``queue.instance_commitments``), the transaction's state and the wake of the waiting job are
one database transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ctnode.db.models import CommitTransaction, JobItem
from ctnode.db.models import Job as JobRow
from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import CommitmentReport, Sender, sender_problem
from ctnode.queue.commit_transactions import AWAITING, Transaction, TransactionState, iso
from ctnode.queue.instance_commitments import record_commitments, withdraw_commitments
from ctnode.queue.jobs import ItemState, JobState
from ctnode.queue.rows import QueueDatabase, append_event, chunks, wake_in


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


def apply_report(database: QueueDatabase, report: CommitmentReport, sender: Sender) -> ReportResult:
    """Match a report by Transaction UID and sender, and apply it (see the module docstring).

    Only the job's items the transaction asked about can change; other instances in the
    report are returned in ``ignored``.
    """
    uid = report.transaction_uid
    with database.sessions() as session:
        now = database.now(session)
        row = session.get(CommitTransaction, uid)
        if row is not None and database.postgres:
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
                f"transaction {uid} was already reported at {iso(row.reported_at)}",
                Transaction.from_row(row),
            )
        job = session.get(JobRow, row.job_id)
        job_state = JobState(job.state) if job is not None else JobState.CANCELLED
        if job_state.final:
            return _after_finish(session, row, report, job_state, now)
        return _apply(session, database.postgres, row, report, now)


def _after_finish(
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
    append_event(
        session,
        row.job_id,
        now,
        "commit_report_after_finish",
        message=f"{row.transaction_uid}: event type {report.event_type}, "
        f"{len(report.committed)} committed, {len(report.failed)} failed in the report; "
        f"not applied: the job is already {job_state.value}",
    )
    session.commit()
    return ReportResult(ReportOutcome.JOB_FINISHED, st.SUCCESS, reason, Transaction.from_row(row))


def _apply(
    session: Session,
    postgres: bool,
    row: CommitTransaction,
    report: CommitmentReport,
    now: datetime,
) -> ReportResult:
    """Apply a report to an unfinished job under the newest-question rule."""
    uid = row.transaction_uid
    on_time = row.state in AWAITING
    newer = set(
        session.scalars(
            select(CommitTransaction.transaction_uid).where(
                CommitTransaction.job_id == row.job_id,
                CommitTransaction.created_at > row.created_at,
            )
        )
    )
    verdicts = _verdicts(report, uid, _named_items(session, row.job_id, report), newer)
    _mark_committed(session, postgres, row, list(verdicts.committed), verdicts.committed, now)
    _mark_failed(session, row, verdicts.failed, now)
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
    append_event(
        session,
        row.job_id,
        now,
        "commit_reported" if on_time else "commit_late_report_applied",
        message=f"{uid}: {counts}" + ("" if on_time else f" (transaction was {row.state})"),
    )
    woken = False
    if on_time:
        woken = wake_in(session, row.job_id, now, f"commitment report for {uid} arrived")
    elif (verdicts.committed or verdicts.failed) and not _pending(session, row.job_id):
        woken = _conclude_late(session, row, now)
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


def _named_items(session: Session, job_id: int, report: CommitmentReport) -> dict[str, list[_Item]]:
    """The job's items the report names, by SOP Instance UID."""
    named = list(
        dict.fromkeys(
            [r.sop_instance_uid for r in report.committed]
            + [r.sop_instance_uid for r in report.failed]
        )
    )
    items: dict[str, list[_Item]] = {}
    for chunk in chunks(named):
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


def _conclude_late(session: Session, row: CommitTransaction, now: datetime) -> bool:
    """A late report left nothing pending: the rounds still awaited have nothing left to
    answer (superseded) and the job is woken to conclude, as after an on-time report."""
    awaited = list(
        session.scalars(
            select(CommitTransaction.transaction_uid).where(
                CommitTransaction.job_id == row.job_id,
                CommitTransaction.state.in_(AWAITING),
            )
        )
    )
    if awaited:
        session.execute(
            update(CommitTransaction)
            .where(CommitTransaction.transaction_uid.in_(awaited))
            .values(state=TransactionState.SUPERSEDED.value)
        )
        append_event(
            session,
            row.job_id,
            now,
            "commit_superseded",
            message=f"{', '.join(awaited)}: nothing left to ask, the late report of "
            f"{row.transaction_uid} decided every instance",
        )
    return wake_in(
        session, row.job_id, now, f"late commitment report for {row.transaction_uid} arrived"
    )


def _mark_committed(
    session: Session,
    postgres: bool,
    row: CommitTransaction,
    uids: Sequence[str],
    items: dict[str, list[int]],
    now: datetime,
) -> None:
    """The items of *items* for *uids* committed, and *uids* recorded as committed by the peer."""
    ids = [item_id for uid in uids for item_id in items[uid]]
    for chunk in chunks(ids):
        session.execute(
            update(JobItem)
            .where(JobItem.id.in_(chunk))
            .values(state=ItemState.SUCCEEDED.value, status=st.SUCCESS, error=None, updated_at=now)
        )
    record_commitments(session, postgres, row.peer, row.transaction_uid, uids, now)


def _mark_failed(
    session: Session,
    row: CommitTransaction,
    failed: dict[str, tuple[int, list[int]]],
    now: datetime,
) -> None:
    """The items of *failed* failed with the peer's Failure Reason; its commitments withdrawn."""
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
    for chunk in chunks(updates):
        session.execute(update(JobItem), list(chunk))
    # A peer that now says it does not hold an instance no longer vouches for it.
    withdraw_commitments(session, row.peer, list(failed))
