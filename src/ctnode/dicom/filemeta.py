"""Encode, and read strictly, a DICOM file preamble and File Meta Information group (PS3.10
7.1). Pure but for ``read_file_meta``, which reads from an open file."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from ctnode.dicom.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    ae_title_problem,
)

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


# ------------------------------------------------------------------ reading


#: VRs whose explicit-VR encoding has a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

#: Bytes read first when probing a file: the file meta of real files is a few hundred bytes.
PROBE_BYTES = 4096


class NotPart10(ValueError):
    """The bytes do not start with a 128-byte preamble and ``DICM``: not a Part 10 file."""


class IrregularMeta(ValueError):
    """The file meta group is not in the plain, common form this reader accepts (no group
    length, truncated, undefined or overlong lengths, an implicit VR, elements past the group
    length...). Such a file may still be readable by a lenient reader."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What a push needs from a Part 10 file's meta group (values as in the file, unpadded;
    an element absent from the file is ``""``)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: Offset of the data set: 132 + the length of the meta group.
    dataset_offset: int


def meta_end(head: bytes) -> int:
    """Where the meta group of the file starting with *head* ends, by its group length
    (``PROBE_BYTES`` of the file's start are enough unless the group is unusually long).

    Raises NotPart10 or IrregularMeta.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        raise NotPart10("not a DICOM Part 10 file (no DICM prefix)")
    if len(head) < 144:
        raise IrregularMeta("file meta information is truncated")
    group, element, vr, length = struct.unpack_from("<HH2sH", head, 132)
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        raise IrregularMeta("file meta information does not start with its group length")
    (group_length,) = struct.unpack_from("<L", head, 140)
    return 144 + int(group_length)


def parse_file_meta(data: bytes) -> FileMeta:
    """The meta group of a Part 10 file whose first bytes are *data* (at least up to
    ``meta_end(data)``). Pure and strict: anything but explicit VR little endian elements of
    group 0002 exactly filling the group length is IrregularMeta; no ``DICM`` is NotPart10.
    """
    end = meta_end(data)
    if len(data) < end:
        raise IrregularMeta("file meta information is truncated")
    values: dict[int, bytes] = {}
    pos = 144
    while pos < end:
        if end - pos < 8:
            raise IrregularMeta("file meta element overruns the group length")
        group, element, vr = struct.unpack_from("<HH2s", data, pos)
        if group != 0x0002:
            raise IrregularMeta(f"element ({group:04X},{element:04X}) inside the meta group")
        if vr in _LONG_VRS:
            if end - pos < 12:
                raise IrregularMeta("file meta element overruns the group length")
            (length,) = struct.unpack_from("<L", data, pos + 8)
            pos += 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        else:
            raise IrregularMeta("file meta information is not in explicit VR")
        if length > end - pos:  # also catches the undefined length 0xFFFFFFFF
            raise IrregularMeta(f"file meta element (0002,{element:04X}) overruns the group")
        values[element] = data[pos : pos + length]
        pos += length
    if len(data) >= end + 2 and struct.unpack_from("<H", data, end)[0] == 0x0002:
        raise IrregularMeta("file meta elements continue past the group length")

    def text(element: int) -> str:
        return values.get(element, b"").decode("latin-1").rstrip("\0 ")

    return FileMeta(text(0x0002), text(0x0003), text(0x0010), end)


def read_file_meta(fh: BinaryIO) -> FileMeta:
    """Read and parse the meta group from a binary file positioned at its start."""
    head = fh.read(PROBE_BYTES)
    end = meta_end(head)
    if end > len(head) and len(head) == PROBE_BYTES:
        if end > 1 << 20:
            raise IrregularMeta(f"file meta group length {end - 144} is implausible")
        head += fh.read(end - len(head))
    return parse_file_meta(head)
