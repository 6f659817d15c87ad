"""Storage commitment (Storage Commitment Push Model SCU): ``commit`` jobs.

A commit job asks its peer in *rounds*, one per attempt. A round:

1. pushes again the instances the previous report said the peer does not hold (failed items),
   through the push operation's sending code;
2. persists a new transaction — a Transaction UID under ``2.25.`` and its Referenced SOP
   Sequence (the items tagged with it) — *before* anything is sent;
3. sends the N-ACTION-RQ (Action Type ID 1, the well-known instance 1.2.840.10008.1.20.1.1) and,
   for ``commit_linger`` seconds, answers a report the peer may send on the same association;
4. on success parks the job in ``waiting`` until the deadline (``commit_timeout``): no worker,
   no association is held while the peer verifies.

The report (usually on a new association the PACS opens to our port, see ``commitment``) wakes the
job; claiming it again resumes the same attempt, which concludes the round: all committed ->
succeeded. Otherwise (failures, instances the report left out, or no report before the deadline)
the attempt fails transiently and the retry policy schedules the next round — with a new
Transaction UID — until ``max_attempts`` rounds were made; then the job fails and each instance
keeps its reason (e.g. 0x0112 no such object instance).

A late report of an earlier round (expired, or superseded after a crash) that leaves no instance
pending supersedes the awaited round and wakes the job the same way: the round is concluded on
what that report decided, without waiting for the awaited round's own report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ctnode.commitment import Reconciler, Retention
from ctnode.config import NodeSettings, Settings
from ctnode.db.types import utcnow
from ctnode.dicom import status as st
from ctnode.dicom.commitment import (
    ACTION_REQUEST_COMMITMENT,
    Sender,
    SopReference,
    encode_action,
    new_transaction_uid,
)
from ctnode.dicom.contexts import (
    BASIC_SYNTAXES,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
)
from ctnode.errors import AssociationAborted, TransientError, UsageError
from ctnode.peers import Peer
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome, outcome_of, outcome_of_status
from ctnode.queue.commitment import CommitmentRepository, Transaction, TransactionState
from ctnode.queue.jobs import ItemOutcome, ItemRow, ItemState, Job, JobKind, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.scu.association import params_for
from ctnode.scu.push import PushOperation
from ctnode.ul.dimse import N_ACTION_RQ, N_EVENT_REPORT_RQ, Command, response_fields
from ctnode.ul.requestor import ContextRequest, Message, Requestor

COMMIT_CONTEXTS = [ContextRequest(STORAGE_COMMITMENT_PUSH, BASIC_SYNTAXES)]
_DONE = (ItemState.SUCCEEDED, ItemState.WARNING)


@dataclass
class _Collected:
    """Outcomes of a re-push (an ``OutcomeSink`` that only collects)."""

    lost: bool = False

    def __post_init__(self) -> None:
        self.outcomes: list[ItemOutcome] = []

    def add(self, outcome: ItemOutcome) -> None:
        self.outcomes.append(outcome)


class CommitOperation:
    """Runs ``commit`` jobs (see the module docstring)."""

    def __init__(
        self,
        node: NodeSettings,
        commits: CommitmentRepository,
        reconciler: Reconciler,
        retention: Retention,
        pusher: PushOperation,
    ) -> None:
        self.node = node
        self.commits = commits
        self.reconciler = reconciler
        self.retention = retention
        self.pusher = pusher

    # ------------------------------------------------------------------ entry

    def run(self, attempt: Attempt) -> AttemptResult:
        """Resume the round in progress (report arrived or deadline passed) or start one."""
        if "commit" not in attempt.peer.config.services:
            return AttemptResult(
                Outcome.PERMANENT,
                error=f"peer {attempt.peer.name!r} does not list 'commit' in its services",
            )
        round_ = dict(attempt.job.payload.get("round") or {})
        if round_ and not round_.get("concluded"):
            tx = self.commits.get(str(round_.get("transaction_uid")))
            if tx is not None and tx.state in (
                TransactionState.REQUESTED,
                TransactionState.REPORTED,
                TransactionState.EXPIRED,
                # A late report of an earlier round decided every instance meanwhile.
                TransactionState.SUPERSEDED,
            ):
                return self._resume(attempt, tx, round_)
        return self._new_round(attempt)

    # ------------------------------------------------------------------ a round ends

    def _resume(self, attempt: Attempt, tx: Transaction, round_: dict[str, Any]) -> AttemptResult:
        job = attempt.job
        if tx.state is TransactionState.REQUESTED:
            if self.commits.expire(job.id, attempt.owner, tx.transaction_uid):
                attempt.log.info("commit.expired", transaction_uid=tx.transaction_uid)
                return self._conclude(attempt, tx, round_, expired=True)
            current = self.commits.get(tx.transaction_uid)
            if current is None or current.state is TransactionState.REQUESTED:
                # Claimed before the deadline (nothing happened yet): keep waiting.
                left = 1.0
                if current is not None and current.deadline is not None:
                    left = max(1.0, (current.deadline - utcnow()).total_seconds())
                return AttemptResult(
                    Outcome.WAIT,
                    wait_seconds=left,
                    message=f"still waiting for the report of {tx.transaction_uid}",
                    result={"transaction_uid": tx.transaction_uid},
                )
            tx = current
        return self._conclude(attempt, tx, round_, expired=tx.state is TransactionState.EXPIRED)

    def _conclude(
        self, attempt: Attempt, tx: Transaction, round_: dict[str, Any], *, expired: bool
    ) -> AttemptResult:
        job, peer, repo = attempt.job, attempt.peer, attempt.repo
        items = repo.items(job.id)
        committed = [i for i in items if i.state in _DONE]
        self.retention.apply(
            peer.name, [i.sop_instance_uid for i in committed if i.sop_instance_uid]
        )
        outstanding = [i for i in items if i.state not in _DONE]
        result = self._summary(items, job)
        if not outstanding:
            return AttemptResult(
                Outcome.DONE,
                result=result,
                message=f"{len(committed)} instance(s) committed by {peer.name} "
                f"(transaction {tx.transaction_uid})",
            )
        payload = {**job.payload, "round": {**round_, "concluded": True}}
        if not repo.set_payload(job.id, attempt.owner, payload):
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        failed = [i for i in outstanding if i.state is ItemState.FAILED]
        unreported = [i for i in outstanding if i.state is ItemState.PENDING]
        why = (
            f"no report within commit_timeout ({peer.config.commit_timeout:g} s)"
            if expired
            else "not in the report"
        )
        parts = []
        if failed:
            first = failed[0]
            parts.append(
                f"{len(failed)} failed (first: {first.sop_instance_uid} "
                f"{st.describe(first.status) if first.status is not None else first.error})"
            )
        if unreported:
            parts.append(f"{len(unreported)} {why}")
        summary = (
            f"{len(outstanding)} of {len(items)} instance(s) not committed by {peer.name}: "
            + ", ".join(parts)
        )
        status = failed[0].status if failed else None
        policy = RetryPolicy.from_json(job.retry_policy)
        if job.attempts >= policy.max_attempts:
            if unreported and not repo.record_items(
                job.id,
                attempt.owner,
                [ItemOutcome(i.id, ItemState.FAILED, error=why) for i in unreported],
            ):
                return AttemptResult(Outcome.STOPPED, error="lease lost")
            return AttemptResult(
                Outcome.PERMANENT,
                status=status,
                error=f"gave up after {job.attempts} commitment request(s): {summary}",
                result=self._summary(repo.items(job.id), job),
            )
        return AttemptResult(
            Outcome.TRANSIENT,
            status=status,
            error=f"{summary}; asking again with a new Transaction UID"
            + (" after pushing the failed ones again" if failed else ""),
            result=result,
        )

    @staticmethod
    def _summary(items: list[ItemRow], job: Job) -> dict[str, Any]:
        committed = sum(1 for i in items if i.state in _DONE)
        failed = sum(1 for i in items if i.state is ItemState.FAILED)
        return {
            "total": len(items),
            "committed": committed,
            "failed": failed,
            "pending": len(items) - committed - failed,
            "requests": job.attempts,
        }

    # ------------------------------------------------------------------ a round starts

    def _new_round(self, attempt: Attempt) -> AttemptResult:
        job, peer, repo = attempt.job, attempt.peer, attempt.repo
        items = repo.items(job.id)
        if not items:
            return AttemptResult(Outcome.PERMANENT, error="the job has no instances")
        if all(i.state in _DONE for i in items):
            return self._conclude_without_round(attempt, items)
        failed = [i for i in items if i.state is ItemState.FAILED]
        to_request = [i for i in items if i.state is ItemState.PENDING]
        if failed:
            repushed = self._repush(attempt, failed)
            if isinstance(repushed, AttemptResult):
                return repushed
            to_request += repushed
        if not to_request:
            first = repo.items(job.id, [ItemState.FAILED])[0]
            return AttemptResult(
                Outcome.PERMANENT,
                status=first.status,
                error=f"no instance left to ask about: {len(failed)} could not be pushed again "
                f"(first: {first.sop_instance_uid}: {first.error})",
            )
        uid = new_transaction_uid()
        round_ = {"transaction_uid": uid, "attempt": job.attempts, "concluded": False}
        if not self.commits.begin(
            job.id,
            attempt.owner,
            transaction_uid=uid,
            peer=peer.name,
            peer_ae_title=peer.ae_title,
            item_ids=[i.id for i in to_request],
            payload={**job.payload, "round": round_},
        ):
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        attempt = replace(attempt, job=replace(job, payload={**job.payload, "round": round_}))
        refs = [SopReference(str(i.sop_class_uid), str(i.sop_instance_uid)) for i in to_request]
        failure = self._request(attempt, uid, refs)
        if failure is not None:
            return failure
        timeout = peer.config.commit_timeout
        tx = self.commits.mark_requested(job.id, attempt.owner, uid, timeout)
        if tx is None:
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        attempt.log.info(
            "commit.requested", transaction_uid=uid, instances=len(refs), state=tx.state.value
        )
        if tx.state in (TransactionState.REPORTED, TransactionState.SUPERSEDED):
            # Its report, or a late one of an earlier round, arrived during the N-ACTION.
            return self._conclude(attempt, tx, round_, expired=False)
        return AttemptResult(
            Outcome.WAIT,
            wait_seconds=timeout,
            message=f"N-ACTION accepted; waiting up to {timeout:g} s for the report of {uid}",
            result={"transaction_uid": uid, "requested": len(refs)},
        )

    def _conclude_without_round(self, attempt: Attempt, items: list[ItemRow]) -> AttemptResult:
        """Everything is committed already (e.g. a late report before a retry)."""
        peer = attempt.peer
        self.retention.apply(peer.name, [i.sop_instance_uid for i in items if i.sop_instance_uid])
        return AttemptResult(
            Outcome.DONE,
            result=self._summary(items, attempt.job),
            message=f"{len(items)} instance(s) committed by {peer.name}",
        )

    def _repush(self, attempt: Attempt, failed: list[ItemRow]) -> list[ItemRow] | AttemptResult:
        """Push failed instances again; returns those delivered (to ask about again)."""
        job, peer = attempt.job, attempt.peer
        if "store" not in peer.config.services:
            attempt.repo.event(
                job.id,
                "commit_repush_skipped",
                message=f"peer {peer.name!r} does not list 'store' in its services",
            )
            return []
        sink = _Collected()
        failure = self.pusher.send(attempt, failed, sink)
        by_id = {i.id: i for i in failed}
        delivered = [by_id[o.item_id] for o in sink.outcomes if o.state in _DONE]
        refused = [
            ItemOutcome(
                o.item_id, ItemState.FAILED, o.status, f"pushing it again failed: {o.error}"
            )
            for o in sink.outcomes
            if o.state is ItemState.FAILED
        ]
        if refused and not attempt.repo.record_items(job.id, attempt.owner, refused):
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        attempt.repo.event(
            job.id,
            "commit_repushed",
            attempt=job.attempts,
            message=f"{len(delivered)} of {len(failed)} failed instance(s) pushed again to "
            f"{peer.name}" + (f"; {len(refused)} refused" if refused else ""),
        )
        if failure is not None:
            return failure
        if attempt.stop:
            return AttemptResult(Outcome.STOPPED)
        return delivered

    # ------------------------------------------------------------------ the N-ACTION

    def _request(
        self, attempt: Attempt, transaction_uid: str, refs: list[SopReference]
    ) -> AttemptResult | None:
        """Send the N-ACTION; None once the peer accepted it, else the attempt's result."""
        peer = attempt.peer
        params = params_for(peer, self.node, COMMIT_CONTEXTS)
        reported = [False]
        try:
            with Requestor(params) as assoc:
                ctx = assoc.context_for(STORAGE_COMMITMENT_PUSH)
                if ctx is None or ctx.transfer_syntax is None:
                    return AttemptResult(
                        Outcome.PERMANENT,
                        error=f"{assoc.peer_label} did not accept the Storage Commitment Push "
                        "Model (is storage commitment enabled there for our AE title?)",
                    )
                syntax = ctx.transfer_syntax
                assoc.on_request = lambda message: self._on_peer_request(
                    attempt, assoc, message, syntax, reported
                )
                rsp = assoc.request(
                    ctx.context_id,
                    {
                        "CommandField": N_ACTION_RQ,
                        "RequestedSOPClassUID": STORAGE_COMMITMENT_PUSH,
                        "RequestedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_INSTANCE,
                        "ActionTypeID": ACTION_REQUEST_COMMITMENT,
                    },
                    encode_action(transaction_uid, refs, syntax),
                )
                code = rsp.command.get("Status")
                if not isinstance(code, int):
                    return AttemptResult(
                        Outcome.TRANSIENT,
                        error=f"{assoc.peer_label} sent an N-ACTION-RSP without Status",
                    )
                outcome = outcome_of_status(st.meaning(code))
                if outcome is Outcome.DONE:
                    self._linger(attempt, assoc, reported)
                    return None
                error = f"{assoc.peer_label} refused the commitment request: {st.describe(code)}"
                return AttemptResult(outcome, status=code, error=error)
        except TransientError as exc:  # unreachable, rejected, aborted
            return outcome_of(exc)

    @staticmethod
    def _linger(attempt: Attempt, assoc: Requestor, reported: list[bool]) -> None:
        """Answer a report sent on the N-ACTION's association (``commit_linger`` seconds)."""
        linger = attempt.peer.config.commit_linger
        if linger <= 0 or reported[0]:
            return
        try:
            assoc.serve_peer_requests(linger, until=lambda: reported[0])
        except AssociationAborted as exc:
            # The N-ACTION was accepted; what the peer does afterwards does not undo that.
            attempt.log.info("commit.linger_ended", reason=str(exc))

    def _on_peer_request(
        self,
        attempt: Attempt,
        assoc: Requestor,
        message: Message,
        transfer_syntax: str,
        reported: list[bool],
    ) -> dict[str, object]:
        """A request the peer sent on our association: a report is applied like any other."""
        cmd: Command = message.command
        ctx = assoc.context_for(STORAGE_COMMITMENT_PUSH)
        if (
            cmd.get("CommandField") != N_EVENT_REPORT_RQ
            or ctx is None
            or message.context_id != ctx.context_id
        ):
            return dict(response_fields(cmd, cmd.field | 0x8000, st.UNRECOGNIZED_OPERATION))
        peer = attempt.peer
        sender = Sender(peer.name, peer.ae_title, assoc.params.host)
        result = self.reconciler.process(
            cmd.get("EventTypeID"),
            message.dataset or b"",
            transfer_syntax,
            sender,
            association="n-action",
        )
        reported[0] = reported[0] or result.status == st.SUCCESS
        return dict(
            response_fields(
                cmd, cmd.field | 0x8000, result.status, EventTypeID=cmd.get("EventTypeID")
            )
        )


# ------------------------------------------------------------------ submitting


def commit_policy(settings: Settings, peer: Peer) -> RetryPolicy:
    """The retry policy of a commit job to *peer* (its ``retry``, else ``queue.retry``)."""
    return RetryPolicy.from_settings(peer.config.retry or settings.queue.retry)


def items_from_store(
    session: Session, store_dir: Path, *, study: str | None, series: str | None
) -> list[NewItem]:
    """The stored instances of a study/series (their files are what a re-push sends)."""
    from ctnode.index import list_instances

    root = store_dir.absolute()
    return [
        NewItem(r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid, str(root / r.path))
        for r in list_instances(session, study=study, series=series)
    ]


def items_from_push_job(repo: JobRepository, job_id: int, peer: str) -> tuple[Job, list[NewItem]]:
    """Exactly the instances push job *job_id* delivered to *peer* (UsageError otherwise)."""
    job = repo.get(job_id)
    if job.kind is not JobKind.PUSH:
        raise UsageError(f"job {job_id} is a {job.kind.value} job, not a push")
    if job.peer != peer:
        raise UsageError(f"job {job_id} pushed to {job.peer!r}, not {peer!r}")
    items = [
        NewItem(i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.path)
        for i in repo.items(job_id, list(_DONE))
    ]
    return job, items


def commit_after_push(settings: Settings, repo: JobRepository) -> Callable[[Attempt], int | None]:
    """The push operation's ``after_success`` hook: submit the commit job of ``push --commit``
    for exactly the instances the push delivered (once: keyed on the push job)."""

    def submit(attempt: Attempt) -> int | None:
        push_job = attempt.job
        peer = attempt.peer
        _, items = items_from_push_job(repo, push_job.id, peer.name)
        if not items:
            return None
        job, created = repo.submit(
            JobKind.COMMIT,
            peer.name,
            {
                "source": "push",
                "push_job": push_job.id,
                # a forward's commitment belongs to its route (jobs show --json)
                **({"route": push_job.payload["route"]} if "route" in push_job.payload else {}),
            },
            items,
            policy=commit_policy(settings, peer),
            priority=push_job.priority,
            node_name=push_job.node_name,
            idempotency_key=f"commit-after-push-{push_job.id}",
        )
        if created:
            attempt.log.info("commit.submitted", commit_job=job.id, instances=len(items))
        return job.id

    return submit
