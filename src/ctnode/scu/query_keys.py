"""Query keys (pure): ``-k`` arguments parsed into keys, the level's default return keys added,
the C-FIND request identifier built from them, and the ``query`` job payload.

Keys follow DCMTK ``findscu -k``: ``Keyword=value`` or ``gggg,eeee=value`` is a matching key,
``Keyword`` (or ``Keyword=``) a return key. Values pass through untouched, so wildcards
(``DOE*``, ``?``), date ranges (``20260101-20260131``, ``-20260131``) and UID lists
(``1.2.3\\1.2.4``) are the peer's to interpret. Each level has default return keys
(``DEFAULT_RETURN_KEYS``); a key the user gives replaces the default for the same tag.

Return keys are sent empty (universal match), or ``*`` for the string VRs that allow wildcards
when the peer's ``query.universal_match`` says so; dates, times, numbers and UIDs are always sent
empty (``*`` is not a valid value for them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from ctnode.dicom.uids import is_valid_uid
from ctnode.errors import UsageError

LEVELS = ("STUDY", "SERIES", "IMAGE")

#: Return keys requested at each level unless the user gives the same key.
DEFAULT_RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}

#: Unique keys of the levels above each level (a hierarchical Study Root query needs values).
UPPER_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (),
    "SERIES": ("StudyInstanceUID",),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID"),
}

#: VRs whose universal match may be written ``*`` (PS3.4 C.2.2.2.4 wildcard matching).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs that cannot be a query key.
_UNSUPPORTED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_TAG_RE = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")
_QR_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005

DEFAULT_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class QueryKey:
    """One key of a query: a matching key with a value, or a return key (value None)."""

    tag: int
    vr: str
    value: str | None = None

    @property
    def keyword(self) -> str:
        """DICOM keyword (``PatientName``), or ``(gggg,eeee)`` if the tag has none."""
        return keyword_for_tag(self.tag) or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    def to_json(self) -> list[str | None]:
        """``["00100010", "DOE*"]``: how a key is stored in a job payload."""
        return [f"{self.tag:08X}", self.value]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> QueryKey:
        """Inverse of ``to_json`` (the VR comes from the dictionary again)."""
        tag = int(str(data[0]), 16)
        value = data[1]
        return cls(tag, _vr_of(tag, f"{tag:08X}"), None if value is None else str(value))


def _vr_of(tag: int, name: str) -> str:
    if not dictionary_has_tag(tag):
        raise UsageError(
            f"query key {name}: not a standard DICOM attribute (private tags cannot be keys)"
        )
    vr = str(dictionary_VR(tag)).split(" or ")[0]
    if vr in _UNSUPPORTED_VRS:
        what = "sequence matching is" if vr == "SQ" else f"VR {vr} is"
        raise UsageError(f"query key {name}: {what} not supported")
    return vr


def parse_key(text: str) -> QueryKey:
    """Parse one ``-k`` argument (findscu conventions); UsageError says what is wrong."""
    name, sep, raw_value = text.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"query key {text!r}: expected Keyword=value or gggg,eeee=value")
    if "[" in name or "." in name:
        raise UsageError(f"query key {name!r}: sequence paths are not supported")
    match = _TAG_RE.fullmatch(name)
    if match:
        tag = (int(match.group(1), 16) << 16) | int(match.group(2), 16)
    else:
        found = tag_for_keyword(name)
        if found is None:
            raise UsageError(
                f"query key {name!r}: unknown DICOM keyword (spelling is case-sensitive, e.g. "
                "PatientName; or give the tag as gggg,eeee)"
            )
        tag = int(found)
    vr = _vr_of(tag, name)
    value: str | None = raw_value if sep else None
    if value is not None:
        if any(ch in value for ch in "\r\n\x00"):
            raise UsageError(f"query key {name}: value contains a control character")
        if value == "":
            value = None
    if value is not None and vr == "UI":
        for uid in value.split("\\"):
            if not is_valid_uid(uid):
                raise UsageError(f"query key {name}: {uid!r} is not a valid UID")
    return QueryKey(tag, vr, value)


def build_keys(level: str | None, arguments: Iterable[str]) -> tuple[str, list[QueryKey]]:
    """The level and the full key list: the user's keys plus the level's default return keys.

    ``-k QueryRetrieveLevel=SERIES`` is the same as ``--level SERIES``; giving both with
    different values is an error. A later key for the same tag replaces an earlier one.
    """
    given: dict[int, QueryKey] = {}
    key_level: str | None = None
    for argument in arguments:
        key = parse_key(argument)
        if key.tag == _QR_LEVEL:
            key_level = (key.value or "").strip().upper()
            continue
        if key.tag == _SPECIFIC_CHARACTER_SET:
            raise UsageError("SpecificCharacterSet is set by ctnode (UTF-8 when needed)")
        given[key.tag] = key
    chosen = (level or "").strip().upper() or None
    if key_level and chosen and key_level != chosen:
        raise UsageError(f"--level {chosen} contradicts -k QueryRetrieveLevel={key_level}")
    final = chosen or key_level or "STUDY"
    if final not in LEVELS:
        raise UsageError(f"level {final!r}: choose STUDY, SERIES or IMAGE (Study Root)")
    for keyword in DEFAULT_RETURN_KEYS[final]:
        tag = int(tag_for_keyword(keyword))  # type: ignore[arg-type]
        given.setdefault(tag, QueryKey(tag, _vr_of(tag, keyword)))
    return final, [given[tag] for tag in sorted(given)]


def missing_upper_keys(level: str, keys: Iterable[QueryKey]) -> list[str]:
    """Unique keys of the levels above *level* that have no value (hierarchical peers need them)."""
    valued = {k.keyword for k in keys if k.value is not None}
    return [kw for kw in UPPER_KEYS[level] if kw not in valued]


def build_identifier(level: str, keys: Iterable[QueryKey], universal_match: str = "") -> Dataset:
    """The C-FIND request identifier; return keys get *universal_match* where the VR allows it."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    needs_utf8 = False
    for key in keys:
        if key.value is not None:
            value = key.value
            needs_utf8 = needs_utf8 or not value.isascii()
        elif universal_match and key.vr in WILDCARD_VRS:
            value = universal_match
        else:
            value = ""
        ds.add_new(key.tag, key.vr, value)
    if needs_utf8:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def query_payload(level: str, keys: Sequence[QueryKey], limit: int) -> dict[str, Any]:
    """The payload of a ``query`` job."""
    return {"level": level, "keys": [k.to_json() for k in keys], "limit": limit}
