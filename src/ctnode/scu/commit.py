"""Storage commitment (Storage Commitment Push Model SCU): ``commit`` jobs.

A commit job asks its peer in *rounds*, one per attempt. A round:

1. pushes again the instances the previous report said the peer does not hold (failed items),
   through the push operation's sending code;
2. persists a new transaction — a Transaction UID under ``2.25.`` and its Referenced SOP
   Sequence (the items tagged with it) — *before* anything is sent;
3. sends the N-ACTION-RQ (Action Type ID 1, the well-known instance 1.2.840.10008.1.20.1.1) and,
   for ``commit_linger`` seconds, answers a report the peer may send on the same association
   (``scu.commit_request``);
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

from dataclasses import dataclass, replace
from typing import Any

from ctnode.commit_report_intake import Reconciler
from ctnode.config import NodeSettings
from ctnode.db.types import utcnow
from ctnode.dicom.commitment_messages import new_transaction_uid
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome
from ctnode.queue.commit_rounds import CommitmentRepository, Transaction, TransactionState
from ctnode.queue.jobs import ItemOutcome, ItemRow, ItemState
from ctnode.queue.retry import RetryPolicy
from ctnode.retention import Retention
from ctnode.scu.commit_request import request_commitment
from ctnode.scu.commit_round import (
    DONE_STATES,
    in_states,
    outstanding,
    references,
    shortfall,
    summary,
    unreported_reason,
)
from ctnode.scu.push import PushOperation
from ctnode.scu.services import service_refused


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
        refused = service_refused(attempt.peer, "commit")
        if refused is not None:
            return refused
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
        committed = in_states(items, *DONE_STATES)
        self.retention.apply(
            peer.name, [i.sop_instance_uid for i in committed if i.sop_instance_uid]
        )
        result = summary(items, job.attempts)
        if not outstanding(items):
            return AttemptResult(
                Outcome.DONE,
                result=result,
                message=f"{len(committed)} instance(s) committed by {peer.name} "
                f"(transaction {tx.transaction_uid})",
            )
        payload = {**job.payload, "round": {**round_, "concluded": True}}
        if not repo.set_payload(job.id, attempt.owner, payload):
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        why = unreported_reason(expired=expired, commit_timeout=peer.config.commit_timeout)
        left = shortfall(items, peer.name, why)
        policy = RetryPolicy.from_json(job.retry_policy)
        if job.attempts >= policy.max_attempts:
            if left.unreported and not repo.record_items(
                job.id,
                attempt.owner,
                [ItemOutcome(i.id, ItemState.FAILED, error=why) for i in left.unreported],
            ):
                return AttemptResult(Outcome.STOPPED, error="lease lost")
            return AttemptResult(
                Outcome.PERMANENT,
                status=left.status,
                error=f"gave up after {job.attempts} commitment request(s): {left.message}",
                result=summary(repo.items(job.id), job.attempts),
            )
        return AttemptResult(
            Outcome.TRANSIENT,
            status=left.status,
            error=f"{left.message}; asking again with a new Transaction UID"
            + (" after pushing the failed ones again" if left.failed else ""),
            result=result,
        )

    # ------------------------------------------------------------------ a round starts

    def _new_round(self, attempt: Attempt) -> AttemptResult:
        job, peer, repo = attempt.job, attempt.peer, attempt.repo
        items = repo.items(job.id)
        if not items:
            return AttemptResult(Outcome.PERMANENT, error="the job has no instances")
        if not outstanding(items):
            return self._conclude_without_round(attempt, items)
        failed = in_states(items, ItemState.FAILED)
        to_request = in_states(items, ItemState.PENDING)
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
        refs = references(to_request)
        failure = request_commitment(attempt, self.node, self.reconciler, uid, refs)
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
            result=summary(items, attempt.job.attempts),
            message=f"{len(items)} instance(s) committed by {peer.name}",
        )

    def _repush(self, attempt: Attempt, failed: list[ItemRow]) -> list[ItemRow] | AttemptResult:
        """Push failed instances again; returns those delivered (to ask about again)."""
        job, peer = attempt.job, attempt.peer
        no_store = service_refused(peer, "store")
        if no_store is not None:
            attempt.repo.event(job.id, "commit_repush_skipped", message=no_store.error)
            return []
        sink = _Collected()
        failure = self.pusher.send(attempt, failed, sink)
        by_id = {i.id: i for i in failed}
        delivered = [by_id[o.item_id] for o in sink.outcomes if o.state in DONE_STATES]
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
