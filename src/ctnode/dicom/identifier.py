"""C-FIND response identifiers, encoded without pydicom (one per match: it is the hot path of a
large query), pure.

``encode_elements`` writes top-level elements of the simple VRs a query returns (text, ``US``,
an empty sequence) in Implicit or Explicit VR Little Endian; every value is padded to even
length (PS3.5 7.1: UIDs with 0x00, text with a space), so the data set is even too.
``response_charset`` picks the Specific Character Set: none when every value is ASCII, else the
query's own when it can carry them (ISO_IR 100), else UTF-8 (ISO_IR 192).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHL")
SPECIFIC_CHARACTER_SET = 0x00080005

#: Specific Character Set values ctnode answers in, and their Python codecs.
CODECS = {"": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def response_charset(texts: Iterable[str], query_charset: str) -> str:
    """The Specific Character Set for a response holding *texts* ("" when all are ASCII)."""
    wide = [t for t in texts if not t.isascii()]
    if not wide:
        return ""
    if query_charset == "ISO_IR 100":
        try:
            for text in wide:
                text.encode("latin-1")
        except UnicodeEncodeError:
            return "ISO_IR 192"
        return "ISO_IR 100"
    return "ISO_IR 192"


def _value_bytes(vr: str, values: Sequence[str], codec: str) -> bytes:
    if vr == "US":
        return b"".join(struct.pack("<H", int(v) & 0xFFFF) for v in values if v.isdigit())
    if vr == "SQ" or not values:
        return b""
    raw = "\\".join(values).encode(codec, errors="replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_elements(
    elements: Iterable[tuple[int, str, Sequence[str]]], *, explicit: bool, charset: str = ""
) -> bytes:
    """Encode (tag, VR, values) elements, sorted by tag, as a little endian data set.

    *charset* is a ``CODECS`` key; when not empty a Specific Character Set element is added.
    """
    codec = CODECS[charset]
    items = {tag: (vr, values) for tag, vr, values in elements}
    if charset:
        items[SPECIFIC_CHARACTER_SET] = ("CS", (charset,))
    out = bytearray()
    for tag in sorted(items):
        vr, values = items[tag]
        value = _value_bytes(vr, values, codec)
        group, element = tag >> 16, tag & 0xFFFF
        if not explicit:
            out += _IMPLICIT.pack(group, element, len(value))
        elif vr in _LONG_VRS:
            out += _EXPLICIT_LONG.pack(group, element, vr.encode("ascii"), 0, len(value))
        else:
            out += _EXPLICIT_SHORT.pack(group, element, vr.encode("ascii"), len(value))
        out += value
    return bytes(out)
