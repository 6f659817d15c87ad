"""C-FIND SCP (PS3.4 C.4.1) over the local index, Patient Root and Study Root.

Statuses:

* 0xFF00 pending, one per match, with its identifier; 0xFF01 when the query has a matching key
  ctnode does not index (it matched as universal, PS3.4 C.4.1.1.4.2: optional keys)
* 0x0000 every match sent
* 0xFE00 the requestor sent C-CANCEL-RQ (matches stopped)
* 0xA900 identifier does not match the SOP class: no or an unknown QueryRetrieveLevel, PATIENT
  in Study Root, a unique key of an upper level missing (hierarchical queries; relational
  queries are not negotiated)
* 0xA700 out of resources: the index database is unavailable (the reason is the driver's
  message, never the SQL or its parameters, which hold the peer's key values)
* 0xC000 unable to process: the identifier cannot be decoded, or the node is shutting down

Responses carry every key the request asked for: the indexed ones with their values, the others
zero-length; the unique keys of the query level and above always. ``RetrieveAETitle`` is ours,
``InstanceAvailability`` ONLINE. The log names the keys, never their values.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ctnode.dicom import matching as M
from ctnode.dicom import status
from ctnode.dicom.contexts import IMPLICIT_VR_LE
from ctnode.dicom.identifier import encode_elements, response_charset
from ctnode.logs import get_logger
from ctnode.qrindex import Entity, QrIndex
from ctnode.scp.qr_common import (
    QUERY_RETRIEVE_LEVEL,
    Identifier,
    IdentifierError,
    QrObserver,
    database_error_reason,
    model_of,
    read_identifier,
)
from ctnode.ul import dimse
from ctnode.ul.acceptor import AcceptedContext, AssociationInfo, Reply

log = get_logger("ctnode.scp")

RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056


class FindService:
    """Answers C-FIND-RQs from the index."""

    def __init__(
        self,
        index: QrIndex,
        ae_title: str,
        observer: QrObserver | None = None,
        *,
        case_insensitive_names: bool = False,
    ) -> None:
        self.index = index
        self.ae_title = ae_title
        self.observer = observer
        self.case_insensitive_names = case_insensitive_names

    def __call__(
        self, info: AssociationInfo, ctx: AcceptedContext, cmd: dimse.Command, data: bytes
    ) -> Reply:
        """Send every match as a pending response; return the final response."""
        started = time.monotonic()
        fields: dict[str, Any] = {
            **info.log_context(),
            "sop_class_uid": ctx.abstract_syntax,
        }
        code, comment, counts = self._answer(info, ctx, cmd, data, fields, started)
        fields.update(counts)
        fields["status"] = status.hex_status(code)
        fields["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        info.count("queries")
        if code in (status.SUCCESS, status.CANCEL):
            log.info("scp.find.finished", **fields)
        else:
            log.warning("scp.find.failed", **fields, reason=comment)
        if self.observer is not None:
            self.observer.query_answered(getattr(info.peer, "name", "unknown"), "find", code)
        extra: dict[str, Any] = {"ErrorComment": comment[:64]} if comment else {}
        return Reply(dimse.response_fields(cmd, dimse.C_FIND_RSP, code, **extra))

    def _answer(
        self,
        info: AssociationInfo,
        ctx: AcceptedContext,
        cmd: dimse.Command,
        data: bytes,
        fields: dict[str, Any],
        started: float,
    ) -> tuple[int, str | None, dict[str, Any]]:
        model = model_of(ctx.abstract_syntax)
        try:
            identifier = read_identifier(data, ctx.transfer_syntax)
        except IdentifierError as exc:
            return status.CANNOT_UNDERSTAND, f"undecodable identifier: {exc}", {}
        fields["qr_level"] = identifier.level
        problem = M.check_identifier(model, identifier.level, identifier.values())
        if problem is not None:
            return status.DATASET_MISMATCH, problem, {}
        matchers, unsupported, keys = self._plan(model, identifier)
        fields["matching_keys"] = sorted(M.KEYS[t].keyword for t, _ in matchers)
        if unsupported:
            fields["unsupported_keys"] = unsupported
        pending = status.PENDING_WARNING if unsupported else status.PENDING
        requests = info.requests
        assert requests is not None
        message_id = cmd.get_int("MessageID")
        explicit = ctx.transfer_syntax != IMPLICIT_VR_LE
        sent = 0
        first_ms: float | None = None
        try:
            for entity in self.index.entities(identifier.level, keys):
                if not M.matches(entity, matchers):
                    continue
                dataset = self._response(identifier, entity, explicit)
                rsp = dimse.response_fields(cmd, dimse.C_FIND_RSP, pending)
                requests.respond(ctx.context_id, rsp, dataset)
                sent += 1
                if first_ms is None:
                    first_ms = round((time.monotonic() - started) * 1000, 1)
                requests.poll()
                if requests.cancelled(message_id):
                    return status.CANCEL, None, {"matches": sent, "first_ms": first_ms}
                if requests.stopping:
                    return status.CANNOT_UNDERSTAND, "ctnode is shutting down", {"matches": sent}
        except SQLAlchemyError as exc:
            return status.OUT_OF_RESOURCES, database_error_reason(exc), {}
        finally:
            requests.forget(message_id)
        return status.SUCCESS, None, {"matches": sent, "first_ms": first_ms}

    def _plan(
        self, model: str, identifier: Identifier
    ) -> tuple[list[tuple[int, M.Matcher]], list[str], dict[int, tuple[str, str]]]:
        """Matchers of the keys at or above the query level, the keywords of matching keys
        ctnode does not index, and those keys as the index narrows by them (tag -> VR, value)."""
        rank = M.level_rank(identifier.level, model)
        matchers: list[tuple[int, M.Matcher]] = []
        unsupported: list[str] = []
        keys: dict[int, tuple[str, str]] = {}
        for tag, key in identifier.keys.items():
            known = M.KEYS.get(tag)
            if known is None:
                if key.vr != "SQ" and not M.is_universal(key.vr, key.value):
                    unsupported.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
                continue
            if M.level_rank(known.level, model) > rank:
                continue
            matcher = M.matcher_for(
                known.vr, key.value, case_insensitive_names=self.case_insensitive_names
            )
            if matcher is None:
                continue
            matchers.append((tag, matcher))
            keys[tag] = (known.vr, key.value)
        return matchers, unsupported, keys

    def _response(self, identifier: Identifier, entity: Entity, explicit: bool) -> bytes:
        """The identifier of one match: every requested key, the unique keys at and above the
        level, the level itself."""
        elements: list[tuple[int, str, tuple[str, ...]]] = [
            (QUERY_RETRIEVE_LEVEL, "CS", (identifier.level,))
        ]
        texts: list[str] = []
        for tag, key in identifier.keys.items():
            if tag == RETRIEVE_AE_TITLE:
                values: tuple[str, ...] = (self.ae_title,)
            elif tag == INSTANCE_AVAILABILITY:
                values = ("ONLINE",)
            else:
                values = entity.get(tag, ())
            known = M.KEYS.get(tag)
            vr = known.vr if known is not None else key.vr
            elements.append((tag, vr, values))
            texts.extend(values)
        for level in M.LEVELS[: M.LEVELS.index(identifier.level) + 1]:
            tag = M.UNIQUE_KEYS[level]
            if tag not in identifier.keys and tag in entity:
                elements.append((tag, M.KEYS[tag].vr, entity[tag]))
        charset = response_charset(texts, identifier.charset)
        return encode_elements(elements, explicit=explicit, charset=charset)
