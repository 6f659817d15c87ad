"""Requests from the acceptor to the requestor on an accepted association (PS3.7 9.1.2, 10.1.1).

Some services make the node that accepted an association send requests on it and read their
responses: C-GET (C-STORE sub-operations go back to the requestor, which took the SCP role for
the storage classes, PS3.4 C.4.3), storage commitment (an N-EVENT-REPORT on the association that
carried the N-ACTION, PS3.4 J.3.3). A handler does this through the ``PeerRequests`` object the
acceptor puts in ``AssociationInfo.requests``:

* ``request(context_id, fields, dataset)`` sends a request (a Message ID of ours is assigned)
  and returns its response, reading the association until it comes;
* ``respond(context_id, fields, dataset)`` sends a response now (the pending C-FIND/C-GET/
  C-MOVE-RSPs that come before a handler's final one);
* ``poll()`` takes what the peer sent meanwhile without waiting, so that ``cancelled(id)`` sees
  a C-CANCEL-RQ that arrived between two sub-operations.

Handlers run in the association's own thread, inside the acceptor's read loop, so waiting here
blocks nothing but this association. While a handler waits, everything else the peer sends is
processed as usual by the acceptor (a C-CANCEL-RQ is noted for ``cancelled``; another request is
answered by the application); a response goes to the request it answers (a response to nothing
aborts the association, as before). The association ending meanwhile (A-RELEASE-RQ, A-ABORT, the
connection closing) raises ``PeerGone`` out of the wait; a silent peer, the acceptor's usual
timeout (the association is aborted). Data sets go out as ``ul.pdata`` sends them: even-length
fragments, an odd data set padded (PS3.5 7.1), a ``FileSegment`` streamed from disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ctnode.ul.dimse import Command, CommandValue, encode_command
from ctnode.ul.pdata import FileSegment
from ctnode.ul.reassembly import Message

Dataset = bytes | memoryview | FileSegment


class PeerGone(Exception):
    """The association ended (released, aborted, closed) while a handler was using it."""


class Link(Protocol):
    """What ``PeerRequests`` needs of the acceptor (``ul.acceptor``)."""

    def send_dimse(self, context_id: int, command: bytes, dataset: Dataset | None) -> None:
        """Send an encoded command set and its data set as P-DATA-TF PDUs."""

    def read_next(self, timeout: float) -> None:
        """Read and process one PDU (waiting up to *timeout* for it); PeerGone if the
        association ended."""

    def has_input(self) -> bool:
        """True if a PDU has started to arrive (nothing is consumed)."""

    def stopping(self) -> bool:
        """True once the node is shutting down."""


class PeerRequests:
    """Requests the acceptor sends on its association, and the C-CANCELs it receives."""

    def __init__(self, link: Link, response_timeout: float) -> None:
        self._link = link
        #: How long ``request`` waits for a response (the acceptor's DIMSE timeout).
        self.response_timeout = response_timeout
        self._next_id = 1
        self._awaited: set[int] = set()
        self._responses: dict[int, Message] = {}
        self._cancels: set[int] = set()

    # -- for handlers ------------------------------------------------------------------

    def next_message_id(self) -> int:
        """A Message ID for a request of ours (1..65535; the peer's IDs are its own)."""
        message_id = self._next_id
        self._next_id = message_id % 65535 + 1
        return message_id

    def send_request(
        self,
        context_id: int,
        fields: Mapping[str, CommandValue | None],
        dataset: Dataset | None = None,
    ) -> int:
        """Send a request; returns its Message ID (give it to ``wait_response``)."""
        message_id = self.next_message_id()
        self._awaited.add(message_id)
        self._send(context_id, {**fields, "MessageID": message_id}, dataset)
        return message_id

    def wait_response(self, message_id: int, timeout: float | None = None) -> Message:
        """The response to request *message_id*, reading the association until it comes.

        Every PDU read meanwhile is processed by the acceptor as usual. PeerGone if the
        association ends first; the acceptor's timeout error if nothing arrives for *timeout*
        seconds (default ``response_timeout``).
        """
        wait = self.response_timeout if timeout is None else timeout
        try:
            while message_id not in self._responses:
                self._link.read_next(wait)
        finally:
            self._awaited.discard(message_id)
        return self._responses.pop(message_id)

    def request(
        self,
        context_id: int,
        fields: Mapping[str, CommandValue | None],
        dataset: Dataset | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Send a request and return its response (``send_request`` + ``wait_response``)."""
        return self.wait_response(self.send_request(context_id, fields, dataset), timeout)

    def respond(
        self,
        context_id: int,
        fields: Mapping[str, CommandValue | None],
        dataset: Dataset | None = None,
    ) -> None:
        """Send a response now (a pending one; the final one is the handler's ``Reply``)."""
        self._send(context_id, fields, dataset)

    def poll(self) -> None:
        """Process whatever the peer has sent so far, without waiting (PeerGone if it ended)."""
        while self._link.has_input():
            # A PDU has started to arrive: read it (bounded by the usual timeout).
            self._link.read_next(self.response_timeout)

    def cancelled(self, message_id: int) -> bool:
        """True once a C-CANCEL-RQ for the peer's request *message_id* has been read."""
        return message_id in self._cancels

    @property
    def stopping(self) -> bool:
        """True once the node is shutting down (a long handler should finish early)."""
        return self._link.stopping()

    # -- for the acceptor -------------------------------------------------------------

    def awaits(self, message_id: int) -> bool:
        """True if a response to our request *message_id* is being waited for."""
        return message_id in self._awaited

    def deliver(self, message: Message) -> None:
        """A response to one of our requests arrived (complete, with its data set if any)."""
        responded_to = message.command.get("MessageIDBeingRespondedTo")
        assert isinstance(responded_to, int)
        self._responses[responded_to] = message

    def note_cancel(self, message_id: int) -> None:
        """The peer sent C-CANCEL-RQ for its request *message_id*."""
        self._cancels.add(message_id)

    def forget(self, message_id: int) -> None:
        """The peer's request *message_id* is answered: a late C-CANCEL for it is moot."""
        self._cancels.discard(message_id)

    def _send(
        self,
        context_id: int,
        fields: Mapping[str, CommandValue | None],
        dataset: Dataset | None,
    ) -> None:
        values = dict(fields)
        values["CommandDataSetType"] = 0x0101 if dataset is None else 0x0000
        self._link.send_dimse(context_id, encode_command(values), dataset)


class ResponseSink:
    """Collects the data set of a response to one of our requests (bounded by the acceptor's
    reassembly), then hands the complete message to ``PeerRequests.deliver``."""

    def __init__(self, requests: PeerRequests, context_id: int, command: Command) -> None:
        self._requests = requests
        self._message = Message(context_id, command, None)
        self._buf = bytearray()

    def write(self, data: memoryview) -> None:
        """Take the next fragment."""
        self._buf += data

    def complete(self) -> None:
        """The data set is complete: the response is delivered (no reply to a response)."""
        self._message.dataset = bytes(self._buf)
        self._requests.deliver(self._message)

    def abort(self) -> None:
        """The association ended before the data set completed."""
        self._buf.clear()


__all__ = ["Dataset", "Link", "PeerGone", "PeerRequests", "ResponseSink"]
