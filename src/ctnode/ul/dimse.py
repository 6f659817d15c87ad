"""DIMSE command sets (PS3.7 section 9 and 10): encode and decode, pure.

A command set is group 0000 in Implicit VR Little Endian. We decode it by hand, with a fixed table
of the elements PS3.7 defines: no pydicom Dataset on the hot path, and every element's length is
checked against its VR so a malformed command is a ``CommandError``, never a crash.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from ctnode.dicom.uids import is_valid_uid

# Command Field values (PS3.7 Annex E.1); a response is its request with bit 15 set.
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_GET_RSP = 0x0110, 0x8110
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
N_DELETE_RQ, N_DELETE_RSP = 0x0150, 0x8150
C_CANCEL_RQ = 0x0FFF

NO_DATASET: Final = 0x0101
HAS_DATASET: Final = 0x0000

#: Every Command Field of PS3.7 Annex E.1 -> its name in logs (``C-GET-RSP``).
COMMAND_NAMES: Final[Mapping[int, str]] = {
    C_STORE_RQ: "C-STORE-RQ",
    C_STORE_RSP: "C-STORE-RSP",
    C_GET_RQ: "C-GET-RQ",
    C_GET_RSP: "C-GET-RSP",
    C_FIND_RQ: "C-FIND-RQ",
    C_FIND_RSP: "C-FIND-RSP",
    C_MOVE_RQ: "C-MOVE-RQ",
    C_MOVE_RSP: "C-MOVE-RSP",
    C_ECHO_RQ: "C-ECHO-RQ",
    C_ECHO_RSP: "C-ECHO-RSP",
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT-RQ",
    N_EVENT_REPORT_RSP: "N-EVENT-REPORT-RSP",
    N_GET_RQ: "N-GET-RQ",
    N_GET_RSP: "N-GET-RSP",
    N_SET_RQ: "N-SET-RQ",
    N_SET_RSP: "N-SET-RSP",
    N_ACTION_RQ: "N-ACTION-RQ",
    N_ACTION_RSP: "N-ACTION-RSP",
    N_CREATE_RQ: "N-CREATE-RQ",
    N_CREATE_RSP: "N-CREATE-RSP",
    N_DELETE_RQ: "N-DELETE-RQ",
    N_DELETE_RSP: "N-DELETE-RSP",
    C_CANCEL_RQ: "C-CANCEL-RQ",
}

# element number -> (keyword, VR)
_ELEMENTS: dict[int, tuple[str, str]] = {
    0x0000: ("CommandGroupLength", "UL"),
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0003: ("RequestedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0120: ("MessageIDBeingRespondedTo", "US"),
    0x0600: ("MoveDestination", "AE"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x0900: ("Status", "US"),
    0x0901: ("OffendingElement", "AT"),
    0x0902: ("ErrorComment", "LO"),
    0x0903: ("ErrorID", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x1001: ("RequestedSOPInstanceUID", "UI"),
    0x1002: ("EventTypeID", "US"),
    0x1005: ("AttributeIdentifierList", "AT"),
    0x1008: ("ActionTypeID", "US"),
    0x1020: ("NumberOfRemainingSuboperations", "US"),
    0x1021: ("NumberOfCompletedSuboperations", "US"),
    0x1022: ("NumberOfFailedSuboperations", "US"),
    0x1023: ("NumberOfWarningSuboperations", "US"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}
_BY_KEYWORD: dict[str, tuple[int, str]] = {kw: (el, vr) for el, (kw, vr) in _ELEMENTS.items()}
_TAG_LEN = struct.Struct("<HHL")

CommandValue = int | str | tuple[int, ...]


class CommandError(ValueError):
    """A command set that cannot be decoded or lacks a required element."""


class Command(dict[str, CommandValue]):
    """A decoded command set: keyword -> value (ints for US/UL, str for UI/AE/LO, tuples for AT)."""

    @property
    def field(self) -> int:
        """CommandField (0x0000,0100)."""
        return self.get_int("CommandField")

    @property
    def has_dataset(self) -> bool:
        """True unless CommandDataSetType is 0x0101 (no data set)."""
        return self.get("CommandDataSetType", NO_DATASET) != NO_DATASET

    @property
    def name(self) -> str:
        """``C-STORE-RQ`` style name of the command."""
        value = self.get("CommandField")
        return COMMAND_NAMES.get(value, f"0x{value:04X}") if isinstance(value, int) else "?"

    def get_int(self, keyword: str) -> int:
        """An integer element; CommandError if it is missing."""
        value = self.get(keyword)
        if not isinstance(value, int):
            raise CommandError(f"command set has no {keyword}")
        return value

    def get_str(self, keyword: str) -> str:
        """A string element; CommandError if it is missing or empty."""
        value = self.get(keyword)
        if not isinstance(value, str) or not value:
            raise CommandError(f"command set has no {keyword}")
        return value


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode a command set; raises CommandError for anything malformed."""
    buf = bytes(data)
    pos, end = 0, len(buf)
    cmd = Command()
    while pos < end:
        if pos + 8 > end:
            raise CommandError("truncated element header in command set")
        group, element, length = _TAG_LEN.unpack_from(buf, pos)
        pos += 8
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) is not in group 0000")
        if length > end - pos:
            raise CommandError(f"element (0000,{element:04X}) runs past the command set")
        value = buf[pos : pos + length]
        pos += length
        known = _ELEMENTS.get(element)
        if known is None:
            continue
        keyword, vr = known
        if vr == "US":
            if length != 2:
                raise CommandError(f"{keyword} must be 2 bytes (US), got {length}")
            cmd[keyword] = struct.unpack("<H", value)[0]
        elif vr == "UL":
            if length != 4:
                raise CommandError(f"{keyword} must be 4 bytes (UL), got {length}")
            cmd[keyword] = struct.unpack("<L", value)[0]
        elif vr == "AT":
            if length % 4:
                raise CommandError(f"{keyword} must be a multiple of 4 bytes (AT)")
            words = struct.unpack(f"<{length // 2}H", value)
            cmd[keyword] = tuple((words[i] << 16) | words[i + 1] for i in range(0, len(words), 2))
        else:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError as exc:
                raise CommandError(f"{keyword} is not ASCII") from exc
            cmd[keyword] = text.rstrip("\x00 ") if vr == "UI" else text.strip(" \x00")
    if "CommandField" not in cmd:
        raise CommandError("command set has no CommandField")
    return cmd


def _encode_value(vr: str, value: CommandValue) -> bytes:
    if vr == "US":
        assert isinstance(value, int)
        return struct.pack("<H", value)
    if vr == "UL":
        assert isinstance(value, int)
        return struct.pack("<L", value)
    if vr == "AT":
        tags = value if isinstance(value, tuple) else (value,)
        return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
    raw = str(value).encode("ascii", errors="replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_command(fields: Mapping[str, CommandValue | None]) -> bytes:
    """Encode a command set; CommandGroupLength is computed. None values are left out."""
    elements: list[tuple[int, bytes]] = []
    for keyword, value in fields.items():
        if value is None or keyword == "CommandGroupLength":
            continue
        element, vr = _BY_KEYWORD[keyword]
        elements.append((element, _encode_value(vr, value)))
    elements.sort()
    body = b"".join(_TAG_LEN.pack(0, el, len(v)) + v for el, v in elements)
    return _TAG_LEN.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def response_fields(
    request: Command, field: int, status: int, **extra: CommandValue | None
) -> dict[str, CommandValue | None]:
    """Fields of a response to *request*: SOP class/instance echoed, no data set unless told."""
    sop_class = request.get("AffectedSOPClassUID") or request.get("RequestedSOPClassUID")
    sop_instance = request.get("AffectedSOPInstanceUID") or request.get("RequestedSOPInstanceUID")
    out: dict[str, CommandValue | None] = {
        # Echo the UIDs only when they are UIDs: a strict peer cannot decode a response
        # carrying the 70-character or path-like value it sent.
        "AffectedSOPClassUID": sop_class if is_valid_uid(sop_class) else None,
        "CommandField": field,
        "MessageIDBeingRespondedTo": request.get("MessageID", 0),
        "CommandDataSetType": NO_DATASET,
        "Status": status,
        "AffectedSOPInstanceUID": sop_instance if is_valid_uid(sop_instance) else None,
    }
    out.update(extra)
    return out
