"""Serve one association as the acceptor: negotiation, DIMSE message assembly, release/abort.

``serve_association`` runs in the association's own thread. The application (``scp.handlers``)
decides who may associate and what each message means; this module owns the protocol: PDU
order, fragment assembly, limits and timeouts, and always cleans up (a sink for a data set that
never completed is aborted, which removes its spool file).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ctnode.dicom.contexts import (
    ACCEPTANCE,
    USER_REJECTION,
    ContextDecision,
    ProposedContext,
    Service,
    negotiate,
    negotiate_role,
)
from ctnode.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ctnode.ul import pdu as P
from ctnode.ul.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    N_DELETE_RQ,
    N_GET_RQ,
    NO_DATASET,
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
    send_all,
)


@dataclass(slots=True)
class AcceptedContext:
    """A presentation context accepted on this association."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    service: Service | None


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
class Reject:
    """A-ASSOCIATE-RJ parameters, with a reason for the log."""

    result: int
    source: int
    reason: int
    why: str


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept the association; *allowed* limits the services (None = all ctnode offers)."""

    allowed: frozenset[Service] | None
    peer: Any = None


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


#: Requests PS3.7 defines without a data set (Command Data Set Type 0101H): C-ECHO-RQ (9.3.5),
#: C-CANCEL-RQ (9.3.2.3), N-GET-RQ (10.3.2), N-DELETE-RQ (10.3.6).
_REQUESTS_WITHOUT_DATASET = frozenset({C_ECHO_RQ, C_CANCEL_RQ, N_GET_RQ, N_DELETE_RQ})


def new_association_id() -> str:
    """A short random id for log correlation."""
    return secrets.token_hex(4)


def _decide_contexts(
    rq: P.AssociateRQ, allowed: frozenset[Service] | None
) -> tuple[list[ContextDecision], list[P.RoleSelection]]:
    proposed = [
        ProposedContext(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts
    ]
    decisions = negotiate(proposed, allowed)
    roles_in = {r.sop_class_uid: r for r in rq.user.roles}
    roles_out: list[P.RoleSelection] = []
    answered: set[str] = set()
    final: list[ContextDecision] = []
    for decision in decisions:
        role = roles_in.get(decision.abstract_syntax)
        answer = decision
        if role is not None and decision.accepted:
            scu, scp = negotiate_role(decision.abstract_syntax, role.scu_role, role.scp_role)
            if not scu and not scp:
                answer = ContextDecision(
                    decision.context_id,
                    decision.abstract_syntax,
                    USER_REJECTION,
                    decision.transfer_syntax,
                    decision.service,
                )
            elif decision.abstract_syntax not in answered:
                roles_out.append(P.RoleSelection(decision.abstract_syntax, scu, scp))
                answered.add(decision.abstract_syntax)
        final.append(answer)
    return final, roles_out


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
        self.stopping = stopping
        self.reader = PduReader(sock, limits.max_pdu_length, limits.network_timeout)
        self.sink: DatasetSink | None = None
        #: Bytes of the current data set so far, and its bound (None: C-STORE, streamed to disk).
        self.dataset_bytes = 0
        self.dataset_limit: int | None = None

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
        decision = self._check(rq)
        if isinstance(decision, Reject):
            self._send(P.encode_associate_rj(decision.result, decision.source, decision.reason))
            self.info.result, self.info.detail = "rejected", decision.why
            return False
        self.info.peer = decision.peer
        decisions, roles = _decide_contexts(rq, decision.allowed)
        if decision.allowed is not None and not any(d.accepted for d in decisions):
            asked = {d.service for d in decisions if d.service is not None}
            if asked and not (asked & decision.allowed):
                # Everything asked for is a service this peer may not use.
                self._send(
                    P.encode_associate_rj(
                        P.RJ_PERMANENT, P.RJ_SOURCE_USER, P.RJ_CALLING_AE_NOT_RECOGNIZED
                    )
                )
                self.info.result = "rejected"
                self.info.detail = "peer may not use " + ", ".join(sorted(s.value for s in asked))
                return False
        for d in decisions:
            if d.accepted:
                self.info.contexts[d.context_id] = AcceptedContext(
                    d.context_id, d.abstract_syntax, d.transfer_syntax, d.service
                )
        self.info.peer_max_pdu = rq.user.max_pdu_length
        ac = P.AssociateAC(
            called_ae=rq.called_ae,
            calling_ae=rq.calling_ae,
            contexts=[
                P.PresentationContextAC(d.context_id, d.result, d.transfer_syntax)
                for d in decisions
            ],
            user=P.UserInformation(
                max_pdu_length=self.limits.max_pdu_length,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                roles=roles,
            ),
        )
        self._send(P.encode_associate_ac(ac))
        self.info.result = "accepted"
        self.info.established = True
        self.app.established(self.info)
        return True

    def _check(self, rq: P.AssociateRQ) -> Accept | Reject:
        if not rq.protocol_version & 1:
            return Reject(
                P.RJ_PERMANENT,
                P.RJ_SOURCE_ACSE,
                P.RJ_PROTOCOL_VERSION_NOT_SUPPORTED,
                f"protocol version 0x{rq.protocol_version:04X} not supported",
            )
        if rq.application_context != P.APPLICATION_CONTEXT:
            return Reject(
                P.RJ_PERMANENT,
                P.RJ_SOURCE_USER,
                P.RJ_APPLICATION_CONTEXT_NOT_SUPPORTED,
                f"application context {rq.application_context!r} not supported",
            )
        if rq.called_ae != self.limits.our_ae_title and rq.called_ae not in (
            self.limits.also_ae_titles
        ):
            return Reject(
                P.RJ_PERMANENT,
                P.RJ_SOURCE_USER,
                P.RJ_CALLED_AE_NOT_RECOGNIZED,
                f"called AE title {rq.called_ae!r} is not ours ({self.limits.our_ae_title!r})",
            )
        decision = self.app.associate(rq, self.info)
        if isinstance(decision, Accept) and not rq.contexts:
            return Reject(
                P.RJ_PERMANENT,
                P.RJ_SOURCE_USER,
                P.RJ_NO_REASON,
                "A-ASSOCIATE-RQ proposes no presentation context (PS3.8 9.3.2 requires one or "
                "more): fix the calling device's configuration",
            )
        return decision

    # -- data transfer ----------------------------------------------------------------

    def run(self) -> None:
        current: tuple[int, Command] | None = None  # (context_id, command) awaiting data set
        command_buf = bytearray()
        command_ctx: int | None = None
        while True:
            # Between messages a peer may be silent for network_timeout; while a data set is
            # coming, for dimse_timeout but never longer than network_timeout.
            idle = self.limits.network_timeout
            if current is not None:
                idle = min(self.limits.dimse_timeout, idle)
            pdu_type, body = self.reader.read_pdu(first_timeout=idle)
            if pdu_type == P.P_DATA_TF:
                for context_id, control, data in P.iter_pdvs(body):
                    ctx = self.info.contexts.get(context_id)
                    if ctx is None:
                        raise AbortAssociation(
                            f"PDV on presentation context {context_id}, which was not accepted",
                            reason=P.ABORT_INVALID_PARAMETER,
                        )
                    is_command, is_last = bool(control & 1), bool(control & 2)
                    if is_command:
                        if current is not None:
                            raise AbortAssociation(
                                "command fragment while a data set was expected",
                                reason=P.ABORT_UNEXPECTED_PDU,
                            )
                        if command_ctx is not None and command_ctx != context_id:
                            raise AbortAssociation(
                                "command fragments on two presentation contexts",
                                reason=P.ABORT_INVALID_PARAMETER,
                            )
                        command_ctx = context_id
                        command_buf += data
                        if len(command_buf) > MAX_COMMAND_BYTES:
                            raise AbortAssociation(
                                "command set larger than 64 KiB", reason=P.ABORT_INVALID_PARAMETER
                            )
                        if is_last:
                            current = self._command(ctx, bytes(command_buf))
                            command_buf.clear()
                            command_ctx = None
                    else:
                        if current is None or current[0] != context_id or self.sink is None:
                            raise AbortAssociation(
                                "data set fragment without a command announcing it",
                                reason=P.ABORT_UNEXPECTED_PDU,
                            )
                        self._bound_dataset(len(data))
                        self.sink.write(data)
                        if is_last:
                            sink, self.sink = self.sink, None
                            reply = sink.complete()
                            if reply is not None:
                                self._answer(context_id, reply)
                            current = None
            elif pdu_type == P.A_RELEASE_RQ:
                if current is not None or command_buf:
                    self.info.detail = "released with a message incomplete"
                    self._drop_sink()
                self._send(P.encode_release_rp())
                self.info.result = "released"
                return
            elif pdu_type == P.A_ABORT:
                abort = P.decode_abort(bytes(body))
                self.info.result = "aborted"
                self.info.detail = (
                    f"peer sent A-ABORT (source {abort.source}, reason {abort.reason})"
                )
                self._drop_sink()
                return
            else:
                raise AbortAssociation(
                    f"unexpected PDU type 0x{pdu_type:02X} during data transfer",
                    reason=P.ABORT_UNEXPECTED_PDU,
                )

    def _command(self, ctx: AcceptedContext, raw: bytes) -> tuple[int, Command] | None:
        try:
            cmd = decode_command(raw)
        except CommandError as exc:
            raise AbortAssociation(
                f"undecodable command set: {exc}", reason=P.ABORT_INVALID_PARAMETER
            ) from exc
        if cmd.has_dataset:
            if cmd.field in _REQUESTS_WITHOUT_DATASET:
                raise AbortAssociation(
                    f"{cmd.name} announces a data set, which PS3.7 does not allow "
                    "(Command Data Set Type must be 0101H)",
                    reason=P.ABORT_INVALID_PARAMETER,
                )
            self.sink = self.app.begin(self.info, ctx, cmd)
            self.dataset_bytes = 0
            self.dataset_limit = None if cmd.field == C_STORE_RQ else MAX_SMALL_DATASET
            return (ctx.context_id, cmd)
        reply = self.app.handle(self.info, ctx, cmd)
        if reply is not None:
            self._answer(ctx.context_id, reply)
        return None

    def _bound_dataset(self, more: int) -> None:
        self.dataset_bytes += more
        if self.dataset_limit is not None and self.dataset_bytes > self.dataset_limit:
            raise AbortAssociation(
                f"data set of a non-storage message larger than {self.dataset_limit} bytes",
                reason=P.ABORT_INVALID_PARAMETER,
            )

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
