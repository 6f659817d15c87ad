"""C-ECHO (Verification SCU): the interactive "can I talk to this peer" check."""

from __future__ import annotations

import time

from ctnode.dicom import status
from ctnode.dicom.contexts import BASIC_SYNTAXES, VERIFICATION
from ctnode.errors import PermanentError
from ctnode.ul.dimse import C_ECHO_RQ
from ctnode.ul.requestor import AssociationParams, ContextRequest, Requestor

ECHO_CONTEXTS = (ContextRequest(VERIFICATION, BASIC_SYNTAXES),)


def echo(params: AssociationParams) -> float:
    """Associate, C-ECHO, release; returns the round trip in milliseconds.

    Raises PeerUnreachable, AssociationRejected, AssociationAborted, or PermanentError when the
    peer refuses Verification or answers a failure status.
    """
    started = time.monotonic()
    with Requestor(params) as assoc:
        ctx = assoc.context_for(VERIFICATION)
        if ctx is None:
            raise PermanentError(f"{assoc.peer_label} does not accept Verification (C-ECHO)")
        rsp = assoc.request(
            ctx.context_id, {"AffectedSOPClassUID": VERIFICATION, "CommandField": C_ECHO_RQ}
        )
        code = rsp.command.get_int("Status")
        if code != status.SUCCESS:
            raise PermanentError(f"{assoc.peer_label} answered C-ECHO with {status.describe(code)}")
    return (time.monotonic() - started) * 1000
