"""Serve one association as the acceptor: set-up, the data-transfer loop, release and abort.

PS3.8 9.2 as the acceptor: read the A-ASSOCIATE-RQ within the ARTIM time, answer it (the rules
are ``ul.negotiation``'s), then take P-DATA-TF PDUs until A-RELEASE-RQ (answered with
A-RELEASE-RP) or A-ABORT; anything else is a protocol violation answered with A-ABORT (PS3.8
9.3.8). Each message's fragments are checked for order and bounds by ``ul.reassembly``; a data
set's fragments go to the application's sink as they arrive (a C-STORE data set is streamed to
disk, never held in memory).

``serve_association`` runs in the association's own thread. The application (``scp.handlers``)
decides who may associate and what each message means; this module owns the protocol: PDU
order, limits and timeouts, and always cleans up (a sink for a data set that never completed is
aborted, which removes its spool file).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ctnode.dicom.contexts import ACCEPTANCE
from ctnode.ul import pdu as P
from ctnode.ul.dimse import (
    C_CANCEL_RQ,
    C_STORE_RQ,
    NO_DATASET,
    Command,
    CommandError,
    encode_command,
)
from ctnode.ul.limits import MAX_SMALL_DATASET
from ctnode.ul.negotiation import Accept, AcceptedContext, Reject, agree, screen
from ctnode.ul.pdata import FileSegment, PDataWriter
from ctnode.ul.peer_requests import PeerGone, PeerRequests, ResponseSink
from ctnode.ul.reassembly import REQUESTS_WITHOUT_DATASET, FragmentError, Message, Reassembly
from ctnode.ul.transport import (
    PduReader,
    PeerClosed,
    ReadTimeout,
    close_gracefully,
    send_all,
)


@dataclass(slots=True)
class AssociationInfo:
    """What is known about an inbound association; handlers read it, the acceptor fills it."""

    id: str
    address: str
    port: int
    tls: bool = False
    calling_ae: str = ""
    called_ae: str = ""
    peer: Any = None  # ctnode.peers.Peer, typed loosely to keep ul/ free of config imports
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    peer_max_pdu: int = 0
    started: float = field(default_factory=time.monotonic)
    result: str = "open"
    detail: str | None = None
    #: True once the A-ASSOCIATE-AC was sent.
    established: bool = False
    counters: dict[str, int] = field(default_factory=dict)
    #: Requests of ours on this association and the peer's C-CANCELs (``ul.peer_requests``).
    requests: PeerRequests | None = None

    def count(self, key: str, amount: int = 1) -> None:
        """Add to a per-association counter (logged when the association ends)."""
        self.counters[key] = self.counters.get(key, 0) + amount

    def log_context(self) -> dict[str, Any]:
        """Fields identifying the association in log lines."""
        return {
            "association": self.id,
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": getattr(self.peer, "name", None),
            "peer_address": self.address,
        }


@dataclass(frozen=True, slots=True)
class Reply:
    """A response message: command fields and optional encoded data set.

    *after* runs once the response has been sent (or failed to be), before the next PDU is read:
    bookkeeping (logging, removing a spool link) that need not delay the peer.
    """

    fields: dict[str, Any]
    dataset: bytes | None = None
    after: Callable[[], None] | None = None


class DatasetSink(Protocol):
    """Receives a message's data set fragments as they arrive."""

    def write(self, data: memoryview) -> None:
        """Take the next fragment (the view is only valid during the call)."""

    def complete(self) -> Reply | None:
        """All fragments arrived: process and return the response (None: no response)."""

    def abort(self) -> None:
        """The association ended before the data set completed: clean up."""


class Application(Protocol):
    """What the acceptor asks of the node (implemented by ``scp.handlers.ScpApplication``)."""

    def associate(self, rq: P.AssociateRQ, info: AssociationInfo) -> Accept | Reject:
        """Decide on an A-ASSOCIATE-RQ."""

    def begin(self, info: AssociationInfo, ctx: AcceptedContext, cmd: Command) -> DatasetSink:
        """A command announcing a data set arrived; return where its fragments go."""

    def handle(self, info: AssociationInfo, ctx: AcceptedContext, cmd: Command) -> Reply | None:
        """A command without a data set arrived; return the response."""

    def established(self, info: AssociationInfo) -> None:
        """The A-ASSOCIATE-AC was sent."""

    def ended(self, info: AssociationInfo) -> None:
        """The association is over (released, aborted, rejected or dropped)."""


@dataclass(frozen=True, slots=True)
class AcceptorLimits:
    """Limits and timeouts for one association."""

    our_ae_title: str
    max_pdu_length: int
    acse_timeout: float
    network_timeout: float
    dimse_timeout: float
    #: Further AE titles we answer to (peers' ``local_ae_title``).
    also_ae_titles: frozenset[str] = frozenset()


class AbortAssociation(Exception):
    """Abort with (source, reason) and a message for the log."""

    def __init__(self, why: str, source: int = P.ABORT_SOURCE_PROVIDER, reason: int = 0) -> None:
        super().__init__(why)
        self.source, self.reason = source, reason


def new_association_id() -> str:
    """A short random id for log correlation."""
    return secrets.token_hex(4)


class _Acceptor:
    def __init__(
        self,
        sock: socket.socket,
        info: AssociationInfo,
        app: Application,
        limits: AcceptorLimits,
        stopping: Callable[[], bool],
    ) -> None:
        self.sock = sock
        self.info = info
        self.app = app
        self.limits = limits
        self._stopping = stopping
        self.reader = PduReader(sock, limits.max_pdu_length, limits.network_timeout)
        self.sink: DatasetSink | None = None
        self.messages = Reassembly()
        self.writer = PDataWriter()
        self.requests = PeerRequests(self, limits.dimse_timeout)
        info.requests = self.requests
        #: True once the association is over (released or aborted by the peer).
        self.ended = False

    # -- sending ---------------------------------------------------------------------

    def _send(self, data: bytes | memoryview) -> None:
        send_all(self.sock, data, self.limits.network_timeout)

    def send_message(self, context_id: int, fields: dict[str, Any], dataset: bytes | None) -> None:
        """Send a command (and data set) as P-DATA-TF PDUs within the peer's maximum."""
        if dataset is not None:
            fields = {**fields, "CommandDataSetType": 0x0000}
        command = encode_command(fields)
        max_fragment = P.pdv_capacity(self.info.peer_max_pdu)
        self._send_fragments(context_id, command, True, max_fragment)
        if dataset is not None:
            self._send_fragments(context_id, dataset, False, max_fragment)

    def send_dimse(
        self, context_id: int, command: bytes, dataset: bytes | memoryview | FileSegment | None
    ) -> None:
        """``ul.peer_requests.Link``: send a message (a file segment streamed, odd data padded)."""
        max_fragment = P.pdv_capacity(self.info.peer_max_pdu)
        self.writer.write(
            self.sock, context_id, command, dataset, max_fragment, self.limits.network_timeout
        )

    def read_next(self, timeout: float) -> None:
        """``ul.peer_requests.Link``: one PDU, processed as in the read loop (a handler waits)."""
        if self.step(timeout):
            raise PeerGone(self.info.detail or f"association {self.info.result}")

    def has_input(self) -> bool:
        """``ul.peer_requests.Link``: a PDU has started to arrive."""
        return self.reader.has_input()

    def _send_fragments(self, context_id: int, data: bytes, command: bool, size: int) -> None:
        view = memoryview(data)
        pos = 0
        while True:
            chunk = view[pos : pos + size]
            pos += len(chunk)
            last = pos >= len(view)
            self._send(P.pdata_header(context_id, command, last, len(chunk)) + bytes(chunk))
            if last:
                return

    # -- association setup ---------------------------------------------------------

    def establish(self) -> bool:
        try:
            pdu_type, body = self.reader.read_pdu(first_timeout=self.limits.acse_timeout)
        except ReadTimeout:
            self.info.result, self.info.detail = "timeout", "no A-ASSOCIATE-RQ (ARTIM expired)"
            return False
        if pdu_type != P.A_ASSOCIATE_RQ:
            raise AbortAssociation(
                f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}",
                reason=P.ABORT_UNEXPECTED_PDU,
            )
        rq = P.decode_associate_rq(bytes(body))
        self.info.calling_ae, self.info.called_ae = rq.calling_ae, rq.called_ae
        limits = self.limits
        decision = screen(
            rq,
            limits.our_ae_title,
            limits.also_ae_titles,
            lambda request: self.app.associate(request, self.info),
        )
        if isinstance(decision, Reject):
            return self._reject(decision)
        self.info.peer = decision.peer
        agreement = agree(rq, decision.allowed, limits.max_pdu_length)
        if isinstance(agreement, Reject):
            return self._reject(agreement)
        self.info.contexts.update(agreement.contexts)
        self.info.peer_max_pdu = rq.user.max_pdu_length
        self._send(P.encode_associate_ac(agreement.ac))
        self.info.result = "accepted"
        self.info.established = True
        self.app.established(self.info)
        return True

    def _reject(self, reject: Reject) -> bool:
        self._send(P.encode_associate_rj(reject.result, reject.source, reject.reason))
        self.info.result, self.info.detail = "rejected", reject.why
        return False

    # -- data transfer ----------------------------------------------------------------

    def run(self) -> None:
        while not self.ended:
            # Between messages a peer may be silent for network_timeout; while a data set is
            # coming, for dimse_timeout but never longer than network_timeout.
            idle = self.limits.network_timeout
            if self.messages.expecting_dataset:
                idle = min(self.limits.dimse_timeout, idle)
            self.step(idle)

    def stopping(self) -> bool:
        """``ul.peer_requests.Link``: the node is shutting down."""
        return self._stopping()

    def step(self, idle: float) -> bool:
        """Read one PDU (waiting up to *idle* for it to start) and process it; True once the
        association is over. Re-entered by a handler waiting for a response (``read_next``)."""
        messages = self.messages
        pdu_type, body = self.reader.read_pdu(first_timeout=idle)
        if pdu_type == P.P_DATA_TF:
            pdvs = list(P.iter_pdvs(body))
            for index, (context_id, control, data) in enumerate(pdvs):
                ctx = self.info.contexts.get(context_id)
                if ctx is None:
                    raise AbortAssociation(
                        f"PDV on presentation context {context_id}, which was not accepted",
                        reason=P.ABORT_INVALID_PARAMETER,
                    )
                if control & 1:
                    try:
                        cmd = messages.command_fragment(context_id, data, bool(control & 2))
                    except CommandError as exc:
                        raise AbortAssociation(
                            f"undecodable command set: {exc}", reason=P.ABORT_INVALID_PARAMETER
                        ) from exc
                    if cmd is not None:
                        self._command(ctx, cmd)
                else:
                    messages.dataset_fragment(context_id, len(data), bool(control & 2))
                    sink = self.sink
                    assert sink is not None  # set whenever a data set is expected
                    sink.write(data)
                    if control & 2:
                        self.sink = None
                        # The handler may read further PDUs (``read_next``), which reuses
                        # the reader's buffer: keep what is left of this one.
                        for later in range(index + 1, len(pdvs)):
                            ctx_id, ctl, rest = pdvs[later]
                            pdvs[later] = (ctx_id, ctl, memoryview(bytes(rest)))
                        reply = sink.complete()
                        if reply is not None:
                            self._answer(context_id, reply)
            return False
        if pdu_type == P.A_RELEASE_RQ:
            if not messages.idle:
                self.info.detail = "released with a message incomplete"
                self._drop_sink()
            self._send(P.encode_release_rp())
            self.info.result = "released"
            self.ended = True
            return True
        if pdu_type == P.A_ABORT:
            abort = P.decode_abort(bytes(body))
            self.info.result = "aborted"
            self.info.detail = f"peer sent A-ABORT (source {abort.source}, reason {abort.reason})"
            self._drop_sink()
            self.ended = True
            return True
        raise AbortAssociation(
            f"unexpected PDU type 0x{pdu_type:02X} during data transfer",
            reason=P.ABORT_UNEXPECTED_PDU,
        )

    def _command(self, ctx: AcceptedContext, cmd: Command) -> None:
        """A complete command: answer it, or, if it announces a data set, get a sink for it.
        A response to a request of ours goes to ``requests``; a C-CANCEL-RQ is noted there."""
        field_value = cmd.field
        if field_value & 0x8000:
            responded_to = cmd.get("MessageIDBeingRespondedTo")
            if isinstance(responded_to, int) and self.requests.awaits(responded_to):
                if cmd.has_dataset:
                    self.sink = ResponseSink(self.requests, ctx.context_id, cmd)
                    self.messages.expect_dataset(ctx.context_id, MAX_SMALL_DATASET)
                else:
                    self.requests.deliver(Message(ctx.context_id, cmd, None))
                return
        elif field_value == C_CANCEL_RQ:
            cancelled = cmd.get("MessageIDBeingRespondedTo")
            if isinstance(cancelled, int):
                self.requests.note_cancel(cancelled)
        if cmd.has_dataset:
            if cmd.field in REQUESTS_WITHOUT_DATASET:
                raise AbortAssociation(
                    f"{cmd.name} announces a data set, which PS3.7 does not allow "
                    "(Command Data Set Type must be 0101H)",
                    reason=P.ABORT_INVALID_PARAMETER,
                )
            self.sink = self.app.begin(self.info, ctx, cmd)
            # A C-STORE data set streams to disk (bounded by the store); others are in memory.
            limit = None if cmd.field == C_STORE_RQ else MAX_SMALL_DATASET
            self.messages.expect_dataset(ctx.context_id, limit)
            return
        reply = self.app.handle(self.info, ctx, cmd)
        if reply is not None:
            self._answer(ctx.context_id, reply)

    def _answer(self, context_id: int, reply: Reply) -> None:
        try:
            self.send_message(context_id, reply.fields, reply.dataset)
        finally:
            if reply.after is not None:
                reply.after()

    def _drop_sink(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.abort()

    def abort(self, why: str, source: int, reason: int) -> None:
        self._drop_sink()
        self.info.result, self.info.detail = "aborted", why
        with contextlib.suppress(OSError):
            self._send(P.encode_abort(source, reason))


def serve_association(
    sock: socket.socket,
    info: AssociationInfo,
    app: Application,
    limits: AcceptorLimits,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Run an inbound association to its end; never raises for protocol or network errors."""
    acceptor = _Acceptor(sock, info, app, limits, stopping)
    try:
        if acceptor.establish():
            acceptor.run()
    except AbortAssociation as exc:
        acceptor.abort(str(exc), exc.source, exc.reason)
    except PeerGone:
        acceptor._drop_sink()
    except FragmentError as exc:
        acceptor.abort(str(exc), P.ABORT_SOURCE_PROVIDER, exc.reason)
    except P.PDUError as exc:
        acceptor.abort(str(exc), P.ABORT_SOURCE_PROVIDER, exc.abort_reason)
    except ReadTimeout as exc:
        acceptor.abort(str(exc), P.ABORT_SOURCE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED)
        info.result = "timeout"
    except PeerClosed:
        acceptor._drop_sink()
        if info.result in ("open", "accepted"):
            info.result, info.detail = "dropped", "connection closed without release"
    except OSError as exc:
        acceptor._drop_sink()
        info.result, info.detail = "dropped", f"network error: {exc}"
    except BaseException:
        acceptor.abort("internal error", P.ABORT_SOURCE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED)
        raise
    finally:
        close_gracefully(sock, linger=0.5 if info.result in ("rejected", "aborted") else 0.2)
        app.ended(info)


__all__ = [
    "ACCEPTANCE",
    "NO_DATASET",
    "Accept",
    "AcceptedContext",
    "AcceptorLimits",
    "Application",
    "AssociationInfo",
    "DatasetSink",
    "Reject",
    "Reply",
    "new_association_id",
    "serve_association",
]
