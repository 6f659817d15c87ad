"""The report on the N-ACTION's own association, while the requestor keeps it open.

After the N-ACTION-RSP is sent (the acceptor runs this before reading the next PDU), ctnode
gives the requestor a moment (at most ``commit_linger``, at most ``SETTLE_SECONDS``) to end the
association — a requestor that releases at once expects the report on a new association. If it
stays and every instance is decided (local mode; upstream mode only when the upstream peers
already committed everything), the N-EVENT-REPORT goes out on this association through
``ul.peer_requests`` and its response is read here. Success marks the transaction ``reported``
(the report job then finds nothing to do); anything else — the peer released meanwhile, a
failure status — wakes the report job at once, which sends it on a new association.
"""

from __future__ import annotations

import time

from sqlalchemy.exc import SQLAlchemyError

from ctnode.commitment_scp.decide import Answer, report_of
from ctnode.commitment_scp.report import ReportOperation, event_fields, report_log_fields
from ctnode.commitment_scp.transactions import IncomingCommitments, IncomingTransaction
from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import encode_report
from ctnode.logs import get_logger
from ctnode.queue.repository import JobRepository
from ctnode.ul.acceptor import AcceptedContext, AssociationInfo
from ctnode.ul.peer_requests import PeerGone

log = get_logger("ctnode.commit_scp")

#: Longest wait for a requestor that releases right after the N-ACTION-RSP.
SETTLE_SECONDS = 0.15


def report_on_association(
    info: AssociationInfo,
    ctx: AcceptedContext,
    tx: IncomingTransaction,
    linger: float,
    *,
    operation: ReportOperation,
    transactions: IncomingCommitments,
    jobs: JobRepository,
) -> None:
    """Try the report on *info*'s association (see the module docstring)."""
    requests = info.requests
    if requests is None or linger <= 0:
        return
    fields = {**info.log_context(), "transaction_uid": tx.transaction_uid}
    sent = False
    try:
        deadline = time.monotonic() + min(linger, SETTLE_SECONDS)
        while time.monotonic() < deadline:
            requests.poll()  # raises when the requestor released or aborted
            time.sleep(0.01)
        verdicts = operation.decide(tx)
        if any(v.answer is Answer.PENDING for v in verdicts):
            return
        report = report_of(tx.transaction_uid, verdicts)
        rsp = requests.request(
            ctx.context_id,
            event_fields(report),
            encode_report(report, ctx.transfer_syntax),
            timeout=max(linger, 1.0) * 10,
        )
        code = rsp.command.get("Status")
        if isinstance(code, int) and st.meaning(code) in (
            st.StatusMeaning.SUCCESS,
            st.StatusMeaning.WARNING,
        ):
            sent = True
            transactions.reported(tx.transaction_uid, report.event_type)
            log.info(
                "commit_scp.report.sent", **fields, **report_log_fields(report), association="same"
            )
        else:
            log.warning(
                "commit_scp.report.refused",
                **fields,
                association="same",
                status=st.hex_status(code if isinstance(code, int) else None),
            )
    except SQLAlchemyError as exc:  # the job decides again later
        log.warning("commit_scp.report.same_association_skipped", **fields, reason=str(exc))
    except PeerGone:
        # The requestor released or aborted: it takes the report on a new association.
        # Anything else (a timeout, a protocol error) is the acceptor's to handle.
        log.info("commit_scp.report.same_association_skipped", **fields, reason="association ended")
    finally:
        if not sent and tx.report_job_id is not None:
            jobs.wake(tx.report_job_id, "the report goes on a new association")
