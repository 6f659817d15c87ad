"""Walk an encoded data set without decoding it: validate its structure, pick a few values.

The receive path stores objects exactly as they arrived, so it never needs a pydicom Dataset; it
needs to know the bytes form a well-formed data set (every element fits, sequences and items are
properly delimited, nesting is bounded) and the handful of top-level values that index it. This
walk does both in one pass over the buffer (``bytes``, ``mmap`` or ``memoryview``), without
copying element values other than the ones asked for.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

MAX_DEPTH = 64

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
MODALITY = 0x00080060
ACCESSION_NUMBER = 0x00080050
STUDY_DESCRIPTION = 0x00081030
SERIES_DESCRIPTION = 0x0008103E
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
SPECIFIC_CHARACTER_SET = 0x00080005
# query/retrieve keys (index revision 0005)
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
STUDY_ID = 0x00200010
REFERRING_PHYSICIAN_NAME = 0x00080090
BODY_PART_EXAMINED = 0x00180015
SERIES_DATE = 0x00080021
SERIES_TIME = 0x00080031
ROWS = 0x00280010
COLUMNS = 0x00280011
NUMBER_OF_FRAMES = 0x00280008

INDEX_TAGS: frozenset[int] = frozenset(
    {
        PATIENT_BIRTH_DATE,
        PATIENT_SEX,
        STUDY_ID,
        REFERRING_PHYSICIAN_NAME,
        BODY_PART_EXAMINED,
        SERIES_DATE,
        SERIES_TIME,
        ROWS,
        COLUMNS,
        NUMBER_OF_FRAMES,
        SOP_CLASS_UID,
        SOP_INSTANCE_UID,
        STUDY_INSTANCE_UID,
        SERIES_INSTANCE_UID,
        PATIENT_ID,
        PATIENT_NAME,
        STUDY_DATE,
        STUDY_TIME,
        MODALITY,
        ACCESSION_NUMBER,
        STUDY_DESCRIPTION,
        SERIES_DESCRIPTION,
        SERIES_NUMBER,
        INSTANCE_NUMBER,
        SPECIFIC_CHARACTER_SET,
    }
)

_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG = struct.Struct("<HH")
_IMPLICIT_HEADER = struct.Struct("<HHL")
_SHORT_LEN = struct.Struct("<H")
_LONG_LEN = struct.Struct("<L")


class DatasetError(ValueError):
    """The bytes are not a well-formed data set (the message says where)."""


class DatasetTooDeep(DatasetError):
    """Sequences nest deeper than the limit."""


class DatasetTooLarge(DatasetError):
    """A deflated data set inflates beyond the size limit."""


@dataclass(slots=True)
class ScanResult:
    """What the walk found: raw bytes of the wanted top-level elements and the data set length."""

    values: dict[int, bytes]
    length: int
    has_file_meta: bool

    def text(self, tag: int) -> str | None:
        """A top-level value as stripped ASCII text (UIDs, codes, dates), or None."""
        raw = self.values.get(tag)
        if raw is None:
            return None
        return raw.decode("ascii", errors="replace").strip("\x00 ") or None


def _is_sequence_vr_implicit(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


class _Walker:
    __slots__ = ("buf", "end", "found", "has_meta", "max_depth", "wanted")

    def __init__(self, buf: bytes | memoryview, wanted: frozenset[int], max_depth: int) -> None:
        self.buf = buf
        self.end = len(buf)
        self.wanted = wanted
        self.max_depth = max_depth
        self.found: dict[int, bytes] = {}
        self.has_meta = False

    def fail(self, pos: int, message: str) -> DatasetError:
        return DatasetError(f"{message} at byte {pos}")

    def dataset(self, pos: int, end: int, explicit: bool, depth: int, delimited: bool) -> int:
        """Walk elements from *pos* to *end* (or to an item delimiter if *delimited*)."""
        buf = self.buf
        while pos < end:
            if pos + 8 > end:
                raise self.fail(pos, "truncated element header")
            group, element = _TAG.unpack_from(buf, pos)
            tag = (group << 16) | element
            if tag == _ITEM_DELIM:
                if not delimited:
                    raise self.fail(pos, "item delimiter outside an undefined-length item")
                return pos + 8
            if group == 0xFFFE:
                raise self.fail(pos, f"unexpected delimiter ({group:04X},{element:04X})")
            if explicit:
                vr = bytes(buf[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise self.fail(pos, "truncated element header")
                    (length,) = _LONG_LEN.unpack_from(buf, pos + 8)
                    pos += 12
                elif vr.isalpha() and vr.isupper():
                    (length,) = _SHORT_LEN.unpack_from(buf, pos + 6)
                    pos += 8
                else:
                    raise self.fail(pos, f"invalid VR {vr!r}")
            else:
                (length,) = _LONG_LEN.unpack_from(buf, pos + 4)
                vr = b"SQ" if length == _UNDEFINED or _is_sequence_vr_implicit(tag) else b"??"
                pos += 8
            if depth == 0 and group == 0x0002:
                self.has_meta = True
            if length == _UNDEFINED:
                if vr == b"SQ":
                    pos = self.sequence(pos, end, explicit, depth + 1, None)
                elif vr == b"UN":
                    pos = self.sequence(pos, end, False, depth + 1, None)
                elif tag == 0x7FE00010 and vr in (b"OB", b"OW"):
                    pos = self.fragments(pos, end)
                else:
                    raise self.fail(pos, f"undefined length for ({group:04X},{element:04X})")
                continue
            if length > end - pos:
                raise self.fail(pos, f"element ({group:04X},{element:04X}) runs past the end")
            if vr == b"SQ" and length:
                self.sequence(pos, pos + length, explicit, depth + 1, pos + length)
            elif depth == 0 and tag in self.wanted:
                self.found[tag] = bytes(buf[pos : pos + length])
            pos += length
        if delimited:
            raise self.fail(pos, "undefined-length item without an item delimiter")
        return pos

    def sequence(self, pos: int, end: int, explicit: bool, depth: int, stop: int | None) -> int:
        """Walk items of a sequence; *stop* is its end if it has a defined length."""
        if depth > self.max_depth:
            raise DatasetTooDeep(f"sequences nested deeper than {self.max_depth} levels")
        limit = stop if stop is not None else end
        buf = self.buf
        while pos < limit:
            if pos + 8 > limit:
                raise self.fail(pos, "truncated item header")
            group, element = _TAG.unpack_from(buf, pos)
            (length,) = _LONG_LEN.unpack_from(buf, pos + 4)
            tag = (group << 16) | element
            pos += 8
            if tag == _SEQ_DELIM:
                if stop is not None:
                    raise self.fail(pos, "sequence delimiter in a defined-length sequence")
                return pos
            if tag != _ITEM:
                raise self.fail(pos, f"expected an item, found ({group:04X},{element:04X})")
            if length == _UNDEFINED:
                pos = self.dataset(pos, limit, explicit, depth, delimited=True)
            else:
                if length > limit - pos:
                    raise self.fail(pos, "item runs past its sequence")
                self.dataset(pos, pos + length, explicit, depth, delimited=False)
                pos += length
        if stop is None:
            raise self.fail(pos, "undefined-length sequence without a sequence delimiter")
        return pos

    def fragments(self, pos: int, end: int) -> int:
        """Walk encapsulated pixel data items up to the sequence delimiter."""
        buf = self.buf
        while pos + 8 <= end:
            group, element = _TAG.unpack_from(buf, pos)
            (length,) = _LONG_LEN.unpack_from(buf, pos + 4)
            tag = (group << 16) | element
            pos += 8
            if tag == _SEQ_DELIM:
                return pos
            if tag != _ITEM or length == _UNDEFINED or length > end - pos:
                raise self.fail(pos, "malformed encapsulated pixel data fragment")
            pos += length
        raise self.fail(pos, "encapsulated pixel data without a sequence delimiter")


def scan_dataset(
    buf: bytes | memoryview,
    *,
    explicit_vr: bool,
    deflated: bool = False,
    wanted: Iterable[int] = INDEX_TAGS,
    max_depth: int = MAX_DEPTH,
    max_inflated: int = 1 << 31,
) -> ScanResult:
    """Validate the data set in *buf* and return the raw bytes of the *wanted* top-level tags.

    Raises DatasetError (or its subclass DatasetTooDeep) if the data set is malformed.
    """
    data: bytes | memoryview = buf
    if deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(bytes(buf), max_inflated)
        except zlib.error as exc:
            raise DatasetError(f"deflated data set does not inflate: {exc}") from exc
        if inflater.unconsumed_tail:
            raise DatasetTooLarge(f"deflated data set inflates to more than {max_inflated} bytes")
    walker = _Walker(data, frozenset(wanted), max_depth)
    try:
        walker.dataset(0, len(data), explicit_vr, 0, delimited=False)
    except struct.error as exc:  # pragma: no cover - guarded by explicit length checks
        raise DatasetError(f"truncated data set: {exc}") from exc
    if not len(data):
        raise DatasetError("empty data set")
    return ScanResult(walker.found, len(data), walker.has_meta)
