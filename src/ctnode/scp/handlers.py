"""Inbound message handlers: plain objects with their dependencies passed in.

``ScpApplication`` answers the acceptor's questions (see ``ul.acceptor.Application``):

``associate`` — A-ASSOCIATE-RJ 1/1/3 (calling AE not recognised) unless the calling AE is a
configured peer calling from its host whose ``accept`` list covers what it asks for (or
``node.accept_unknown_callers``). The called AE title was already checked (1/1/7).

C-ECHO — 0x0000.

C-STORE — statuses:

* 0x0000 stored durably (or an identical copy was already stored; or a conflicting duplicate was
  quarantined under ``on_duplicate: keep_first``; or it replaced the old copy under ``overwrite``)
* 0xA700 out of resources: free space below ``min_free_bytes``, disk full, data set larger than
  ``max_instance_bytes`` (as received, or once inflated for Deflated Explicit VR), index
  database locked or unreachable
* 0xA900 data set does not match: its SOP Class/Instance UID differs from the command's, it
  lacks Study/Series Instance UID, or (``on_duplicate: reject``) a different copy is stored
* 0xC000 cannot understand: invalid UID (traversal, too long, not digits and dots), undecodable
  or over-deep data set
* 0x0122 SOP class not supported: the command's SOP class is not the presentation context's

N-EVENT-REPORT (storage commitment report) — delegated to the commitment reconciler
(``commitment.Reconciler``): 0x0000 once processed, 0x0110 for an unknown transaction, a report
from a peer we did not ask or an undecodable one, 0x0113 for an Event Type ID other than 1 or 2.

N-ACTION (storage commitment request, ctnode as SCP) — delegated to ``commitment_scp.intake``
(its docstring lists the statuses): 0x0000 once the transaction is persisted and its report
queued; 0x0124 (not authorised) from a peer without ``commit`` in its ``accept`` list.

C-FIND, C-MOVE, C-GET (Query/Retrieve SCP, peers with ``accept: [find]``, ``[move]``, ``[get]``)
— ``scp.qr_find`` and ``scp.qr_retrieve`` (their docstrings list the statuses).

Any other request — 0x0211 (unrecognised operation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from ctnode.config import NodeSettings
from ctnode.dicom import status
from ctnode.dicom.contexts import STORAGE_COMMITMENT_PUSH, Service
from ctnode.dicom.uids import is_valid_uid
from ctnode.logs import get_logger
from ctnode.peers import PeerRegistry, is_self_address
from ctnode.storage import Reception, Store, StoreRequest
from ctnode.ul import dimse
from ctnode.ul import pdu as P
from ctnode.ul.acceptor import (
    AbortAssociation,
    Accept,
    AcceptedContext,
    AssociationInfo,
    Reject,
    Reply,
)
from ctnode.ul.limits import MAX_SMALL_DATASET

log = get_logger("ctnode.scp")

#: Services that read the store: only for peers whose ``accept`` list names them.
QR_SERVICES = frozenset({Service.FIND, Service.MOVE, Service.GET})
_OPEN_SERVICES = frozenset(Service) - QR_SERVICES
_QR_COMMANDS = {
    Service.FIND: dimse.C_FIND_RQ,
    Service.MOVE: dimse.C_MOVE_RQ,
    Service.GET: dimse.C_GET_RQ,
}


class QrHandler(Protocol):
    """Answers a C-FIND, C-MOVE or C-GET (``scp.qr_find``, ``scp.qr_retrieve``): sends the
    pending responses itself (``info.requests``) and returns the final one."""

    def __call__(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, data: bytes
    ) -> Reply:
        """The final response."""


class ReportHandler(Protocol):
    """Processes a storage commitment N-EVENT-REPORT (implemented in ``commitment``)."""

    def __call__(self, info: AssociationInfo, cmd: dimse.Command, dataset: bytes, ts: str) -> int:
        """Return the DIMSE status for the N-EVENT-REPORT-RSP."""


class ActionHandler(Protocol):
    """Processes a storage commitment N-ACTION (implemented in ``commitment_scp.intake``)."""

    def __call__(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, dataset: bytes
    ) -> tuple[int, str | None, Callable[[], None] | None]:
        """The N-ACTION-RSP status, its Error Comment, and what to run once it is sent."""


class Observer(Protocol):
    """Receives counts for metrics (implemented in ``metrics``); all methods are cheap."""

    def association_started(self, info: AssociationInfo) -> None:
        """An inbound association was accepted."""

    def association_ended(self, info: AssociationInfo) -> None:
        """An inbound association ended (any outcome)."""

    def instance_received(self, info: AssociationInfo, size: int, code: int) -> None:
        """A C-STORE was answered with *code*."""


class StoredHook(Protocol):
    """Told about every C-STORE answered with success (C-MOVE arrivals: ``moves.MoveRegistry``)."""

    def __call__(self, info: AssociationInfo, cmd: dimse.Command, outcome: str) -> None:
        """*outcome* is the store's: stored, duplicate, quarantined or overwritten."""


class _NullObserver:
    def association_started(self, info: AssociationInfo) -> None:
        pass

    def association_ended(self, info: AssociationInfo) -> None:
        pass

    def instance_received(self, info: AssociationInfo, size: int, code: int) -> None:
        pass


def _reply(
    cmd: dimse.Command, code: int, after: Callable[[], None] | None = None, **extra: Any
) -> Reply:
    return Reply(dimse.response_fields(cmd, cmd.field | 0x8000, code, **extra), after=after)


class DiscardSink:
    """Consumes a data set that will not be kept, then answers a fixed status."""

    def __init__(self, cmd: dimse.Command, code: int, on_done: Callable[[int], None]) -> None:
        self.cmd, self.code, self.on_done = cmd, code, on_done
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.size += len(data)

    def complete(self) -> Reply:
        self.on_done(self.size)
        return _reply(self.cmd, self.code)

    def abort(self) -> None:
        pass


class MemorySink:
    """Collects a small data set (N-EVENT-REPORT) in memory, bounded."""

    def __init__(self, limit: int, done: Callable[[bytes], Reply]) -> None:
        self.buf = bytearray()
        self.limit, self.done = limit, done

    def write(self, data: memoryview) -> None:
        if len(self.buf) + len(data) > self.limit:
            raise AbortAssociation("data set too large for this message", reason=6)
        self.buf += data

    def complete(self) -> Reply:
        return self.done(bytes(self.buf))

    def abort(self) -> None:
        self.buf.clear()


class StoreSink:
    """Feeds a C-STORE data set to the store's ``Reception``; answers with its ``IngestResult``
    and logs one line once the answer is on its way."""

    def __init__(
        self,
        app: ScpApplication,
        info: AssociationInfo,
        cmd: dimse.Command,
        reception: Reception,
    ) -> None:
        self.app, self.info, self.cmd, self.reception = app, info, cmd, reception
        self.started = time.monotonic()
        # Fragments and an abort go straight to the reception (no extra call per fragment).
        self.write = reception.write
        self.abort = reception.abort

    def complete(self) -> Reply:
        reception = self.reception
        # The object is durable (or refused) when this returns; removing the spool link and
        # logging wait until the response is on its way.
        result = reception.complete()

        def after() -> None:
            reception.close()
            self.app.record_store(
                self.info,
                self.cmd,
                code=result.status,
                outcome=result.outcome,
                reason=result.reason,
                size=reception.size,
                started=self.started,
            )

        return _reply(self.cmd, result.status, after=after)


class ScpApplication:
    """The node's answers to inbound associations and messages."""

    def __init__(
        self,
        node: NodeSettings,
        store: Store,
        peers: Callable[[], PeerRegistry],
        report_handler: ReportHandler | None = None,
        observer: Observer | None = None,
        on_stored: StoredHook | None = None,
        qr_handlers: dict[Service, QrHandler] | None = None,
        action_handler: ActionHandler | None = None,
        is_retrieval: Callable[[AssociationInfo, dimse.Command], bool] | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.peers = peers
        self.report_handler = report_handler
        self.observer: Observer = observer or _NullObserver()
        #: Query/retrieve: C-MOVE arrivals are attributed to their move job.
        self.on_stored = on_stored
        #: Query/retrieve SCP: find, move and get handlers.
        self.qr_handlers = dict(qr_handlers or {})
        #: Storage commitment requests (N-ACTION) peers send us.
        self.action_handler = action_handler
        #: True for a C-STORE that is a sub-operation of one of our own moves (routing skips it).
        self.is_retrieval = is_retrieval

    # -- association -------------------------------------------------------------------

    def associate(self, rq: P.AssociateRQ, info: AssociationInfo) -> Accept | Reject:
        match = self.peers().match_inbound(rq.calling_ae, info.address)
        if (
            match.peer is None
            and rq.calling_ae == self.node.ae_title
            and is_self_address(info.address)
        ):
            # `ctnode echo --self` (health checks): this host, calling as ourselves, may echo.
            return Accept(frozenset({Service.ECHO}), None)
        if match.peer is not None or self.node.accept_unknown_callers:
            if match.peer is None or self.node.accept_unknown_callers:
                # Query/retrieve never comes with accept_unknown_callers: only a configured
                # peer whose accept list names it may look into the store.
                granted = frozenset(match.peer.config.accept) if match.peer else frozenset()
                return Accept(_OPEN_SERVICES | (granted & QR_SERVICES), match.peer)
            return Accept(frozenset(match.peer.config.accept), match.peer)
        return Reject(
            P.RJ_PERMANENT,
            P.RJ_SOURCE_USER,
            P.RJ_CALLING_AE_NOT_RECOGNIZED,
            match.problem or "calling AE not recognised",
        )

    def established(self, info: AssociationInfo) -> None:
        """Count the association (it was accepted and the A-ASSOCIATE-AC sent)."""
        self.observer.association_started(info)

    def ended(self, info: AssociationInfo) -> None:
        duration_ms = round((time.monotonic() - info.started) * 1000, 1)
        event = "scp.association"
        fields = {
            **info.log_context(),
            "result": info.result,
            "duration_ms": duration_ms,
            "tls": info.tls,
            **info.counters,
        }
        if info.detail:
            fields["detail"] = info.detail
        if info.result in ("rejected", "aborted", "timeout", "dropped", "tls_failed"):
            log.warning(event, **fields)
        else:
            log.info(event, **fields)
        self.observer.association_ended(info)

    # -- messages ------------------------------------------------------------------------

    def begin(self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command) -> Any:
        if "MessageID" not in cmd:
            raise AbortAssociation("request without MessageID", reason=P.ABORT_INVALID_PARAMETER)
        if cmd.field == dimse.C_STORE_RQ:
            return self._begin_store(info, ctx, cmd)
        if cmd.field == dimse.N_EVENT_REPORT_RQ and ctx.service is Service.COMMITMENT_REPORT:
            return MemorySink(16 * 1024 * 1024, lambda data: self._report(info, ctx, cmd, data))
        qr = self.qr_handlers.get(ctx.service) if ctx.service in QR_SERVICES else None
        if qr is not None and ctx.service is not None and cmd.field == _QR_COMMANDS[ctx.service]:
            return MemorySink(MAX_SMALL_DATASET, lambda data: qr(info, ctx, cmd, data))
        if cmd.field == dimse.N_ACTION_RQ and ctx.abstract_syntax == STORAGE_COMMITMENT_PUSH:
            if self.action_handler is None or not self._may(info, Service.COMMIT):
                why = "the peer may not ask ctnode for storage commitment (accept: [commit])"
                return DiscardSink(
                    cmd, status.NOT_AUTHORIZED, lambda _size: self._refused_action(info, why)
                )
            return MemorySink(16 * 1024 * 1024, lambda data: self._action(info, ctx, cmd, data))
        return DiscardSink(cmd, status.UNRECOGNIZED_OPERATION, lambda _size: None)

    def _begin_store(self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command) -> Any:
        started = time.monotonic()
        sop_class = cmd.get("AffectedSOPClassUID")
        sop_instance = cmd.get("AffectedSOPInstanceUID")

        def refuse(code: int, reason: str) -> DiscardSink:
            def done(size: int) -> None:
                self.record_store(
                    info,
                    cmd,
                    code=code,
                    outcome="refused",
                    reason=reason,
                    size=size,
                    started=started,
                )

            return DiscardSink(cmd, code, done)

        if not is_valid_uid(sop_class) or not is_valid_uid(sop_instance):
            return refuse(
                status.CANNOT_UNDERSTAND,
                "AffectedSOPClassUID or AffectedSOPInstanceUID is missing or not a valid UID",
            )
        assert isinstance(sop_class, str)
        assert isinstance(sop_instance, str)
        if ctx.service is not Service.STORE or sop_class != ctx.abstract_syntax:
            return refuse(
                status.SOP_CLASS_NOT_SUPPORTED,
                "AffectedSOPClassUID is not the presentation context's abstract syntax",
            )
        if not self.store.has_room():
            return refuse(status.OUT_OF_RESOURCES, "free space below storage.min_free_bytes")
        request = StoreRequest(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=ctx.transfer_syntax,
            calling_ae=info.calling_ae,
            source_address=info.address,
            retrieved=self.is_retrieval is not None and self.is_retrieval(info, cmd),
        )
        try:
            reception = self.store.receive(request)
        except OSError as exc:
            return refuse(status.OUT_OF_RESOURCES, f"cannot create a spool file: {exc.strerror}")
        return StoreSink(self, info, cmd, reception)

    def record_store(
        self,
        info: AssociationInfo,
        cmd: dimse.Command,
        *,
        code: int,
        outcome: str,
        reason: str | None,
        size: int,
        started: float,
    ) -> None:
        """Log one line per C-STORE and count it."""
        fields: dict[str, Any] = {
            **info.log_context(),
            "sop_instance_uid": cmd.get("AffectedSOPInstanceUID"),
            "sop_class_uid": cmd.get("AffectedSOPClassUID"),
            "status": status.hex_status(code),
            "outcome": outcome,
            "bytes": size,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
        }
        if code == status.SUCCESS:
            info.count("stored")
            info.count("bytes_received", size)
            if outcome == "quarantined":
                log.warning("scp.store.quarantined", **fields, reason=reason)
            else:
                log.info("scp.store.accepted", **fields)
        else:
            info.count("store_failed")
            log.warning("scp.store.refused", **fields, reason=reason)
        self.observer.instance_received(info, size, code)
        if code == status.SUCCESS and self.on_stored is not None:
            try:
                self.on_stored(info, cmd, outcome)
            except Exception:  # bookkeeping must never change the answer to a C-STORE
                log.exception("scp.store.hook_failed", **info.log_context())

    def _report(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, data: bytes
    ) -> Reply:
        if self.report_handler is None:
            code = status.PROCESSING_FAILURE
        else:
            code = self.report_handler(info, cmd, data, ctx.transfer_syntax)
        info.count("commitment_reports")
        return _reply(cmd, code, EventTypeID=cmd.get("EventTypeID"))

    def _may(self, info: AssociationInfo, service: Service) -> bool:
        """True if the caller may use *service* (any, when unknown callers are accepted)."""
        if self.node.accept_unknown_callers:
            return True
        peer = info.peer
        return peer is not None and peer.may(service)

    @staticmethod
    def _refused_action(info: AssociationInfo, why: str) -> None:
        log.warning(
            "scp.commit.refused",
            **info.log_context(),
            status=status.hex_status(status.NOT_AUTHORIZED),
            reason=why,
        )

    def _action(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, data: bytes
    ) -> Reply:
        assert self.action_handler is not None
        code, comment, after = self.action_handler(info, ctx, cmd, data)
        extra: dict[str, Any] = {"ActionTypeID": cmd.get("ActionTypeID")}
        if comment and code != status.SUCCESS:
            extra["ErrorComment"] = comment
        return _reply(cmd, code, after=after, **extra)

    def handle(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command
    ) -> Reply | None:
        field = cmd.field
        if field == dimse.C_CANCEL_RQ:
            return None
        if field & 0x8000:
            raise AbortAssociation(
                f"unexpected {cmd.name} (ctnode sent no request)", reason=P.ABORT_UNEXPECTED_PDU
            )
        if "MessageID" not in cmd:
            raise AbortAssociation("request without MessageID", reason=P.ABORT_INVALID_PARAMETER)
        if field == dimse.C_ECHO_RQ and ctx.service is Service.ECHO:
            info.count("echo")
            return _reply(cmd, status.SUCCESS)
        if field == dimse.C_STORE_RQ:
            # A C-STORE that says it carries no data set cannot be stored.
            return _reply(cmd, status.CANNOT_UNDERSTAND)
        return _reply(cmd, status.UNRECOGNIZED_OPERATION)
