"""PDU encoding and decoding (PS3.8 section 9.3). Pure: bytes in, values out.

Decoders take the PDU *body* (everything after the 6-byte header) and raise ``PDUError`` for
anything malformed; lengths are checked against the buffer before anything is sliced.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset(range(1, 8))

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ values (PS3.8 9.3.4)
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_SOURCE_USER, RJ_SOURCE_ACSE, RJ_SOURCE_PRESENTATION = 1, 2, 3
RJ_NO_REASON = 1
RJ_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
RJ_CALLING_AE_NOT_RECOGNIZED = 3
RJ_CALLED_AE_NOT_RECOGNIZED = 7
RJ_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # with source 2 (ACSE)
RJ_TEMPORARY_CONGESTION = 1  # with source 3 (presentation)
RJ_LOCAL_LIMIT_EXCEEDED = 2  # with source 3 (presentation)

# A-ABORT values (PS3.8 9.3.8)
ABORT_SOURCE_USER, ABORT_SOURCE_PROVIDER = 0, 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PARAMETER = 4
ABORT_UNEXPECTED_PARAMETER = 5
ABORT_INVALID_PARAMETER = 6

_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">BxH")
_PDV = struct.Struct(">LBB")


class PDUError(ValueError):
    """A PDU or item is malformed; the association must be aborted (reason in ``abort_reason``)."""

    def __init__(self, message: str, abort_reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """A presentation context item of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """A presentation context item of an A-ASSOCIATE-AC (result 0 = acceptance)."""

    context_id: int
    result: int
    transfer_syntax: str


@dataclass(slots=True)
class UserInformation:
    """The user information item: max PDU length, implementation identity, roles."""

    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    roles: list[RoleSelection] = field(default_factory=list)
    async_ops: tuple[int, int] | None = None
    #: Raw sub-items we do not interpret (extended negotiation, user identity): type -> bytes.
    other: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class AssociateRQ:
    """A decoded A-ASSOCIATE-RQ."""

    called_ae: str
    calling_ae: str
    protocol_version: int = 1
    application_context: str = APPLICATION_CONTEXT
    contexts: list[PresentationContextRQ] = field(default_factory=list)
    user: UserInformation = field(default_factory=UserInformation)


@dataclass(slots=True)
class AssociateAC:
    """A decoded A-ASSOCIATE-AC."""

    called_ae: str
    calling_ae: str
    protocol_version: int = 1
    application_context: str = APPLICATION_CONTEXT
    contexts: list[PresentationContextAC] = field(default_factory=list)
    user: UserInformation = field(default_factory=UserInformation)


@dataclass(frozen=True, slots=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ: result (1 permanent, 2 transient), source and reason."""

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class Abort:
    """A-ABORT (source 0 = service user, 2 = service provider)."""

    source: int
    reason: int


def parse_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return (pdu_type, body_length) of a 6-byte PDU header."""
    pdu_type, length = _HEADER.unpack(header)
    return pdu_type, length


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _uid(raw: bytes | memoryview) -> str:
    try:
        return bytes(raw).decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError as exc:
        raise PDUError("a UID in the PDU is not ASCII") from exc


def _items(body: bytes | memoryview, start: int, end: int) -> list[tuple[int, int, int]]:
    """Split a run of items into (type, value_start, value_end) triples."""
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise PDUError("truncated item header")
        item_type, length = _ITEM.unpack_from(body, pos)
        pos += 4
        if pos + length > end:
            raise PDUError(
                f"item 0x{item_type:02X} length {length} runs past the item or PDU holding it"
            )
        out.append((item_type, pos, pos + length))
        pos += length
    return out


def _decode_user_info(body: bytes, start: int, end: int) -> UserInformation:
    """The User Information item (PS3.8 9.3.2.3, PS3.7 Annex D.3.3); sub-items ctnode does not
    interpret, known or not, are kept raw in ``other`` and otherwise ignored (PS3.8 9.3.1)."""
    info = UserInformation()
    for sub_type, s, e in _items(body, start, end):
        value = body[s:e]
        if sub_type == 0x51:
            if len(value) != 4:
                raise PDUError("maximum length sub-item must be 4 bytes")
            info.max_pdu_length = struct.unpack(">L", value)[0]
        elif sub_type == 0x52:
            info.implementation_class_uid = _uid(value)
        elif sub_type == 0x55:
            info.implementation_version_name = value.decode("ascii", errors="replace").strip()
        elif sub_type == 0x53:
            if len(value) != 4:
                raise PDUError("asynchronous operations window sub-item must be 4 bytes")
            info.async_ops = struct.unpack(">HH", value)
        elif sub_type == 0x54:
            if len(value) < 4:
                raise PDUError("truncated role selection sub-item")
            (uid_len,) = struct.unpack_from(">H", value, 0)
            if 2 + uid_len + 2 != len(value):
                raise PDUError("role selection sub-item length does not match its UID length")
            uid = _uid(value[2 : 2 + uid_len])
            info.roles.append(RoleSelection(uid, bool(value[-2]), bool(value[-1])))
        else:
            info.other.append((sub_type, bytes(value)))
    return info


def _decode_fixed(body: bytes) -> tuple[int, str, str]:
    if len(body) < 68:
        raise PDUError("A-ASSOCIATE PDU shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    return version, _ae(body[4:20]), _ae(body[20:36])


def _decode_context_rq(body: bytes, start: int, end: int) -> PresentationContextRQ:
    """A presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2).

    Its ID must be odd (1-255, Table 9-13); sub-items other than abstract and transfer syntax
    are skipped (PS3.8 9.3.1).
    """
    if end - start < 4:
        raise PDUError("truncated presentation context item")
    context_id = body[start]
    if context_id % 2 == 0:
        raise PDUError(
            f"presentation context ID {context_id} is not odd: PS3.8 9.3.2.2 requires odd IDs "
            "from 1 to 255 (a fault of the calling device's DICOM stack)"
        )
    abstract = ""
    syntaxes: list[str] = []
    for sub_type, s, e in _items(body, start + 4, end):
        if sub_type == 0x30:
            abstract = _uid(body[s:e])
        elif sub_type == 0x40:
            syntaxes.append(_uid(body[s:e]))
    return PresentationContextRQ(context_id, abstract, tuple(syntaxes))


def decode_associate_rq(body: bytes) -> AssociateRQ:
    """Decode the body of an A-ASSOCIATE-RQ.

    Items of unknown type are skipped (PS3.8 9.3.1). PDUError for a presentation context ID
    that is even or used twice (reason 6), and for a second Application Context or User
    Information item (reason 5: Table 9-11 allows one of each).
    """
    version, called, calling = _decode_fixed(body)
    rq = AssociateRQ(called_ae=called, calling_ae=calling, protocol_version=version)
    app_context_seen = user_seen = False
    context_ids: set[int] = set()
    for item_type, s, e in _items(body, 68, len(body)):
        if item_type == 0x10:
            if app_context_seen:
                raise PDUError(
                    "A-ASSOCIATE-RQ carries two Application Context items (PS3.8 9.3.2 allows one)",
                    ABORT_UNEXPECTED_PARAMETER,
                )
            rq.application_context = _uid(body[s:e])
            app_context_seen = True
        elif item_type == 0x20:
            context = _decode_context_rq(body, s, e)
            if context.context_id in context_ids:
                raise PDUError(
                    f"A-ASSOCIATE-RQ proposes presentation context ID {context.context_id} "
                    "twice: each context needs its own ID (PS3.8 7.1.1.13)"
                )
            context_ids.add(context.context_id)
            rq.contexts.append(context)
        elif item_type == 0x50:
            if user_seen:
                raise PDUError(
                    "A-ASSOCIATE-RQ carries two User Information items (PS3.8 9.3.2 allows one)",
                    ABORT_UNEXPECTED_PARAMETER,
                )
            rq.user = _decode_user_info(body, s, e)
            user_seen = True
    if not app_context_seen:
        rq.application_context = ""
    return rq


def decode_associate_ac(body: bytes) -> AssociateAC:
    """Decode the body of an A-ASSOCIATE-AC; items and sub-items of unknown type are skipped
    (PS3.8 9.3.1)."""
    version, called, calling = _decode_fixed(body)
    ac = AssociateAC(called_ae=called, calling_ae=calling, protocol_version=version)
    for item_type, s, e in _items(body, 68, len(body)):
        if item_type == 0x10:
            ac.application_context = _uid(body[s:e])
        elif item_type == 0x21:
            if e - s < 4:
                raise PDUError("truncated presentation context item")
            context_id, result = body[s], body[s + 2]
            syntax = ""
            for sub_type, ss, se in _items(body, s + 4, e):
                if sub_type == 0x40:
                    syntax = _uid(body[ss:se])
            ac.contexts.append(PresentationContextAC(context_id, result, syntax))
        elif item_type == 0x50:
            ac.user = _decode_user_info(body, s, e)
    return ac


def decode_associate_rj(body: bytes) -> AssociateRJ:
    """Decode the body of an A-ASSOCIATE-RJ."""
    if len(body) != 4:
        raise PDUError("A-ASSOCIATE-RJ body must be 4 bytes")
    return AssociateRJ(body[1], body[2], body[3])


def decode_abort(body: bytes) -> Abort:
    """Decode the body of an A-ABORT (tolerates a wrong length: an abort is an abort)."""
    if len(body) >= 4:
        return Abort(body[2], body[3])
    return Abort(ABORT_SOURCE_PROVIDER, ABORT_REASON_NOT_SPECIFIED)


# ---------------------------------------------------------------- encoding


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def _ae_field(ae: str) -> bytes:
    return ae.encode("ascii", errors="replace")[:16].ljust(16, b" ")


def _encode_user_info(user: UserInformation) -> bytes:
    parts = [_item(0x51, struct.pack(">L", user.max_pdu_length))]
    parts.append(_item(0x52, user.implementation_class_uid.encode("ascii")))
    if user.async_ops is not None:
        parts.append(_item(0x53, struct.pack(">HH", *user.async_ops)))
    for role in user.roles:
        uid = role.sop_class_uid.encode("ascii")
        parts.append(
            _item(0x54, struct.pack(">H", len(uid)) + uid + bytes([role.scu_role, role.scp_role]))
        )
    if user.implementation_version_name:
        parts.append(_item(0x55, user.implementation_version_name.encode("ascii")[:16]))
    parts.extend(_item(t, v) for t, v in user.other)
    return _item(0x50, b"".join(parts))


def _fixed(version: int, called: str, calling: str) -> bytes:
    return struct.pack(">HH", version, 0) + _ae_field(called) + _ae_field(calling) + bytes(32)


def encode_associate_rq(rq: AssociateRQ) -> bytes:
    """Encode an A-ASSOCIATE-RQ PDU."""
    parts = [_fixed(rq.protocol_version, rq.called_ae, rq.calling_ae)]
    parts.append(_item(0x10, rq.application_context.encode("ascii")))
    for ctx in rq.contexts:
        sub = _item(0x30, ctx.abstract_syntax.encode("ascii")) + b"".join(
            _item(0x40, ts.encode("ascii")) for ts in ctx.transfer_syntaxes
        )
        parts.append(_item(0x20, bytes([ctx.context_id, 0, 0, 0]) + sub))
    parts.append(_encode_user_info(rq.user))
    return _pdu(A_ASSOCIATE_RQ, b"".join(parts))


def encode_associate_ac(ac: AssociateAC) -> bytes:
    """Encode an A-ASSOCIATE-AC PDU."""
    parts = [_fixed(ac.protocol_version, ac.called_ae, ac.calling_ae)]
    parts.append(_item(0x10, ac.application_context.encode("ascii")))
    for ctx in ac.contexts:
        parts.append(
            _item(
                0x21,
                bytes([ctx.context_id, 0, ctx.result, 0])
                + _item(0x40, ctx.transfer_syntax.encode("ascii")),
            )
        )
    parts.append(_encode_user_info(ac.user))
    return _pdu(A_ASSOCIATE_AC, b"".join(parts))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU."""
    return _pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rq() -> bytes:
    """Encode an A-RELEASE-RQ PDU."""
    return _pdu(A_RELEASE_RQ, bytes(4))


def encode_release_rp() -> bytes:
    """Encode an A-RELEASE-RP PDU."""
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = ABORT_SOURCE_USER, reason: int = 0) -> bytes:
    """Encode an A-ABORT PDU."""
    return _pdu(A_ABORT, bytes([0, 0, source, reason]))


def pdv_capacity(max_pdu_length: int) -> int:
    """Data bytes per PDV so a one-PDV P-DATA-TF stays within a peer's maximum PDU length
    (PS3.8 D.1: the PDU length, 6 bytes of PDV item header included), rounded down to even
    (PS3.8 Annex E: fragment lengths are even; an odd maximum such as 4097 gives 4090).

    0 means unlimited (we still fragment, at 16 MiB). A maximum below 8 leaves no room for an
    even fragment; such a peer gets two bytes per PDV rather than an endless stream of empty ones.
    """
    if max_pdu_length <= 0:
        return 1 << 24
    return max(max_pdu_length - 6, 2) & ~1


def pdata_header(context_id: int, is_command: bool, is_last: bool, data_length: int) -> bytes:
    """Header of a P-DATA-TF PDU carrying exactly one PDV of *data_length* bytes."""
    control = (1 if is_command else 0) | (2 if is_last else 0)
    return _HEADER.pack(P_DATA_TF, data_length + 6) + _PDV.pack(
        data_length + 2, context_id, control
    )


def iter_pdvs(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """Split a P-DATA-TF body into (context_id, control_header, data) PDVs.

    Raises PDUError when a PDV item's length runs past its PDU or is too short to hold its header.
    """
    out: list[tuple[int, int, memoryview]] = []
    pos, end = 0, len(body)
    if end == 0:
        raise PDUError("P-DATA-TF without any PDV")
    while pos < end:
        if pos + 6 > end:
            raise PDUError("truncated PDV item header")
        length, context_id, control = _PDV.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise PDUError(f"PDV item length {length} does not fit in its PDU")
        out.append((context_id, control, body[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return out
