"""The N-ACTION of a commitment round (Storage Commitment Push Model SCU): one association that
sends the N-ACTION-RQ (Action Type ID 1, the well-known instance 1.2.840.10008.1.20.1.1) with a
transaction's Referenced SOP Sequence and, for ``commit_linger`` seconds after the peer accepted
it, answers a report (N-EVENT-REPORT) the peer may send on the same association — applied by the
``commit_report_intake.Reconciler`` like a report on a new association."""

from __future__ import annotations

from collections.abc import Sequence

from ctnode.commit_report_intake import Reconciler
from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import (
    ACTION_REQUEST_COMMITMENT,
    Sender,
    SopReference,
    encode_action,
)
from ctnode.dicom.contexts import (
    BASIC_SYNTAXES,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
)
from ctnode.errors import AssociationAborted, TransientError
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome, outcome_of, outcome_of_status
from ctnode.scu.association import params_for
from ctnode.ul.dimse import N_ACTION_RQ, N_EVENT_REPORT_RQ, Command, response_fields
from ctnode.ul.requestor import ContextRequest, Message, Requestor

COMMIT_CONTEXTS = [ContextRequest(STORAGE_COMMITMENT_PUSH, BASIC_SYNTAXES)]


def request_commitment(
    attempt: Attempt,
    node: NodeSettings,
    reconciler: Reconciler,
    transaction_uid: str,
    refs: Sequence[SopReference],
) -> AttemptResult | None:
    """Send the N-ACTION; None once the peer accepted it, else the attempt's result."""
    peer = attempt.peer
    params = params_for(peer, node, COMMIT_CONTEXTS)
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
            assoc.on_request = lambda message: _on_peer_request(
                attempt, reconciler, assoc, message, syntax, reported
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
                _linger(attempt, assoc, reported)
                return None
            error = f"{assoc.peer_label} refused the commitment request: {st.describe(code)}"
            return AttemptResult(outcome, status=code, error=error)
    except TransientError as exc:  # unreachable, rejected, aborted
        return outcome_of(exc)


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
    attempt: Attempt,
    reconciler: Reconciler,
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
    result = reconciler.process(
        cmd.get("EventTypeID"),
        message.dataset or b"",
        transfer_syntax,
        sender,
        association="n-action",
    )
    reported[0] = reported[0] or result.status == st.SUCCESS
    return dict(
        response_fields(cmd, cmd.field | 0x8000, result.status, EventTypeID=cmd.get("EventTypeID"))
    )
