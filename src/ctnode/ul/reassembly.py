"""Putting inbound DIMSE messages back together from their PDVs, in order and within bounds.

PS3.8 9.3.5 and Annex E: a message is its command set's fragments (control bit 0 set), then, if
the command announces one, its data set's fragments, all on one presentation context, each part
ending with a fragment whose "last" bit (bit 1) is set. PS3.8 9.3.8 / 9.3.1: a fragment out of
that order is a protocol violation (A-ABORT). The bounds of ``ul/limits.py`` keep what a peer
can make us hold in memory finite: a command set over ``MAX_COMMAND_BYTES``, or a data set over
the bound the caller gives, is refused as soon as the fragment that crosses it arrives.

Shared by the acceptor (which streams each data set fragment to a sink) and the requestor (which
keeps a response's small data set in memory): this module only decides whether a fragment may
come now; where its bytes go is the caller's business. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctnode.ul import pdu as P
from ctnode.ul.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RSP,
    N_DELETE_RQ,
    N_DELETE_RSP,
    N_GET_RQ,
    Command,
    decode_command,
)
from ctnode.ul.limits import MAX_COMMAND_BYTES

#: Requests PS3.7 defines without a data set (Command Data Set Type 0101H): C-ECHO-RQ (9.3.5),
#: C-CANCEL-RQ (9.3.2.3), N-GET-RQ (10.3.2), N-DELETE-RQ (10.3.6). One announcing a data set is
#: a protocol violation (the acceptor aborts, 2/6).
REQUESTS_WITHOUT_DATASET = frozenset({C_ECHO_RQ, C_CANCEL_RQ, N_GET_RQ, N_DELETE_RQ})
#: Messages that never carry a data set (PS3.7 9.3 and 10.3: C-ECHO, the C-STORE response,
#: C-CANCEL, the N-GET request, N-DELETE); one that announces one is a protocol violation. A
#: pending C-FIND-RSP (identifier), a C-MOVE/C-GET-RSP (failed SOP instance list) and the
#: N-EVENT-REPORT/N-ACTION messages may carry one (the requestor bounds it).
MESSAGES_WITHOUT_DATASET = REQUESTS_WITHOUT_DATASET | {C_ECHO_RSP, C_STORE_RSP, N_DELETE_RSP}


@dataclass(slots=True)
class Message:
    """A received DIMSE message."""

    context_id: int
    command: Command
    dataset: bytes | None = None


class FragmentError(Exception):
    """A PDV out of order or beyond a bound: the message says which, *reason* is the A-ABORT
    reason to send (PS3.8 9.3.8: 2 unexpected PDU, 6 invalid PDU parameter value)."""

    def __init__(self, why: str, reason: int) -> None:
        super().__init__(why)
        self.reason = reason


class DatasetTooLarge(FragmentError):
    """A data set grew past the bound its message was given (*limit* bytes)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"data set larger than {limit} bytes", P.ABORT_INVALID_PARAMETER)
        self.limit = limit


class Reassembly:
    """The message being received on one association: its command set so far, or the data set
    its command announced (how many bytes so far, and their bound).

    Per fragment: ``command_fragment`` or ``dataset_fragment``, which raise ``FragmentError``
    for a fragment that may not come now; after a command announcing a data set, the caller
    calls ``expect_dataset`` (or aborts). ``CommandError`` from decoding propagates.
    """

    __slots__ = ("_command", "_context_id", "_dataset_bytes", "_dataset_limit", "_expecting")

    def __init__(self) -> None:
        self._command = bytearray()
        #: Presentation context of the message under way (None: between messages).
        self._context_id: int | None = None
        self._expecting = False
        self._dataset_bytes = 0
        self._dataset_limit: int | None = None

    @property
    def idle(self) -> bool:
        """True between messages (no fragment of an unfinished message has arrived)."""
        return not (self._expecting or self._command)

    @property
    def expecting_dataset(self) -> bool:
        """True while the data set a command announced is coming."""
        return self._expecting

    def command_fragment(self, context_id: int, data: memoryview, last: bool) -> Command | None:
        """Take a command fragment; the decoded command once its *last* fragment has come."""
        if self._expecting:
            raise FragmentError(
                "command fragment while a data set was expected", P.ABORT_UNEXPECTED_PDU
            )
        if self._context_id is not None and self._context_id != context_id:
            raise FragmentError(
                "command fragments on two presentation contexts", P.ABORT_INVALID_PARAMETER
            )
        self._context_id = context_id
        self._command += data
        if len(self._command) > MAX_COMMAND_BYTES:
            raise FragmentError(
                f"command set larger than {MAX_COMMAND_BYTES} bytes (a real one is under 1 KiB)",
                P.ABORT_INVALID_PARAMETER,
            )
        if not last:
            return None
        command = decode_command(bytes(self._command))
        self._command.clear()
        self._context_id = None
        return command

    def expect_dataset(self, context_id: int, limit: int | None) -> None:
        """The command just completed on *context_id* announces a data set: its fragments may
        come now, *limit* bytes of them at most (None: unbounded, e.g. streamed to disk)."""
        self._context_id = context_id
        self._expecting = True
        self._dataset_bytes = 0
        self._dataset_limit = limit

    def dataset_fragment(self, context_id: int, size: int, last: bool) -> None:
        """Account for a data set fragment of *size* bytes (the caller keeps the bytes)."""
        if not self._expecting or context_id != self._context_id:
            raise FragmentError(
                "data set fragment without a command announcing it", P.ABORT_UNEXPECTED_PDU
            )
        self._dataset_bytes += size
        if self._dataset_limit is not None and self._dataset_bytes > self._dataset_limit:
            raise DatasetTooLarge(self._dataset_limit)
        if last:
            self._expecting = False
            self._context_id = None
