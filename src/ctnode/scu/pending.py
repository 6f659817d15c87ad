"""The exchange C-FIND and C-MOVE share: one request on an accepted Study Root context,
answered by pending responses and then a final one, with a C-CANCEL-RQ once the caller asks
for it; after the cancel, the responses still in flight are read within the DIMSE timeout."""

from __future__ import annotations

import time

from pydicom.dataset import Dataset

from ctnode.dicom import status as st
from ctnode.errors import AssociationAborted, PermanentError
from ctnode.scu.identifier import encode_identifier
from ctnode.ul.dimse import C_CANCEL_RQ, Command
from ctnode.ul.requestor import Message, Negotiated, Requestor


def is_pending(code: int) -> bool:
    """A pending status (0xFF00, or 0xFF01: optional keys not supported)."""
    return code in (st.PENDING, st.PENDING_WARNING)


def error_comment(command: Command) -> str | None:
    """The response's Error Comment, if it has a non-empty one."""
    comment = command.get("ErrorComment")
    return comment if isinstance(comment, str) and comment else None


class PendingExchange:
    """One request and its responses (``send``, then ``receive`` until a final status)."""

    def __init__(self, assoc: Requestor, sop_class: str, service: str) -> None:
        """Raises PermanentError when the peer did not accept *sop_class* (named *service*:
        ``FIND``, ``MOVE``) with a transfer syntax."""
        ctx = assoc.context_for(sop_class)
        if ctx is None or ctx.transfer_syntax is None:
            raise PermanentError(
                f"{assoc.peer_label} does not accept Study Root Query/Retrieve {service} "
                "(presentation context rejected)"
            )
        self.assoc = assoc
        self.context: Negotiated = ctx
        self.transfer_syntax: str = ctx.transfer_syntax
        self.sop_class = sop_class
        self.message_id = 0
        #: We sent C-CANCEL-RQ; responses are read until ``_drain_deadline``.
        self.cancelled = False
        self._drain_deadline = 0.0

    def send(
        self, command_field: int, message_id: int, identifier: Dataset, **fields: object
    ) -> None:
        """Send the request (*fields* after the standard ones) with *identifier*."""
        self.message_id = message_id
        self.assoc.send(
            self.context.context_id,
            {
                "AffectedSOPClassUID": self.sop_class,
                "CommandField": command_field,
                "MessageID": message_id,
                "Priority": 0,
                **fields,
            },
            encode_identifier(identifier, self.transfer_syntax),
        )

    def receive(self) -> Message:
        """The next response (within what is left of the DIMSE timeout once cancelled)."""
        timeout = None
        if self.cancelled:
            timeout = max(0.1, self._drain_deadline - time.monotonic())
        return self.assoc.receive_response(self.message_id, timeout)

    def status(self, message: Message, response: str) -> int:
        """The response's Status (AssociationAborted naming the *response* without one)."""
        code = message.command.get("Status")
        if not isinstance(code, int):
            raise AssociationAborted(f"{self.assoc.peer_label} sent a {response} without Status")
        return code

    def cancel(self) -> None:
        """Send C-CANCEL-RQ; the remaining responses are read within the DIMSE timeout."""
        self.assoc.send(
            self.context.context_id,
            {"CommandField": C_CANCEL_RQ, "MessageIDBeingRespondedTo": self.message_id},
        )
        self.cancelled = True
        self._drain_deadline = time.monotonic() + self.assoc.params.timeouts.dimse
