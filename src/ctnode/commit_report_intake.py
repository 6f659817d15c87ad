"""Storage commitment reports a peer sends back to ctnode (SCU side): decode, match, apply, log.

``Reconciler.handle_inbound`` is the SCP's N-EVENT-REPORT handler (a report on a new association
opened by the PACS, which proposed the SCP role); ``Reconciler.process`` also serves a report
sent on the N-ACTION's own association (``scu.commit_request``). Either way the report is
decoded, matched by Transaction UID *and* sender, and applied in one database transaction
(``queue.commit_rounds.CommitmentRepository.apply_report``); the waiting commit job is then
runnable and a worker concludes it. Statuses of the N-EVENT-REPORT-RSP:

* 0x0000 processed: applied (on time); applied late — the transaction is expired or superseded
  but its job is not finished, so the report is applied under the newest-question rule of
  ``queue.commit_reports`` (an older transaction never downgrades an instance, and the job is woken
  once nothing is left pending); noted for a job that has finished (results not applied); or a
  repeat of a report already processed (nothing changes)
* 0x0110 processing failure: unknown Transaction UID, a report from anyone but the peer that was
  asked (calling AE title and configured host), an undecodable data set, or the database failed;
  nothing changes
* 0x0113 no such event type: Event Type ID other than 1 or 2; nothing changes
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import EVENT_TYPES, ReportError, Sender, parse_report
from ctnode.logs import get_logger
from ctnode.queue.commit_rounds import CommitmentRepository, ReportOutcome, ReportResult
from ctnode.retention import Retention
from ctnode.ul.acceptor import AssociationInfo
from ctnode.ul.dimse import Command

log = get_logger("ctnode.commitment")

NO_SUCH_EVENT_TYPE = 0x0113


class Reconciler:
    """Applies storage commitment reports (see the module docstring for the statuses)."""

    def __init__(
        self,
        commits: CommitmentRepository,
        retention: Retention,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.commits = commits
        self.retention = retention
        #: Called after a report made a job runnable (wakes the in-process workers).
        self.notify = notify

    def handle_inbound(self, info: AssociationInfo, cmd: Command, dataset: bytes, ts: str) -> int:
        """The SCP's report handler: a report on an association the peer opened (*ts* is the
        presentation context's transfer syntax)."""
        sender = Sender(getattr(info.peer, "name", None), info.calling_ae, info.address)
        result = self.process(cmd.get("EventTypeID"), dataset, ts, sender, association=info.id)
        return result.status

    def process(
        self,
        event_type: object,
        dataset: bytes,
        transfer_syntax: str,
        sender: Sender,
        *,
        association: str | None = None,
    ) -> ReportResult:
        """Decode, match and apply one report; logs one line saying what happened."""
        fields = {
            "calling_ae": sender.ae_title,
            "peer_address": sender.address,
            "sender_peer": sender.peer,
            "association": association,
            "event_type": event_type,
        }
        try:
            report = parse_report(dataset, transfer_syntax, event_type)
        except ReportError as exc:
            code = NO_SUCH_EVENT_TYPE if event_type not in EVENT_TYPES else st.PROCESSING_FAILURE
            log.warning(
                "commitment.report",
                **fields,
                outcome="refused",
                status=st.hex_status(code),
                reason=str(exc),
            )
            return ReportResult(ReportOutcome.REFUSED, code, str(exc))
        try:
            result = self.commits.apply_report(report, sender)
        except SQLAlchemyError as exc:
            reason = f"database error: {str(exc).splitlines()[0]}"
            log.warning(
                "commitment.report",
                **fields,
                transaction_uid=report.transaction_uid,
                outcome="error",
                status=st.hex_status(st.PROCESSING_FAILURE),
                reason=reason,
            )
            return ReportResult(ReportOutcome.REFUSED, st.PROCESSING_FAILURE, reason)
        tx = result.transaction
        line = {
            **fields,
            "transaction_uid": report.transaction_uid,
            "outcome": result.outcome.value,
            "status": st.hex_status(result.status),
            "job": tx.job_id if tx else None,
            "peer": tx.peer if tx else None,
            "transaction_state": tx.state.value if tx else None,
            "committed": len(result.committed),
            "failed": result.failed,
            "ignored": len(result.ignored),
            "woken": result.woken,
        }
        if result.ignored:
            line["ignored_uids"] = list(result.ignored[:10])
        if result.reason:
            line["reason"] = result.reason
        if result.outcome is ReportOutcome.REFUSED:
            log.warning("commitment.report", **line)
        else:
            log.info("commitment.report", **line)
        if tx is not None and result.committed and not result.woken:
            # No worker will conclude this job (it is not waiting): apply retention here.
            self.retention.apply(tx.peer, result.committed)
        if result.woken and self.notify is not None:
            self.notify()
        return result
