"""Encode a DICOM file preamble and File Meta Information group (PS3.10 7.1). Pure."""

from __future__ import annotations

import struct

from ctnode.dicom.uids import ae_title_problem
from ctnode.ul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = bytes(128) + b"DICM"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN", b"UT"):
        return struct.pack("<HH2sHL", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and the file meta group for an object received over the network.

    The Source AE Title is the caller's calling AE title, written only when it is a valid AE
    title: a caller on an open node can call itself anything (non-ASCII bytes, control
    characters, backslashes), and none of that belongs in a stored file.
    """
    if source_ae_title is not None and ae_title_problem(source_ae_title) is not None:
        source_ae_title = None
    body = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _text(sop_class_uid, b"\x00")),
            _element(0x0003, b"UI", _text(sop_instance_uid, b"\x00")),
            _element(0x0010, b"UI", _text(transfer_syntax_uid, b"\x00")),
            _element(0x0012, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME, b" ")),
        ]
        + ([_element(0x0016, b"AE", _text(source_ae_title, b" "))] if source_ae_title else [])
    )
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return PREAMBLE + group_length + body


def read_meta_length(head: bytes) -> int:
    """Offset of the data set in a Part 10 file whose first bytes are *head* (>= 144 bytes).

    Raises ValueError if *head* is not the start of a Part 10 file with a group length.
    """
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    group, element, vr, _length = struct.unpack_from("<HH2sH", head, 132)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("file meta information has no group length")
    (group_length,) = struct.unpack_from("<L", head, 140)
    return 144 + int(group_length)
