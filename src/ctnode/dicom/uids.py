"""UID and AE title rules (PS3.5 9.1, PS3.5 6.2).

These checks guard everything that turns a peer-supplied string into a path, a database key or a
log field, so they are strict: a UID is 1-64 characters of digits and dots, components without
leading zeros (a lone ``0`` is allowed), no empty components.
"""

from __future__ import annotations

import re
import uuid

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_UID_LENIENT_RE = re.compile(r"[0-9]+(\.[0-9]+)*")

#: Prefix of UIDs derived from a UUID (PS3.5 B.2).
UUID_ROOT = "2.25."

#: ctnode's Implementation Class UID: sent in every A-ASSOCIATE-RQ/AC (PS3.7 D.3.3.2) and
#: written into the file meta information of every stored file (PS3.10 7.1, (0002,0012)).
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1405.1"
#: ctnode's Implementation Version Name (PS3.7 D.3.3.2.3, (0002,0013)): 1-16 characters.
IMPLEMENTATION_VERSION_NAME = "CTNODE_01"


def is_valid_uid(value: object, *, strict: bool = False) -> bool:
    """Return True if *value* is a UID safe to use as a path component and key.

    The lenient form (default) accepts components with leading zeros, which some modalities emit
    and which are harmless for storage; ``strict=True`` applies PS3.5 9.1 exactly.
    """
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    pattern = _UID_RE if strict else _UID_LENIENT_RE
    return pattern.fullmatch(value) is not None


def generate_uid() -> str:
    """A new globally unique UID under the ``2.25.`` (UUID-derived) root."""
    return UUID_ROOT + str(uuid.uuid4().int)


def ae_title_problem(value: object) -> str | None:
    """Why *value* is not a usable AE title, or None if it is.

    PS3.5: 1-16 characters of the default character repertoire, no backslash, no control
    characters; leading and trailing spaces are not significant and an all-space title is empty.
    """
    if not isinstance(value, str):
        return "must be a string"
    stripped = value.strip(" ")
    if not stripped:
        return "must not be empty"
    if len(value) > 16:
        return f"is {len(value)} characters long; at most 16 are allowed"
    if "\\" in value:
        return "must not contain a backslash"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "must not contain control characters"
    if any(ord(ch) > 0x7E for ch in value):
        return "must use ASCII characters only"
    return None


def normalize_ae_title(value: bytes | str) -> str:
    """An AE title as received on the wire, with padding spaces and NULs removed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return value.strip(" \x00")
