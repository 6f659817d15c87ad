"""An outbound association (association requestor): open, exchange messages, release or abort.

PS3.8 9.2 as the requestor: A-ASSOCIATE (request, then accept/reject/abort), P-DATA (request
and response, and requests the peer sends back on the same association, such as a storage
commitment N-EVENT-REPORT), A-RELEASE (including a release collision, 9.2.2) and A-ABORT. The
pieces it composes: ``ul.connect`` (TCP and TLS), ``ul.negotiation`` (the request and what the
answer means), ``ul.pdata`` (sending a message, files without copies), ``ul.reassembly``
(receiving one, in order and bounded), ``ul.params`` (what it is opened with).

Synchronous and single-threaded by design: one request at a time, each response read by the
thread that sent the request (there is no reactor thread to race with, so a fast peer's response
cannot be lost). Every failure is a typed ctnode error: ``PeerUnreachable`` (connect),
``AssociationRejected`` (A-ASSOCIATE-RJ, with result/source/reason), ``AssociationAborted``
(A-ABORT, reset, timeout, protocol violation by the peer).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Self

from ctnode.errors import AssociationAborted, AssociationRejected, PeerUnreachable
from ctnode.ul import pdu as P
from ctnode.ul.connect import connect, wrap_tls
from ctnode.ul.dimse import Command, CommandError, encode_command
from ctnode.ul.negotiation import (
    ContextRequest,
    Negotiated,
    associate_rq,
    describe_rejection,
    outcome,
)
from ctnode.ul.params import AssociationObserver, AssociationParams, Timeouts
from ctnode.ul.pdata import FileReadError, FileSegment, PDataWriter
from ctnode.ul.reassembly import (
    MESSAGES_WITHOUT_DATASET,
    DatasetTooLarge,
    FragmentError,
    Message,
    Reassembly,
)
from ctnode.ul.transport import (
    PduReader,
    PeerClosed,
    ReadTimeout,
    close_gracefully,
    send_all,
)


class Requestor:
    """One outbound association. Use as a context manager (released or aborted on exit)."""

    def __init__(self, params: AssociationParams) -> None:
        if not params.contexts:
            raise ValueError("an association needs at least one presentation context")
        if len(params.contexts) > 128:
            raise ValueError("at most 128 presentation contexts can be proposed")
        self.params = params
        self.sock: socket.socket | None = None
        self.reader: PduReader | None = None
        self.negotiated: list[Negotiated] = []
        self.peer_max_pdu = 0
        self.peer_roles: dict[str, P.RoleSelection] = {}
        self._next_message_id = 1
        self._open_observed = False
        self._writer = PDataWriter()
        self.released = False
        #: Called for a request the peer sends us on this association (e.g. N-EVENT-REPORT).
        self.on_request: Callable[[Message], dict[str, object] | None] | None = None

    @property
    def peer_label(self) -> str:
        """``PACS@10.0.0.5:104`` for messages."""
        p = self.params
        return f"{p.called_ae}@{p.host}:{p.port}"

    # -- open ------------------------------------------------------------------------

    def open(self) -> Self:
        """Connect and negotiate; raises PeerUnreachable, AssociationRejected/Aborted."""
        p = self.params
        try:
            sock = connect(p.host, p.port, p.timeouts.connect)
        except PeerUnreachable:
            self._observe_failure("unreachable")
            raise
        if p.ssl_context is not None:
            server_name = p.server_name or p.host
            sock = wrap_tls(sock, p.ssl_context, server_name, f"{p.host}:{p.port}", p.timeouts.acse)
        self.sock = sock
        self.reader = PduReader(sock, max(p.max_pdu_length, 1 << 20), p.timeouts.network)
        rq = associate_rq(p.calling_ae, p.called_ae, p.contexts, p.max_pdu_length, p.roles)
        try:
            self._send(P.encode_associate_rq(rq), p.timeouts.acse)
            pdu_type, body = self.reader.read_pdu(first_timeout=p.timeouts.acse)
        except (OSError, PeerClosed, ReadTimeout, P.PDUError) as exc:
            self._close()
            self._observe_failure("aborted")
            raise AssociationAborted(
                f"{self.peer_label} did not answer the association request: {exc}"
            ) from exc
        if pdu_type == P.A_ASSOCIATE_RJ:
            rj = P.decode_associate_rj(bytes(body))
            self._close()
            self._observe_failure("rejected")
            raise AssociationRejected(
                f"{self.peer_label} rejected the association: "
                + describe_rejection(rj.result, rj.source, rj.reason),
                result=rj.result,
                source=rj.source,
                reason=rj.reason,
            )
        if pdu_type == P.A_ABORT:
            self._close()
            self._observe_failure("aborted")
            raise AssociationAborted(f"{self.peer_label} aborted the association request")
        if pdu_type != P.A_ASSOCIATE_AC:
            self.abort()
            self._observe_failure("aborted")
            raise AssociationAborted(
                f"{self.peer_label} answered the association request with PDU 0x{pdu_type:02X}"
            )
        ac = P.decode_associate_ac(bytes(body))
        self.peer_max_pdu = ac.user.max_pdu_length
        self.peer_roles = {r.sop_class_uid: r for r in ac.user.roles}
        self.negotiated = outcome(rq, ac)
        self._open_observed = True
        if p.observer is not None:
            p.observer.outbound_opened(p.label)
        return self

    def _observe_failure(self, result: str) -> None:
        if self.params.observer is not None:
            self.params.observer.outbound_ended(self.params.label, result, was_open=False)

    def __enter__(self) -> Self:
        return self.open() if self.sock is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.sock is None:
            return
        if exc is None:
            try:
                self.release()
            except (AssociationAborted, OSError):
                self._close()
        else:
            self.abort()

    # -- contexts ----------------------------------------------------------------------

    def accepted_contexts(self) -> list[Negotiated]:
        """Contexts the peer accepted."""
        return [n for n in self.negotiated if n.accepted]

    def context_for(
        self, abstract_syntax: str, syntaxes: Iterable[str] | None = None
    ) -> Negotiated | None:
        """An accepted context for *abstract_syntax* (with one of *syntaxes*, in order)."""
        candidates = [
            n for n in self.negotiated if n.accepted and n.abstract_syntax == abstract_syntax
        ]
        if syntaxes is None:
            return candidates[0] if candidates else None
        for syntax in syntaxes:
            for n in candidates:
                if n.transfer_syntax == syntax:
                    return n
        return None

    # -- messages ------------------------------------------------------------------------

    def next_message_id(self) -> int:
        """A message ID for the next request (1..65535, wrapping)."""
        mid = self._next_message_id
        self._next_message_id = mid % 65535 + 1
        return mid

    def _send(self, data: bytes | memoryview, timeout: float) -> None:
        assert self.sock is not None
        send_all(self.sock, data, timeout)

    def send(
        self,
        context_id: int,
        fields: Mapping[str, object],
        dataset: bytes | memoryview | FileSegment | None = None,
    ) -> None:
        """Send a command (and data set) in P-DATA-TF PDUs within the peer's maximum length
        (PS3.8 D.1), in fragments of even length (PS3.8 Annex E, ``P.pdv_capacity``). A data set
        of odd length (a deflated stream, PS3.5 A.5) goes out padded with one 0x00 (PS3.5 7.1).

        A ``FileSegment`` is streamed from disk (``ul.pdata``: no whole-file copy in
        memory). OSError while reading the file propagates as is (the association is aborted);
        network errors become AssociationAborted.
        """
        if dataset is not None:
            fields = {**fields, "CommandDataSetType": 0x0000}
        else:
            fields = {**fields, "CommandDataSetType": 0x0101}
        assert self.sock is not None
        max_fragment = P.pdv_capacity(self.peer_max_pdu or (1 << 20))
        try:
            command = encode_command(fields)  # type: ignore[arg-type]
            self._writer.write(
                self.sock, context_id, command, dataset, max_fragment, self.params.timeouts.network
            )
        except FileReadError as exc:
            self.abort()
            raise exc.__cause__ from None  # type: ignore[misc]
        except OSError as exc:
            self._close()
            raise AssociationAborted(f"connection to {self.peer_label} failed: {exc}") from exc

    def receive(self, timeout: float | None = None) -> Message:
        """The next complete message from the peer (raises AssociationAborted on failure)."""
        assert self.reader is not None
        wait = self.params.timeouts.dimse if timeout is None else timeout
        messages = Reassembly()
        command: Command | None = None
        dataset = bytearray()
        try:
            while True:
                pdu_type, body = self.reader.read_pdu(first_timeout=wait)
                if pdu_type == P.P_DATA_TF:
                    for context_id, control, data in P.iter_pdvs(body):
                        if control & 1:
                            command = messages.command_fragment(context_id, data, bool(control & 2))
                            if command is None:
                                continue
                            if not command.has_dataset:
                                return Message(context_id, command, None)
                            self._check_dataset_allowed(command)
                            limit = self.params.max_response_dataset_bytes
                            messages.expect_dataset(context_id, limit)
                        else:
                            messages.dataset_fragment(context_id, len(data), bool(control & 2))
                            dataset += data
                            if control & 2:
                                assert command is not None  # dataset_fragment checked
                                return Message(context_id, command, bytes(dataset))
                elif pdu_type == P.A_ABORT:
                    abort = P.decode_abort(bytes(body))
                    self._close()
                    raise AssociationAborted(
                        f"{self.peer_label} aborted the association "
                        f"(source {abort.source}, reason {abort.reason})"
                    )
                elif pdu_type == P.A_RELEASE_RQ:
                    self._send(P.encode_release_rp(), self.params.timeouts.network)
                    self._close(linger=0.05)
                    raise AssociationAborted(f"{self.peer_label} released the association early")
                else:
                    raise AssociationAborted(
                        f"{self.peer_label} sent unexpected PDU 0x{pdu_type:02X}"
                    )
        except ReadTimeout as exc:
            self.abort()
            raise AssociationAborted(
                f"no response from {self.peer_label} within {wait:g} s (DIMSE timeout)"
            ) from exc
        except (PeerClosed, OSError) as exc:
            self._close()
            raise AssociationAborted(f"{self.peer_label} closed the connection: {exc}") from exc
        except DatasetTooLarge as exc:
            self.abort()
            assert command is not None
            raise AssociationAborted(
                f"{self.peer_label} sent a {command.name} data set larger than {exc.limit} bytes "
                "(node.max_response_dataset_bytes); raise that setting if this peer's responses "
                "are legitimately larger"
            ) from exc
        except (P.PDUError, CommandError, FragmentError) as exc:
            self.abort()
            raise AssociationAborted(f"{self.peer_label} sent a malformed message: {exc}") from exc
        except AssociationAborted:
            self.abort()
            raise

    def _check_dataset_allowed(self, cmd: Command) -> None:
        """AssociationAborted if *cmd* announces a data set its message never carries."""
        if cmd.get("CommandField") in MESSAGES_WITHOUT_DATASET:
            raise AssociationAborted(
                f"{self.peer_label} sent a {cmd.name} announcing a data set, which PS3.7 does "
                "not allow for that message (a broken peer: its DICOM conformance needs fixing)"
            )

    def receive_response(self, message_id: int, timeout: float | None = None) -> Message:
        """The next response to *message_id*; requests from the peer go to ``on_request``."""
        while True:
            message = self.receive(timeout)
            field_value = message.command.get("CommandField", 0)
            assert isinstance(field_value, int)
            if field_value & 0x8000:
                if message.command.get("MessageIDBeingRespondedTo") != message_id:
                    self.abort()
                    raise AssociationAborted(
                        f"{self.peer_label} answered message "
                        f"{message.command.get('MessageIDBeingRespondedTo')}, expected {message_id}"
                    )
                return message
            self._answer(message, field_value)

    def _answer(self, message: Message, field_value: int) -> None:
        """Answer a request the peer sent us (``on_request``; 0x0211 without a handler)."""
        reply = self.on_request(message) if self.on_request else None
        if reply is None:
            reply = {
                "AffectedSOPClassUID": message.command.get("AffectedSOPClassUID"),
                "CommandField": field_value | 0x8000,
                "MessageIDBeingRespondedTo": message.command.get("MessageID", 0),
                "Status": 0x0211,
                "AffectedSOPInstanceUID": message.command.get("AffectedSOPInstanceUID"),
            }
        self.send(message.context_id, reply)

    def serve_peer_requests(self, idle: float, until: Callable[[], bool] = lambda: False) -> int:
        """Answer requests the peer sends on this association (e.g. a storage commitment
        N-EVENT-REPORT after the N-ACTION) until it is silent for *idle* seconds or *until()*
        holds. Returns how many were answered; a response the peer sends here is a protocol
        error (AssociationAborted), as is the peer closing the connection."""
        assert self.reader is not None
        served = 0
        while self.sock is not None and not until():
            try:
                if not self.reader.wait_readable(idle):
                    return served
            except (PeerClosed, OSError) as exc:
                self._close()
                raise AssociationAborted(f"{self.peer_label} closed the connection: {exc}") from exc
            message = self.receive()
            field_value = message.command.get("CommandField", 0)
            assert isinstance(field_value, int)
            if field_value & 0x8000:
                self.abort()
                raise AssociationAborted(
                    f"{self.peer_label} sent a response (0x{field_value:04X}) to no request"
                )
            self._answer(message, field_value)
            served += 1
        return served

    def request(
        self,
        context_id: int,
        fields: Mapping[str, object],
        dataset: bytes | memoryview | FileSegment | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Send a request and return its (first) response."""
        message_id = self.next_message_id()
        self.send(context_id, {**fields, "MessageID": message_id}, dataset)
        return self.receive_response(message_id, timeout)

    # -- end ----------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, wait for A-RELEASE-RP (bounded by the ACSE timeout), close. A peer's
        A-RELEASE-RQ meanwhile (a release collision) is answered and the wait goes on."""
        if self.sock is None:
            return
        assert self.reader is not None
        try:
            self._send(P.encode_release_rq(), self.params.timeouts.network)
            deadline = time.monotonic() + self.params.timeouts.acse
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadTimeout("no A-RELEASE-RP")
                pdu_type, _ = self.reader.read_pdu(first_timeout=left)
                if pdu_type in (P.A_RELEASE_RP, P.A_ABORT):
                    break
                if pdu_type == P.A_RELEASE_RQ:
                    # Release collision (PS3.8 9.2.2, Sta9): answer, then keep waiting for the
                    # peer's A-RELEASE-RP (Sta11) and close only once it has come (AR-3).
                    self._send(P.encode_release_rp(), self.params.timeouts.network)
            self.released = True
        except (OSError, PeerClosed, ReadTimeout, P.PDUError):
            pass
        finally:
            self._close()

    def abort(self) -> None:
        """Send A-ABORT (best effort) and close."""
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            self._send(P.encode_abort(P.ABORT_SOURCE_USER, 0), 2)
        self._close(linger=0.05)

    def _close(self, linger: float = 0.0) -> None:
        """Close the connection. By default at once: the peer's last PDU (A-RELEASE-RP,
        A-ASSOCIATE-RJ, A-ABORT) is read and, PS3.8 Sta13, the requestor closes while the
        acceptor waits for it. After sending the last PDU ourselves (A-ABORT, an A-RELEASE-RP to
        a peer's early release) *linger* lets the peer read it and close first."""
        sock, self.sock = self.sock, None
        if sock is not None:
            close_gracefully(sock, linger=linger)
        if self._open_observed:
            self._open_observed = False
            if self.params.observer is not None:
                result = "released" if self.released else "aborted"
                self.params.observer.outbound_ended(self.params.label, result, was_open=True)


__all__ = [
    "AssociationObserver",
    "AssociationParams",
    "ContextRequest",
    "FileSegment",
    "Message",
    "Negotiated",
    "Requestor",
    "Timeouts",
    "describe_rejection",
]
