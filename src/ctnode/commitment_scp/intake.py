"""The N-ACTION handler: a peer asks ctnode to commit instances (Storage Commitment SCP).

``Intake.handle`` runs in the association's thread. It checks the request (``requests``),
persists the transaction with every instance (``transactions``) and queues the
``commit_report`` job that sends the report — both before the N-ACTION-RSP is sent, so that an
answered request survives ``kill -9``. Once the transaction is persisted the answer is success
even if queueing the job fails (logged ``scp.commit.report_not_queued``): ``recover``, run at
start-up and periodically by the daemon, queues the report of every pending transaction
without a job. With storage not shared between nodes the job is pinned to this node (it holds
the files). N-ACTION-RSP statuses:

* 0x0000 the request is persisted (or is a repeat of one already persisted from this peer)
* 0x0124 not authorised — the caller is not a configured peer with ``commit`` in its
  ``accept`` list (ctnode needs the peer file to send the report)
* the failures of ``requests`` (0x0118, 0x0112, 0x0123, 0x0115, 0x0110, 0x0213)
* 0x0110 processing failure — the Transaction UID is already used by another peer
* 0x0213 resource limitation — the database could not persist it (the requestor may retry)

Once the answer is on its way, ``after_answer`` tries to send the report on the same
association (``same_association``) while the requestor keeps it open; the report job is the
fallback (a new association), and the only way in upstream mode until every upstream peer has
committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ctnode.commitment_scp.linger import report_on_association
from ctnode.commitment_scp.report import ReportOperation
from ctnode.commitment_scp.requests import Refusal, read_request
from ctnode.commitment_scp.transactions import (
    DuplicateTransaction,
    IncomingCommitments,
    IncomingTransaction,
)
from ctnode.config import Settings
from ctnode.dicom import status as st
from ctnode.logs import get_logger
from ctnode.peers import Peer
from ctnode.queue.jobs import JobKind
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.ul.acceptor import AcceptedContext, AssociationInfo
from ctnode.ul.dimse import Command

log = get_logger("ctnode.scp")

NOT_AUTHORIZED = 0x0124
#: ``recover`` leaves alone a transaction received less than this long ago (seconds).
RECOVER_MIN_AGE = 5.0


@dataclass(frozen=True, slots=True)
class ActionAnswer:
    """The N-ACTION-RSP status, an Error Comment for failures, and the persisted transaction
    (when accepted)."""

    status: int
    comment: str | None = None
    transaction: IncomingTransaction | None = None


class Intake:
    """Accepts storage commitment requests (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        transactions: IncomingCommitments,
        jobs: JobRepository,
        notify: Callable[[], None] | None = None,
        reports: ReportOperation | None = None,
    ) -> None:
        self.settings = settings
        self.transactions = transactions
        self.jobs = jobs
        #: Decides and sends on the N-ACTION's association (None: the job always sends).
        self.reports = reports
        #: Wakes the in-process workers (set by the daemon once its loop runs).
        self.notify = notify

    def on_action(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: Command, dataset: bytes
    ) -> tuple[int, str | None, Callable[[], None] | None]:
        """``scp.handlers.ActionHandler``: the N-ACTION-RSP status, its Error Comment, and what
        to do once it is sent (the report on this association)."""
        peer: Peer | None = info.peer
        linger = peer.config.commit_linger if peer is not None else 0.0
        same = self.reports is not None and linger > 0 and info.requests is not None
        answer = self.handle(
            peer, info.log_context(), dict(cmd), dataset, ctx.transfer_syntax, same_association=same
        )
        info.count("commitment_requests")
        tx = answer.transaction
        if not same or tx is None or self.reports is None:
            return answer.status, answer.comment, None
        reports = self.reports

        def after() -> None:
            report_on_association(
                info,
                ctx,
                tx,
                linger,
                operation=reports,
                transactions=self.transactions,
                jobs=self.jobs,
            )

        return answer.status, answer.comment, after

    def handle(
        self,
        peer: Peer | None,
        log_fields: dict[str, Any],
        fields: dict[str, object],
        dataset: bytes,
        transfer_syntax: str,
        *,
        same_association: bool,
    ) -> ActionAnswer:
        """Check, persist, queue the report; the answer to send. *same_association*: the
        caller will try the report on this association first (the job then waits
        ``commit_linger`` before its first attempt)."""
        if peer is None:
            return self._refused(
                log_fields,
                Refusal(
                    NOT_AUTHORIZED,
                    "the calling AE is not a configured peer: add a peer file with "
                    "accept: [commit] so that ctnode knows where to send the report",
                ),
            )
        request = read_request(fields, dataset, transfer_syntax)
        if isinstance(request, Refusal):
            return self._refused(log_fields, request)
        config = self.settings.commitment_scp
        try:
            tx, created = self.transactions.receive(
                request,
                peer=peer.name,
                calling_ae=str(log_fields.get("calling_ae") or peer.ae_title),
                peer_address=str(log_fields.get("peer_address") or ""),
                mode=config.mode,
                upstream=config.upstream,
                report_within=config.report_within,
            )
        except DuplicateTransaction as exc:
            return self._refused(log_fields, Refusal(st.PROCESSING_FAILURE, str(exc)))
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            return self._refused(
                log_fields,
                Refusal(st.RESOURCE_LIMITATION, f"cannot persist the request: {reason}"),
            )
        if tx.report_job_id is None:
            # The transaction is committed: whatever happens now, the answer is success.
            try:
                self._queue_report(peer, tx, same_association)
                tx = self.transactions.get(tx.transaction_uid) or tx
            except Exception as exc:
                log.warning(
                    "scp.commit.report_not_queued",
                    **log_fields,
                    transaction_uid=tx.transaction_uid,
                    error=str(getattr(exc, "orig", exc)).splitlines()[0] or repr(exc),
                    detail="the request is persisted; the periodic recovery queues its report",
                )
        log.info(
            "scp.commit.accepted",
            **log_fields,
            transaction_uid=tx.transaction_uid,
            instances=tx.instances,
            mode=tx.mode,
            repeat=not created,
            report_job=tx.report_job_id,
        )
        if self.notify is not None:
            self.notify()
        return ActionAnswer(st.SUCCESS, transaction=tx)

    def _queue_report(self, peer: Peer, tx: IncomingTransaction, same_association: bool) -> int:
        policy = RetryPolicy.for_peer(self.settings, peer)
        job, _ = self.jobs.submit(
            JobKind.COMMIT_REPORT,
            peer.name,
            {"transaction_uid": tx.transaction_uid},
            policy=policy,
            idempotency_key=f"commit-report-{tx.transaction_uid}",
            delay=peer.config.commit_linger if same_association else 0.0,
            # Not shared: the files are in this node's store (upstream pushes read them).
            node_name=None if self.settings.storage.shared else self.settings.node.name,
        )
        self.transactions.set_report_job(tx.transaction_uid, job.id)
        return job.id

    def recover(
        self, peer_for: Callable[[str], Peer | None], *, min_age: float = RECOVER_MIN_AGE
    ) -> int:
        """Queue the report of every pending transaction without a job (a crash between
        persisting and queueing, or the queueing failed) received at least *min_age* seconds
        ago (not one whose N-ACTION is being answered now); returns how many. Also stores
        ``failed`` for pending transactions whose report job ended without the report
        (``IncomingCommitments.record_abandoned``)."""
        abandoned = self.transactions.record_abandoned()
        if abandoned:
            log.warning("commit_scp.reports_abandoned", transactions=abandoned)
        count = 0
        before = self.transactions.clock() - timedelta(seconds=min_age)
        for uid in self.transactions.pending_without_job(received_before=before):
            tx = self.transactions.get(uid)
            peer = peer_for(tx.peer) if tx is not None else None
            if tx is None or peer is None:
                continue
            self._queue_report(peer, tx, same_association=False)
            count += 1
        return count

    @staticmethod
    def _refused(log_fields: dict[str, Any], refusal: Refusal) -> ActionAnswer:
        log.warning(
            "scp.commit.refused",
            **log_fields,
            status=st.hex_status(refusal.status),
            reason=refusal.reason,
        )
        return ActionAnswer(refusal.status, refusal.reason[:64])
