"""The C-FIND exchange (Study Root): send the request identifier, collect the matches, cancel
at a limit or when asked to stop."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from ctnode.dicom import status as st
from ctnode.dicom.contexts import STUDY_ROOT_FIND
from ctnode.errors import AssociationAborted
from ctnode.queue.attempt import StopFlag
from ctnode.scu.identifier import decode_identifier
from ctnode.scu.pending import PendingExchange, error_comment, is_pending
from ctnode.ul.dimse import C_FIND_RQ
from ctnode.ul.requestor import Requestor


@dataclass(slots=True)
class FindResult:
    """What one C-FIND returned."""

    matches: list[Dataset] = field(default_factory=list)
    #: Final status (None: the peer never confirmed our C-CANCEL; the association was aborted).
    status: int | None = None
    #: We sent C-CANCEL (limit reached, or asked to stop).
    cancelled: bool = False
    #: More matches than the limit exist (or may exist: the peer confirmed the cancel).
    truncated: bool = False
    #: Pending responses whose identifier could not be decoded (skipped).
    undecodable: int = 0
    #: Pending 0xFF01 responses (optional keys not supported).
    partial_keys: int = 0
    error_comment: str | None = None


def c_find(
    assoc: Requestor,
    identifier: Dataset,
    *,
    limit: int | None = None,
    stop: StopFlag | None = None,
) -> FindResult:
    """Send a Study Root C-FIND on *assoc* and collect the matches.

    With *limit*, a C-CANCEL-RQ goes out once that many matches arrived; the responses still in
    flight are read (and dropped) until the final one, within the DIMSE timeout. Raises
    PermanentError when the peer did not accept Study Root FIND, AssociationAborted on failure.
    """
    exchange = PendingExchange(assoc, STUDY_ROOT_FIND, "FIND")
    exchange.send(C_FIND_RQ, assoc.next_message_id(), identifier)
    out = FindResult()
    while True:
        try:
            message = exchange.receive()
        except AssociationAborted:
            if out.cancelled:  # the peer did not confirm the cancel; what we have stands
                out.truncated = True
                return out
            raise
        code = exchange.status(message, "C-FIND-RSP")
        if is_pending(code):
            if code == st.PENDING_WARNING:
                out.partial_keys += 1
            if out.cancelled:
                out.truncated = True
                continue
            if message.dataset is not None:
                try:
                    out.matches.append(decode_identifier(message.dataset, exchange.transfer_syntax))
                except ValueError:
                    out.undecodable += 1
            reached = limit is not None and len(out.matches) >= limit
            if reached or (stop is not None and stop):
                exchange.cancel()
                out.cancelled = True
            continue
        out.status = code
        out.error_comment = error_comment(message.command)
        if out.cancelled and code == st.CANCEL:
            out.truncated = True
        return out
