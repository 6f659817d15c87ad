"""What the Query/Retrieve SCP handlers share: the request identifier read into keys, the
information model of a context, and the Q/R observer (metrics).

Identifier values are read with pydicom once per request (the identifier is small); from then
on a key is (tag, VR, text): a PN is its text form, several values are joined by ``\\``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ctnode.dicom import matching as M
from ctnode.dicom.contexts import PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE
from ctnode.scu.identifier import decode_identifier

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
_PATIENT_ROOT = frozenset({PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET})
#: Quoted literals in a driver's message (PostgreSQL quotes the offending value).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class QrObserver(Protocol):
    """Counts for metrics (implemented in ``metrics``)."""

    def query_answered(self, peer: str, service: str, code: int) -> None:
        """A C-FIND, C-MOVE or C-GET (*service*: find, move, get) ended with *code*."""

    def suboperation_done(self, peer: str, service: str, code: int | None) -> None:
        """A C-STORE sub-operation of a C-MOVE or C-GET was answered with *code* (None: it
        could not be sent: destination unreachable, no context, unreadable file)."""


@dataclass(frozen=True, slots=True)
class Key:
    """One element of a request identifier."""

    tag: int
    vr: str
    value: str


@dataclass(frozen=True, slots=True)
class Identifier:
    """A request identifier: its level, keys (no level, no character set) and character set."""

    level: str
    keys: dict[int, Key]
    charset: str

    def values(self) -> dict[int, str]:
        """Tag -> text of every key."""
        return {tag: key.value for tag, key in self.keys.items()}


class IdentifierError(ValueError):
    """The identifier cannot be decoded."""


def model_of(abstract_syntax: str) -> str:
    """``matching.PATIENT_ROOT`` or ``matching.STUDY_ROOT`` for a Q/R SOP class."""
    return M.PATIENT_ROOT if abstract_syntax in _PATIENT_ROOT else M.STUDY_ROOT


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def read_identifier(data: bytes, transfer_syntax: str) -> Identifier:
    """The keys of a C-FIND/C-MOVE/C-GET identifier (IdentifierError if undecodable)."""
    try:
        ds: Dataset = decode_identifier(data, transfer_syntax)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            level = _text(ds.get("QueryRetrieveLevel", "")).strip().upper()
            charset = _text(ds.get("SpecificCharacterSet", "")).strip()
            keys: dict[int, Key] = {}
            for element in ds:
                tag = int(element.tag)
                group = tag >> 16
                if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or group & 1:
                    continue
                if group in (0x0000, 0x0002):
                    continue
                vr = str(element.VR)
                value = "" if vr == "SQ" else _text(element.value)
                keys[tag] = Key(tag, vr, value)
    except ValueError as exc:
        raise IdentifierError(str(exc)) from exc
    except Exception as exc:  # pydicom's value conversions raise more than ValueError
        raise IdentifierError(f"undecodable identifier: {exc}") from exc
    return Identifier(level, keys, charset)


def database_error_reason(exc: BaseException) -> str:
    """A short reason for an index database error, for the log and the ErrorComment: the first
    line of the driver's message (``exc.orig``), quoted literals masked.

    Never ``str(exc)``: SQLAlchemy appends the SQL and its bound parameters, which are the
    peer's key values (patient data, possibly).
    """
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    first = lines[0] if lines else type(orig if orig is not None else exc).__name__
    return "index database error: " + _QUOTED.sub("'?'", first)[:120]


def retrieve_filters(model: str, identifier: Identifier) -> dict[int, list[str]]:
    """SQL narrowing for a C-MOVE/C-GET: the unique keys down to its level."""
    filters: dict[int, list[str]] = {}
    first = 0 if model == M.PATIENT_ROOT else 1
    for level in M.LEVELS[first : M.LEVELS.index(identifier.level) + 1]:
        tag = M.UNIQUE_KEYS[level]
        key = identifier.keys.get(tag)
        if key is None:
            continue
        values = [v.strip(" \x00") for v in key.value.split("\\") if v.strip(" \x00")]
        if values:
            filters[tag] = values
    return filters
