"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3): the instances an identifier names, sent as C-STORE
sub-operations: for C-MOVE to a configured peer on new associations, for C-GET back on the
requestor's association (the storage contexts it proposed with the SCP role).

Each instance goes in its stored transfer syntax when the receiver accepted it, else decoded
and re-encoded (verified value by value, ``dicom.convert``) in an uncompressed syntax it
accepted; a pending response with the counts follows every sub-operation. Statuses:

* 0xFF00 pending (remaining, completed, failed, warning sub-operations)
* 0x0000 every sub-operation completed (also when nothing matched)
* 0xB000 some sub-operations failed or had warnings: Failed SOP Instance UID List
* 0xA702 none could be sent (destination unreachable or refused every one): the same list
* 0xFE00 the requestor sent C-CANCEL-RQ: counts so far (remaining ones not sent)
* 0xA801 C-MOVE: the destination is not a configured peer, or not one of the caller's
  ``move_destinations``
* 0xA900 identifier does not match the SOP class (level, unique keys down to the level)
* 0xA701 the index database is unavailable; 0xC000 the identifier cannot be decoded

A stored file that cannot be read (removed by retention meanwhile, unreadable) fails its
sub-operation only: its UID goes into the Failed SOP Instance UID List and the others are sent.
Found before sending, the association goes on; found while streaming the file, the association
to the C-MOVE destination was aborted by then (a partial data set cannot be taken back) and the
remaining instances go on a new one. In C-GET the sub-operations share the requestor's own
association, so a file failing mid-stream aborts it (no final response can follow a partial
data set); the window is the moment between opening the file and reading it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ctnode.config import NodeSettings
from ctnode.dicom import matching as M
from ctnode.dicom import status
from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE, UNCOMPRESSED_SYNTAXES
from ctnode.dicom.filemeta import read_meta_length
from ctnode.dicom.identifier import encode_elements
from ctnode.errors import AssociationAborted, AssociationRejected, PeerUnreachable
from ctnode.logs import get_logger
from ctnode.peers import Peer, PeerRegistry
from ctnode.qrindex import QrIndex, RetrieveItem
from ctnode.scp.qr_common import (
    IdentifierError,
    QrObserver,
    database_error_reason,
    model_of,
    read_identifier,
    retrieve_filters,
)
from ctnode.scu.association import params_for
from ctnode.ul import dimse
from ctnode.ul.acceptor import AbortAssociation, AcceptedContext, AssociationInfo, Reply
from ctnode.ul.pdata import FileReadError, FileSegment
from ctnode.ul.peer_requests import PeerRequests
from ctnode.ul.requestor import ContextRequest, Requestor

log = get_logger("ctnode.scp")

FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
UNABLE_TO_CALCULATE = 0xA701
UNABLE_TO_PERFORM = 0xA702
MAX_CONTEXTS = 128


@dataclass(slots=True)
class Progress:
    """Sub-operation counts (PS3.4 C.4.2.1.6) and the instances that failed."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, uid: str, code: int | None) -> None:
        """One sub-operation's outcome (None: it could not be sent)."""
        self.remaining -= 1
        if code == status.SUCCESS:
            self.completed += 1
        elif code is not None and code >> 12 == 0xB:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)

    def fields(self, with_remaining: bool) -> dict[str, int]:
        """The count elements of a response."""
        out = {
            "NumberOfCompletedSuboperations": self.completed,
            "NumberOfFailedSuboperations": self.failed,
            "NumberOfWarningSuboperations": self.warning,
        }
        if with_remaining:
            out["NumberOfRemainingSuboperations"] = self.remaining
        return out

    def final_status(self) -> int:
        """0x0000, 0xB000 or 0xA702 from the counts (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
        if not self.failed and not self.warning:
            return status.SUCCESS
        if not self.completed and not self.warning:
            return UNABLE_TO_PERFORM
        return status.SUBOPERATIONS_FAILED


class Unreadable(Exception):
    """A sub-operation's stored file could not be read (or converted): it fails alone.
    *lost*: the association it was being sent on is gone (the error came mid-stream)."""

    def __init__(self, reason: str, *, lost: bool) -> None:
        super().__init__(reason)
        self.lost = lost


class DestinationSlots:
    """Outbound C-MOVE associations per destination peer, within its ``max_associations``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def slot(self, peer: Peer) -> threading.BoundedSemaphore:
        """The semaphore of *peer* (created with its current ``max_associations``)."""
        with self._lock:
            key = f"{peer.name}:{peer.config.max_associations}"
            if key not in self._slots:
                self._slots[key] = threading.BoundedSemaphore(peer.config.max_associations)
            return self._slots[key]


def _dataset_of(item: RetrieveItem, syntax: str) -> bytes | FileSegment:
    """The data set to send: the file's own bytes, or converted (ValueError, OSError)."""
    if syntax == item.transfer_syntax_uid:
        with open(item.path, "rb") as fh:
            offset = read_meta_length(fh.read(8192))
        return FileSegment(str(item.path), offset, item.path.stat().st_size - offset)
    from ctnode.dicom.convert import convert  # imports pydicom: only when converting

    return convert(str(item.path), syntax)


def plan_contexts(
    items: list[RetrieveItem],
) -> Iterator[tuple[list[ContextRequest], list[RetrieveItem]]]:
    """Groups of items whose contexts fit one association: per SOP class, its stored syntax and
    explicit/implicit little endian."""
    group: list[RetrieveItem] = []
    contexts: dict[tuple[str, tuple[str, ...]], ContextRequest] = {}
    for item in items:
        wanted: list[tuple[str, tuple[str, ...]]] = [
            (item.sop_class_uid, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))
        ]
        if item.transfer_syntax_uid not in UNCOMPRESSED_SYNTAXES:
            wanted.insert(0, (item.sop_class_uid, (item.transfer_syntax_uid,)))
        new = [w for w in wanted if w not in contexts]
        if len(contexts) + len(new) > MAX_CONTEXTS and group:
            yield list(contexts.values()), group
            group, contexts = [], {}
            new = wanted
        for abstract, syntaxes in new:
            contexts[(abstract, syntaxes)] = ContextRequest(abstract, syntaxes)
        group.append(item)
    if group:
        yield list(contexts.values()), group


class RetrieveService:
    """Answers C-MOVE-RQs and C-GET-RQs from the index and the store."""

    def __init__(
        self,
        index: QrIndex,
        node: NodeSettings,
        peers: Callable[[], PeerRegistry],
        observer: QrObserver | None = None,
    ) -> None:
        self.index = index
        self.node = node
        self.peers = peers
        self.observer = observer
        self.slots = DestinationSlots()

    # -- entry points -------------------------------------------------------------------

    def move(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, data: bytes
    ) -> Reply:
        """A C-MOVE: sub-operations to the destination peer; returns the final response."""
        return self._run("move", info, ctx, cmd, data)

    def get(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, data: bytes
    ) -> Reply:
        """A C-GET: sub-operations on this association; returns the final response."""
        return self._run("get", info, ctx, cmd, data)

    # -- the operation --------------------------------------------------------------------

    def _run(
        self,
        service: str,
        info: AssociationInfo,
        ctx: AcceptedContext,
        cmd: dimse.Command,
        data: bytes,
    ) -> Reply:
        started = time.monotonic()
        field_value = dimse.C_MOVE_RSP if service == "move" else dimse.C_GET_RSP
        fields: dict[str, Any] = {**info.log_context(), "sop_class_uid": ctx.abstract_syntax}
        progress: Progress | None = None
        comment: str | None = None
        requests = info.requests
        assert requests is not None
        message_id = cmd.get_int("MessageID")
        try:
            code, comment, items = self._prepare(service, info, ctx, cmd, data, fields)
            if items is not None:
                progress = Progress(len(items))
                code = self._send_all(service, info, ctx, cmd, items, progress, fields)
        finally:
            requests.forget(message_id)
        fields["status"] = status.hex_status(code)
        fields["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        extra: dict[str, Any] = {}
        dataset = None
        if progress is not None:
            extra.update(progress.fields(with_remaining=code == status.CANCEL))
            fields.update(progress.fields(with_remaining=True))
            if progress.failed_uids and code != status.SUCCESS:
                dataset = encode_elements(
                    [(FAILED_SOP_INSTANCE_UID_LIST, "UI", tuple(progress.failed_uids))],
                    explicit=ctx.transfer_syntax != IMPLICIT_VR_LE,
                )
        if comment:
            extra["ErrorComment"] = comment[:64]
        event = "scp.move.finished"
        if service == "get":
            event = "scp.get.finished"
        if code in (status.SUCCESS, status.CANCEL):
            log.info(event, **fields)
        else:
            log.warning(event, **fields, reason=comment)
        info.count(f"{service}s")
        if self.observer is not None:
            self.observer.query_answered(getattr(info.peer, "name", "unknown"), service, code)
        return Reply(dimse.response_fields(cmd, field_value, code, **extra), dataset)

    def _prepare(
        self,
        service: str,
        info: AssociationInfo,
        ctx: AcceptedContext,
        cmd: dimse.Command,
        data: bytes,
        fields: dict[str, Any],
    ) -> tuple[int, str | None, list[RetrieveItem] | None]:
        """Checks and the instances: (status, comment, None) to refuse, else the instances."""
        model = model_of(ctx.abstract_syntax)
        try:
            identifier = read_identifier(data, ctx.transfer_syntax)
        except IdentifierError as exc:
            return status.CANNOT_UNDERSTAND, f"undecodable identifier: {exc}", None
        fields["qr_level"] = identifier.level
        problem = M.check_identifier(model, identifier.level, identifier.values())
        if problem is None and identifier.level in M.LEVELS:
            own = M.UNIQUE_KEYS[identifier.level]
            if not identifier.values().get(own, "").strip(" \x00"):
                problem = f"a {identifier.level} level retrieve needs {M.KEYS[own].keyword}"
        if problem is not None:
            return status.DATASET_MISMATCH, problem, None
        if service == "move":
            refusal = self._check_destination(info, cmd)
            if refusal is not None:
                fields["move_destination"] = cmd.get("MoveDestination")
                return status.MOVE_DESTINATION_UNKNOWN, refusal, None
        try:
            items = self.index.instances(retrieve_filters(model, identifier))
        except SQLAlchemyError as exc:
            return UNABLE_TO_CALCULATE, database_error_reason(exc), None
        return status.SUCCESS, None, items

    def _destination(self, cmd: dimse.Command) -> Peer | None:
        ae = str(cmd.get("MoveDestination") or "").strip()
        candidates = sorted((p for p in self.peers() if p.ae_title == ae), key=lambda p: p.name)
        return candidates[0] if candidates else None

    def _check_destination(self, info: AssociationInfo, cmd: dimse.Command) -> str | None:
        ae = str(cmd.get("MoveDestination") or "").strip()
        destination = self._destination(cmd)
        if destination is None:
            return f"move destination {ae!r} is not a configured peer"
        allowed = getattr(getattr(info.peer, "config", None), "move_destinations", ())
        if allowed and destination.name not in allowed and destination.ae_title not in allowed:
            return f"move destination {ae!r} is not in the caller's move_destinations"
        return None

    def _send_all(
        self,
        service: str,
        info: AssociationInfo,
        ctx: AcceptedContext,
        cmd: dimse.Command,
        items: list[RetrieveItem],
        progress: Progress,
        fields: dict[str, Any],
    ) -> int:
        requests = info.requests
        assert requests is not None
        message_id = cmd.get_int("MessageID")
        field_value = dimse.C_MOVE_RSP if service == "move" else dimse.C_GET_RSP
        peer_name = getattr(info.peer, "name", "unknown")

        def pending() -> bool:
            """Send a pending response; True if the requestor cancelled meanwhile."""
            rsp = dimse.response_fields(
                cmd, field_value, status.PENDING, **progress.fields(with_remaining=True)
            )
            requests.respond(ctx.context_id, rsp)
            requests.poll()
            return requests.cancelled(message_id) or requests.stopping

        def done(item: RetrieveItem, code: int | None) -> bool:
            progress.record(item.sop_instance_uid, code)
            if self.observer is not None:
                self.observer.suboperation_done(peer_name, service, code)
            return pending() if progress.remaining else False

        if not items:
            return status.SUCCESS
        if service == "get":
            cancelled = self._get(info, cmd, items, done, requests)
        else:
            destination = self._destination(cmd)
            assert destination is not None
            fields["move_destination"] = destination.name
            cancelled = self._move(info, cmd, destination, items, done, fields)
        if cancelled:
            return status.CANCEL
        return progress.final_status()

    # -- C-GET: on this association -------------------------------------------------------

    def _get(
        self,
        info: AssociationInfo,
        cmd: dimse.Command,
        items: list[RetrieveItem],
        done: Callable[[RetrieveItem, int | None], bool],
        requests: PeerRequests,
    ) -> bool:
        contexts = [c for c in info.contexts.values() if c.requestor_scp]
        for item in items:
            chosen = _context_for(contexts, item)
            code: int | None = None
            if chosen is not None:
                try:
                    dataset = _dataset_of(item, chosen.transfer_syntax)
                except (OSError, ValueError) as exc:
                    log.warning(
                        "scp.get.unreadable",
                        **info.log_context(),
                        sop_instance_uid=item.sop_instance_uid,
                        reason=str(exc),
                    )
                else:
                    try:
                        rsp = requests.request(chosen.context_id, _store_fields(item), dataset)
                    except FileReadError as exc:
                        # Part of the data set is out: nothing but an A-ABORT can follow it.
                        reason = str(exc.__cause__ or exc)
                        log.warning(
                            "scp.get.unreadable",
                            **info.log_context(),
                            sop_instance_uid=item.sop_instance_uid,
                            reason=reason,
                        )
                        raise AbortAssociation(
                            f"C-GET: stored file of {item.sop_instance_uid} became unreadable "
                            f"while being sent ({reason})"
                        ) from exc
                    value = rsp.command.get("Status")
                    code = value if isinstance(value, int) else None
            if done(item, code):
                return True
        return False

    # -- C-MOVE: new associations to the destination ----------------------------------------

    def _move(
        self,
        info: AssociationInfo,
        cmd: dimse.Command,
        destination: Peer,
        items: list[RetrieveItem],
        done: Callable[[RetrieveItem, int | None], bool],
        fields: dict[str, Any],
    ) -> bool:
        originator = {
            "MoveOriginatorApplicationEntityTitle": info.calling_ae,
            "MoveOriginatorMessageID": cmd.get_int("MessageID"),
        }
        slot = self.slots.slot(destination)
        for contexts, group in plan_contexts(items):
            if not slot.acquire(timeout=destination.config.timeouts.connect * 6):
                fields["destination_error"] = "no free association (max_associations)"
                for item in group:
                    if done(item, None):
                        return True
                continue
            try:
                if self._move_group(info, destination, contexts, group, originator, done, fields):
                    return True
            finally:
                slot.release()
        return False

    def _move_group(
        self,
        info: AssociationInfo,
        destination: Peer,
        contexts: list[ContextRequest],
        group: list[RetrieveItem],
        originator: dict[str, Any],
        done: Callable[[RetrieveItem, int | None], bool],
        fields: dict[str, Any],
    ) -> bool:
        """Send *group* on one association, a new one after a file failed mid-stream (that
        aborted the association); True if the requestor cancelled."""
        sent = 0
        while sent < len(group):
            try:
                with Requestor(params_for(destination, self.node, contexts)) as assoc:
                    while sent < len(group):
                        item = group[sent]
                        lost = False
                        try:
                            code = self._move_one(assoc, item, originator)
                        except Unreadable as exc:
                            log.warning(
                                "scp.move.unreadable",
                                **info.log_context(),
                                sop_instance_uid=item.sop_instance_uid,
                                move_destination=destination.name,
                                reason=str(exc),
                                association_lost=exc.lost,
                            )
                            code, lost = None, exc.lost
                        sent += 1
                        if done(item, code):
                            return True
                        if lost:
                            break  # the rest go on a new association
            except (AssociationRejected, AssociationAborted, PeerUnreachable) as exc:
                fields["destination_error"] = str(exc)
                return any(done(item, None) for item in group[sent:])
        return False

    @staticmethod
    def _move_one(assoc: Requestor, item: RetrieveItem, originator: dict[str, Any]) -> int | None:
        """Send *item*; its status (None: no context for it). Unreadable if its file fails."""
        own = assoc.context_for(item.sop_class_uid, (item.transfer_syntax_uid,))
        ctx = own or assoc.context_for(item.sop_class_uid, UNCOMPRESSED_SYNTAXES)
        if ctx is None or ctx.transfer_syntax is None:
            return None
        try:
            dataset = _dataset_of(item, ctx.transfer_syntax)
        except (OSError, ValueError) as exc:
            raise Unreadable(str(exc), lost=False) from exc
        try:
            rsp = assoc.request(ctx.context_id, {**_store_fields(item), **originator}, dataset)
        except OSError as exc:  # reading the file mid-stream (``Requestor.send`` aborted)
            raise Unreadable(str(exc), lost=True) from exc
        value = rsp.command.get("Status")
        return value if isinstance(value, int) else None


def _store_fields(item: RetrieveItem) -> dict[str, Any]:
    return {
        "AffectedSOPClassUID": item.sop_class_uid,
        "CommandField": dimse.C_STORE_RQ,
        "Priority": 0,
        "AffectedSOPInstanceUID": item.sop_instance_uid,
    }


def _context_for(contexts: list[AcceptedContext], item: RetrieveItem) -> AcceptedContext | None:
    """The requestor's SCP-role context for *item*: its stored syntax, else uncompressed."""
    same = [c for c in contexts if c.abstract_syntax == item.sop_class_uid]
    for ctx in same:
        if ctx.transfer_syntax == item.transfer_syntax_uid:
            return ctx
    for syntax in UNCOMPRESSED_SYNTAXES:
        for ctx in same:
            if ctx.transfer_syntax == syntax:
                return ctx
    return None
