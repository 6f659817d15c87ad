"""Text values of a data set decoded per its Specific Character Set (PS3.5 6.1), pure.

Used where ctnode reads a few attributes without decoding the whole data set: the instance
index at ingest (``storage.rows``) and the facts routes match on (``routing.decisions``).
"""

from __future__ import annotations

import warnings

from pydicom.charset import convert_encodings, decode_bytes


def decode_text(raw: bytes | None, charset: bytes | None) -> str | None:
    """An indexed text value decoded per Specific Character Set (latin-1 if that is broken)."""
    if not raw:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        terms = (
            charset.decode("ascii", errors="replace").strip("\x00 ").split("\\") if charset else []
        )
        try:
            encodings = convert_encodings(terms or ["ISO_IR 6"])
            text = decode_bytes(raw, encodings, {0x5E, 0x3D})
        except Exception:  # a broken charset must not refuse the object
            text = raw.decode("latin-1")
    return text.strip("\x00 ") or None
