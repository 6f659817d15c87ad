"""An outbound association (association requestor): connect, negotiate, exchange, release.

Synchronous and single-threaded by design: one request at a time, each response read by the
thread that sent the request (there is no reactor thread to race with, so a fast peer's response
cannot be lost). Every failure is a typed ctnode error: ``PeerUnreachable`` (connect),
``AssociationRejected`` (A-ASSOCIATE-RJ, with result/source/reason), ``AssociationAborted``
(A-ABORT, reset, timeout, protocol violation by the peer).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from ctnode.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ctnode.errors import AssociationAborted, AssociationRejected, PeerUnreachable
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
    CommandError,
    decode_command,
    encode_command,
)
from ctnode.ul.limits import MAX_COMMAND_BYTES, MAX_SMALL_DATASET
from ctnode.ul.transport import (
    PduReader,
    PeerClosed,
    ReadTimeout,
    close_gracefully,
    set_socket_options,
)

RJ_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


#: Messages that never carry a data set (PS3.7 9.3 and 10.3: C-ECHO, the C-STORE response,
#: C-CANCEL, the N-GET request, N-DELETE); one that announces one is a protocol violation. A
#: pending C-FIND-RSP (identifier), a C-MOVE/C-GET-RSP (failed SOP instance list) and the
#: N-EVENT-REPORT/N-ACTION messages may carry one, bounded by ``max_response_dataset_bytes``.
NO_DATASET_COMMANDS = frozenset(
    {C_ECHO_RQ, C_ECHO_RSP, C_STORE_RSP, C_CANCEL_RQ, N_GET_RQ, N_DELETE_RQ, N_DELETE_RSP}
)


class FileReadError(Exception):
    """Internal: reading the file being sent failed (the cause is the OSError)."""


#: Most PDUs laid out per window (one iovec each; Linux allows 1024).
MAX_IOV = 512
#: A P-DATA-TF PDU header with its one PDV item header: type, reserved, PDU length, item
#: length, context id, control byte.
_HEADER_FULL = struct.Struct(">BBLLBB")


def _read_exactly(fd: int, buffers: list[memoryview], want: int, offset: int, path: str) -> None:
    """Fill *buffers* (*want* bytes in all) from *fd* at *offset*; FileReadError if the file
    is shorter or cannot be read."""
    done = 0
    while done < want:
        try:
            got = os.preadv(fd, buffers, offset + done)
        except OSError as exc:
            raise FileReadError from exc
        if got == 0:
            raise FileReadError from OSError(f"{path} is shorter than expected")
        done += got
        if done < want:  # rare (signals, odd filesystems): skip what was read
            rest: list[memoryview] = []
            skip = got
            for view in buffers:
                if skip >= len(view):
                    skip -= len(view)
                    continue
                rest.append(view[skip:])
                skip = 0
            buffers = rest


def describe_rejection(result: int, source: int, reason: int) -> str:
    """``called AE title not recognised (result 1, source 1, reason 7)``."""
    text = RJ_REASONS.get((source, reason), "reason unknown")
    kind = "permanent" if result == 1 else "transient"
    return f"{text} ({kind}: result {result}, source {source}, reason {reason})"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each phase of an outbound association."""

    connect: float = 10
    acse: float = 30
    dimse: float = 60
    network: float = 60


@dataclass(frozen=True, slots=True)
class ContextRequest:
    """A presentation context to propose."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(slots=True)
class Message:
    """A received DIMSE message."""

    context_id: int
    command: Command
    dataset: bytes | None = None


@dataclass(slots=True)
class Negotiated:
    """Outcome of negotiation for one proposed context."""

    context_id: int
    abstract_syntax: str
    proposed: tuple[str, ...]
    result: int
    transfer_syntax: str | None

    @property
    def accepted(self) -> bool:
        """True if the peer accepted the context."""
        return self.result == 0


@dataclass(frozen=True, slots=True)
class FileSegment:
    """A data set to send straight from a file: *length* bytes at *offset* of *path*."""

    path: str
    offset: int
    length: int


class AssociationObserver(Protocol):
    """Told when outbound associations open and end (metrics)."""

    def outbound_opened(self, peer: str) -> None:
        """An association to *peer* was established."""

    def outbound_ended(self, peer: str, result: str, *, was_open: bool) -> None:
        """An association to *peer* ended (or never opened) with *result*."""


@dataclass(slots=True)
class AssociationParams:
    """Everything needed to open an association."""

    host: str
    port: int
    calling_ae: str
    called_ae: str
    contexts: Sequence[ContextRequest]
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_pdu_length: int = 262144
    roles: Sequence[P.RoleSelection] = ()
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None
    #: Peer name for metrics (low cardinality), and who to tell.
    label: str = "unknown"
    observer: AssociationObserver | None = None
    #: Largest data set accepted in one message from the peer (``MAX_SMALL_DATASET``).
    max_response_dataset_bytes: int = MAX_SMALL_DATASET


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
        self._pdu_buf = bytearray()
        self._layout: list[memoryview] = []
        self._layout_key: tuple[int, int] | None = None
        #: (context id, PDU data size) of the full headers in slots [0, _headers_valid).
        self._headers_key: tuple[int, int] | None = None
        self._headers_valid = 0
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
            raw = socket.create_connection((p.host, p.port), timeout=p.timeouts.connect)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {p.timeouts.connect:g} s"
            self._observe_failure("unreachable")
            raise PeerUnreachable(f"cannot connect to {p.host}:{p.port}: {reason}") from exc
        set_socket_options(raw)
        sock: socket.socket = raw
        if p.ssl_context is not None:
            try:
                raw.settimeout(p.timeouts.acse)
                sock = p.ssl_context.wrap_socket(raw, server_hostname=p.server_name or p.host)
            except (ssl.SSLError, OSError) as exc:
                raw.close()
                reason = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else ""
                raise PeerUnreachable(
                    f"TLS handshake with {p.host}:{p.port} failed: "
                    + (f"certificate verify failed: {reason}" if reason else str(exc))
                    + " (check the peer's tls settings: ca, cert, key, server_name)"
                ) from exc
        self.sock = sock
        self.reader = PduReader(sock, max(p.max_pdu_length, 1 << 20), p.timeouts.network)
        contexts = [
            P.PresentationContextRQ(2 * i + 1, c.abstract_syntax, c.transfer_syntaxes)
            for i, c in enumerate(p.contexts)
        ]
        rq = P.AssociateRQ(
            called_ae=p.called_ae,
            calling_ae=p.calling_ae,
            contexts=contexts,
            user=P.UserInformation(
                max_pdu_length=p.max_pdu_length,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                roles=list(p.roles),
            ),
        )
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
        answers = {c.context_id: c for c in ac.contexts}
        for ctx in contexts:
            answer = answers.get(ctx.context_id)
            result = answer.result if answer is not None else 2
            syntax = answer.transfer_syntax if answer is not None and result == 0 else None
            self.negotiated.append(
                Negotiated(
                    ctx.context_id, ctx.abstract_syntax, ctx.transfer_syntaxes, result, syntax
                )
            )
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
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def _sendmsg(self, parts: list[bytes | memoryview], timeout: float) -> None:
        assert self.sock is not None
        if isinstance(self.sock, ssl.SSLSocket):
            self._send(b"".join(bytes(p) for p in parts), timeout)
            return
        self.sock.settimeout(timeout)
        total = sum(len(p) for p in parts)
        sent = self.sock.sendmsg(parts)
        if sent < total:
            joined = memoryview(b"".join(bytes(p) for p in parts))
            self.sock.sendall(joined[sent:])

    def send(
        self,
        context_id: int,
        fields: Mapping[str, object],
        dataset: bytes | memoryview | FileSegment | None = None,
    ) -> None:
        """Send a command (and data set) in P-DATA-TF PDUs within the peer's maximum length
        (PS3.8 D.1), in fragments of even length (PS3.8 Annex E, ``P.pdv_capacity``). A data set
        of odd length (a deflated stream, PS3.5 A.5) goes out padded with one 0x00 (PS3.5 7.1).

        A ``FileSegment`` is streamed from disk one PDU at a time (no whole-file copy in
        memory). OSError while reading the file propagates as is (the association is aborted);
        network errors become AssociationAborted.
        """
        if dataset is not None:
            fields = {**fields, "CommandDataSetType": 0x0000}
        else:
            fields = {**fields, "CommandDataSetType": 0x0101}
        timeout = self.params.timeouts.network
        max_fragment = P.pdv_capacity(self.peer_max_pdu or (1 << 20))
        try:
            command = encode_command(fields)  # type: ignore[arg-type]
            self._send_fragments(context_id, memoryview(command), True, max_fragment, timeout)
            if isinstance(dataset, FileSegment):
                self._send_file(context_id, dataset, max_fragment, timeout)
            elif dataset is not None:
                self._send_fragments(context_id, memoryview(dataset), False, max_fragment, timeout)
        except FileReadError as exc:
            self.abort()
            raise exc.__cause__ from None  # type: ignore[misc]
        except OSError as exc:
            self._close()
            raise AssociationAborted(f"connection to {self.peer_label} failed: {exc}") from exc

    def _send_file(self, context_id: int, segment: FileSegment, size: int, timeout: float) -> None:
        """Stream a file segment in windows of up to 8 MiB (at most ``MAX_IOV`` PDUs): each
        window is read with one ``preadv`` straight into a buffer laid out as P-DATA-TF PDUs
        (the file's bytes land between the headers: no copy in Python) and sent with one
        ``sendall`` — two system calls per object of ordinary size. *size* is even, so only the
        very last fragment of an odd-length segment is odd: it gets its 0x00 pad in its slot."""
        assert self.sock is not None
        size = min(size, 4 << 20)
        per_window = max(1, min((8 << 20) // size, MAX_IOV))
        views = self._pdu_layout(size, per_window)
        out = memoryview(self._pdu_buf)
        stride = size + 12
        try:
            fd = os.open(segment.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise FileReadError from exc
        try:
            offset, remaining = segment.offset, segment.length
            self.sock.settimeout(timeout)
            while True:
                want = min(per_window * size, remaining)
                full, tail = divmod(want, size)
                buffers = views[:full] + ([views[full][:tail]] if tail else [])
                _read_exactly(fd, buffers, want, offset, segment.path)
                offset += want
                remaining -= want
                count = full + (1 if tail else 0)
                # Every PDU of the window but the last is full and not last: those headers are
                # the same for every object on this context, so they are written only once.
                if self._headers_key != (context_id, size):
                    self._headers_key, self._headers_valid = (context_id, size), 0
                for i in range(self._headers_valid, count - 1):
                    _HEADER_FULL.pack_into(out, i * stride, *self._full_header(context_id, size))
                self._headers_valid = count - 1  # the last slot's header differs
                last_length = tail or size
                if last_length & 1:  # the end of an odd-length segment (PS3.5 7.1 padding)
                    out[(count - 1) * stride + 12 + last_length] = 0
                    last_length += 1
                out[(count - 1) * stride : (count - 1) * stride + 12] = P.pdata_header(
                    context_id, False, remaining == 0, last_length
                )
                self.sock.sendall(out[: (count - 1) * stride + 12 + last_length])
                if remaining == 0:
                    return
        finally:
            os.close(fd)

    def _pdu_layout(self, size: int, per_window: int) -> list[memoryview]:
        """Views of the data part of each PDU slot of the send buffer (made once per size)."""
        if self._layout_key != (size, per_window):
            stride = size + 12
            if len(self._pdu_buf) < per_window * stride:
                self._pdu_buf = bytearray(per_window * stride)
            out = memoryview(self._pdu_buf)
            self._layout = [out[i * stride + 12 : (i + 1) * stride] for i in range(per_window)]
            self._layout_key = (size, per_window)
            self._headers_key = None
        return self._layout

    @staticmethod
    @functools.cache
    def _full_header(context_id: int, size: int) -> tuple[int, int, int, int, int, int]:
        """The fields of a full, not-last data PDU header (for ``_HEADER_FULL``)."""
        return (P.P_DATA_TF, 0, size + 6, size + 2, context_id, 0)

    def _send_fragments(
        self, context_id: int, view: memoryview, command: bool, size: int, timeout: float
    ) -> None:
        """Send *view* in fragments of *size* (even) bytes; an odd total gets a 0x00 pad."""
        pos = 0
        total = len(view)
        while True:
            chunk = view[pos : pos + size]
            pos += len(chunk)
            if pos < total:
                self._sendmsg([P.pdata_header(context_id, command, False, size), chunk], timeout)
                continue
            if total & 1:
                header = P.pdata_header(context_id, command, True, len(chunk) + 1)
                self._sendmsg([header, chunk, b"\x00"], timeout)
            else:
                self._sendmsg(
                    [P.pdata_header(context_id, command, True, len(chunk)), chunk], timeout
                )
            return

    def receive(self, timeout: float | None = None) -> Message:
        """The next complete message from the peer (raises AssociationAborted on failure)."""
        assert self.reader is not None
        wait = self.params.timeouts.dimse if timeout is None else timeout
        command_buf = bytearray()
        data_buf: bytearray | None = None
        cmd: Command | None = None
        context: int | None = None
        try:
            while True:
                pdu_type, body = self.reader.read_pdu(first_timeout=wait)
                if pdu_type == P.P_DATA_TF:
                    for context_id, control, data in P.iter_pdvs(body):
                        if context is not None and context_id != context:
                            raise AssociationAborted(
                                f"{self.peer_label} mixed presentation contexts in one message"
                            )
                        context = context_id
                        if control & 1:
                            if data_buf is not None:
                                raise AssociationAborted(
                                    f"{self.peer_label} sent a command fragment inside a data set"
                                )
                            command_buf += data
                            if len(command_buf) > MAX_COMMAND_BYTES:
                                raise AssociationAborted(
                                    f"{self.peer_label} sent a command set larger than "
                                    f"{MAX_COMMAND_BYTES} bytes (a real one is under 1 KiB)"
                                )
                            if control & 2:
                                cmd = decode_command(bytes(command_buf))
                                if not cmd.has_dataset:
                                    return Message(context_id, cmd, None)
                                self._check_dataset_allowed(cmd)
                                data_buf = bytearray()
                        else:
                            if data_buf is None or cmd is None:
                                raise AssociationAborted(
                                    f"{self.peer_label} sent a data set before its command"
                                )
                            if len(data_buf) + len(data) > self.params.max_response_dataset_bytes:
                                raise AssociationAborted(self._too_large(cmd))
                            data_buf += data
                            if control & 2:
                                return Message(context_id, cmd, bytes(data_buf))
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
        except (P.PDUError, CommandError) as exc:
            self.abort()
            raise AssociationAborted(f"{self.peer_label} sent a malformed message: {exc}") from exc
        except AssociationAborted:
            self.abort()
            raise

    def _check_dataset_allowed(self, cmd: Command) -> None:
        """AssociationAborted if *cmd* announces a data set its message never carries."""
        if cmd.get("CommandField") in NO_DATASET_COMMANDS:
            raise AssociationAborted(
                f"{self.peer_label} sent a {cmd.name} announcing a data set, which PS3.7 does "
                "not allow for that message (a broken peer: its DICOM conformance needs fixing)"
            )

    def _too_large(self, cmd: Command) -> str:
        limit = self.params.max_response_dataset_bytes
        return (
            f"{self.peer_label} sent a {cmd.name} data set larger than {limit} bytes "
            "(node.max_response_dataset_bytes); raise that setting if this peer's responses "
            "are legitimately larger"
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
