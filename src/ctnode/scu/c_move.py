"""The C-MOVE exchange (Study Root): send the request with its move destination, report the
pending responses' counts, cancel past the deadline or when asked to stop, and read the final
response (its counts, Failed SOP Instance UID List and Error Comment)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydicom.dataset import Dataset

from ctnode.dicom.contexts import STUDY_ROOT_MOVE
from ctnode.dicom.uids import is_valid_uid
from ctnode.queue.attempt import StopFlag
from ctnode.scu.identifier import decode_identifier
from ctnode.scu.move_outcome import Counts, MoveFinal
from ctnode.scu.pending import PendingExchange, error_comment, is_pending
from ctnode.ul.dimse import C_MOVE_RQ
from ctnode.ul.requestor import Requestor

#: At most this many failed SOP Instance UIDs are kept from one response.
MAX_FAILED_UIDS = 10000


def c_move(
    assoc: Requestor,
    identifier: Dataset,
    destination: str,
    message_id: int,
    *,
    deadline: float,
    stop: StopFlag | None = None,
    on_pending: Callable[[Counts], None] = lambda _counts: None,
) -> MoveFinal:
    """Send a Study Root C-MOVE with *message_id* and read responses until the final one.

    Once pending responses are still coming after *deadline* (monotonic), or *stop* is set, a
    C-CANCEL-RQ goes out and the remaining responses are read within the DIMSE timeout.
    """
    exchange = PendingExchange(assoc, STUDY_ROOT_MOVE, "MOVE")
    exchange.send(C_MOVE_RQ, message_id, identifier, MoveDestination=destination)
    cancelled: str | None = None
    while True:
        message = exchange.receive()
        code = exchange.status(message, "C-MOVE-RSP")
        counts = Counts.from_command(message.command)
        if is_pending(code):
            on_pending(counts)
            if cancelled is None:
                if stop is not None and stop:
                    cancelled = "stopped"
                elif time.monotonic() > deadline:
                    cancelled = "move_total"
                if cancelled is not None:
                    exchange.cancel()
            continue
        failed_uids: list[str] = []
        if message.dataset:
            try:
                ds = decode_identifier(message.dataset, exchange.transfer_syntax)
                value = ds.get("FailedSOPInstanceUIDList")
                if value:
                    values = [value] if isinstance(value, str) else list(value)
                    failed_uids = [str(v) for v in values if is_valid_uid(str(v))]
            except ValueError:
                pass
        return MoveFinal(
            code, counts, failed_uids[:MAX_FAILED_UIDS], cancelled, error_comment(message.command)
        )
