"""C-FIND attribute matching (PS3.4 C.2.2.2) and the Query/Retrieve levels' rules, pure.

A query's keys become ``Matcher``s (``matcher_for``): universal (zero-length, or only ``*`` for
the VRs that allow wildcards), list of UIDs (``UI`` values separated by ``\\``), range (``DA``,
``TM`` and ``DT``: ``a-b``, ``-b``, ``a-``), wildcard (``*`` and ``?`` in ``AE CS LO LT PN SH
ST UC UR UT``), and single value. Values are matched as decoded text (Specific Character Set
already applied: a query in ISO_IR 100 matches data stored in UTF-8 and the reverse), without
leading and trailing spaces. A multi-valued entity matches if any of its values does; a key
with several values (``CT\\MR``) if any of them matches.

Person names (PN): literal, case-sensitive matching, as PS3.4 C.2.2.2.1 allows by default; each
component group (alphabetic, ideographic, phonetic) is compared on its own, trailing empty
components do not count, and a key without ``=`` matches any group. ``case_insensitive_names``
folds case for sites that want it (``query_scp.case_insensitive_names``).

``KEYS`` lists what ctnode indexes, with the level each key belongs to; ``check_identifier``
applies the hierarchical (baseline) query rules of PS3.4 C.4.1.2.1: the unique keys of every
level above the query level must be given (ctnode does not negotiate relational queries).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ctnode.dicom.wildcard import Wildcard

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS: tuple[str, ...] = (PATIENT, STUDY, SERIES, IMAGE)
PATIENT_ROOT, STUDY_ROOT = "patient", "study"

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})


@dataclass(frozen=True, slots=True)
class KeyDef:
    """An attribute ctnode can match and return."""

    keyword: str
    tag: int
    vr: str
    level: str


def _keys(level: str, *items: tuple[str, int, str]) -> list[KeyDef]:
    return [KeyDef(keyword, tag, vr, level) for keyword, tag, vr in items]


#: Every indexed key, by tag.
KEYS: dict[int, KeyDef] = {
    k.tag: k
    for k in [
        *_keys(
            PATIENT,
            ("PatientName", 0x00100010, "PN"),
            ("PatientID", 0x00100020, "LO"),
            ("PatientBirthDate", 0x00100030, "DA"),
            ("PatientSex", 0x00100040, "CS"),
            ("NumberOfPatientRelatedStudies", 0x00201200, "IS"),
            ("NumberOfPatientRelatedSeries", 0x00201202, "IS"),
            ("NumberOfPatientRelatedInstances", 0x00201204, "IS"),
        ),
        *_keys(
            STUDY,
            ("StudyInstanceUID", 0x0020000D, "UI"),
            ("StudyDate", 0x00080020, "DA"),
            ("StudyTime", 0x00080030, "TM"),
            ("AccessionNumber", 0x00080050, "SH"),
            ("StudyID", 0x00200010, "SH"),
            ("StudyDescription", 0x00081030, "LO"),
            ("ReferringPhysicianName", 0x00080090, "PN"),
            ("ModalitiesInStudy", 0x00080061, "CS"),
            ("SOPClassesInStudy", 0x00080062, "UI"),
            ("NumberOfStudyRelatedSeries", 0x00201206, "IS"),
            ("NumberOfStudyRelatedInstances", 0x00201208, "IS"),
        ),
        *_keys(
            SERIES,
            ("SeriesInstanceUID", 0x0020000E, "UI"),
            ("Modality", 0x00080060, "CS"),
            ("SeriesNumber", 0x00200011, "IS"),
            ("SeriesDescription", 0x0008103E, "LO"),
            ("BodyPartExamined", 0x00180015, "CS"),
            ("SeriesDate", 0x00080021, "DA"),
            ("SeriesTime", 0x00080031, "TM"),
            ("NumberOfSeriesRelatedInstances", 0x00201209, "IS"),
        ),
        *_keys(
            IMAGE,
            ("SOPInstanceUID", 0x00080018, "UI"),
            ("SOPClassUID", 0x00080016, "UI"),
            ("InstanceNumber", 0x00200013, "IS"),
            ("Rows", 0x00280010, "US"),
            ("Columns", 0x00280011, "US"),
            ("NumberOfFrames", 0x00280008, "IS"),
        ),
    ]
}
PATIENT_ID = 0x00100020
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SOP_UID = 0x00080018
#: The unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEYS: dict[str, int] = {
    PATIENT: PATIENT_ID,
    STUDY: STUDY_UID,
    SERIES: SERIES_UID,
    IMAGE: SOP_UID,
}

Values = tuple[str, ...]


class Matcher(Protocol):
    """Decides whether an entity's values match one key."""

    def __call__(self, values: Values) -> bool:
        """True if *values* (the entity's, maybe none) match."""


def _strip(value: str) -> str:
    return value.strip(" \x00")


class _UidList:
    __slots__ = ("uids",)

    def __init__(self, uids: frozenset[str]) -> None:
        self.uids = uids

    def __call__(self, values: Values) -> bool:
        return any(v in self.uids for v in values)


class _Any:
    """A key with several values: any of them (each a matcher) may match."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Matcher]) -> None:
        self.parts = parts

    def __call__(self, values: Values) -> bool:
        return any(part(values) for part in self.parts)


class _Text:
    """Single value or wildcard matching of one text value (not PN)."""

    __slots__ = ("exact", "pattern")

    def __init__(self, key: str, wildcards: bool = True) -> None:
        self.exact: str | None = None
        self.pattern: Wildcard | None = None
        if wildcards and ("*" in key or "?" in key):
            self.pattern = wildcard_pattern(key)
        else:
            self.exact = key

    def __call__(self, values: Values) -> bool:
        if self.pattern is not None:
            return any(self.pattern.fullmatch(v) for v in values)
        return any(v == self.exact for v in values)


def wildcard_pattern(key: str, fold: bool = False) -> Wildcard:
    """``*`` any run of characters (or none), ``?`` exactly one; everything else literal.
    Matched without backtracking (``dicom.wildcard``): a peer's key cannot stall the node."""
    return Wildcard(key, fold)


def _name_groups(value: str) -> list[str]:
    """A PN value's component groups, each without trailing empty components."""
    return [group.rstrip("^ ") for group in value.split("=")]


class _PersonName:
    """PN single value or wildcard matching, per component group."""

    __slots__ = ("fold", "groups")

    def __init__(self, key: str, fold: bool) -> None:
        self.fold = fold
        self.groups: list[Wildcard | str | None] = []
        for group in _name_groups(key):
            if not group or group == "*":
                self.groups.append(None)  # any value of this group
            elif "*" in group or "?" in group:
                self.groups.append(wildcard_pattern(group, fold))
            else:
                self.groups.append(group.casefold() if fold else group)

    def _group_matches(self, want: Wildcard | str | None, have: str) -> bool:
        if want is None:
            return True
        if isinstance(want, str):
            return (have.casefold() if self.fold else have) == want
        return want.fullmatch(have)

    def __call__(self, values: Values) -> bool:
        for value in values:
            have = _name_groups(value)
            if len(self.groups) == 1:
                if any(self._group_matches(self.groups[0], g) for g in have if g):
                    return True
                continue
            padded = have + [""] * (len(self.groups) - len(have))
            if all(self._group_matches(w, h) for w, h in zip(self.groups, padded, strict=False)):
                return True
        return False


_TM_RE = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


def time_bound(text: str, upper: bool) -> int | None:
    """A TM value in microseconds since midnight; missing parts are the lowest (or, for an
    *upper* bound, the highest) they can be. None if it is not a time."""
    match = _TM_RE.fullmatch(text.replace(":", ""))
    if match is None:
        return None
    hh, mm, ss, frac = match.groups()
    fill = "59" if upper else "00"
    micro = int((frac or "").ljust(6, "9" if upper else "0"))
    seconds = int(hh) * 3600 + int(mm or fill) * 60 + int(ss or fill)
    return seconds * 1_000_000 + micro


def _date_digits(text: str) -> str:
    return text.replace(".", "") if len(text) == 10 else text


_DT_LOW = "00000101000000.000000"
_DT_HIGH = "99991231235959.999999"


def _datetime_bound(text: str, upper: bool) -> str:
    core = re.split(r"[+-]", text, maxsplit=1)[0] if len(text) > 4 else text
    template = _DT_HIGH if upper else _DT_LOW
    if "." not in core and len(core) > 14:
        core = core[:14]
    return core + template[len(core) :]


class _Range:
    """DA, TM or DT range (either end may be open)."""

    __slots__ = ("high", "low", "vr")

    def __init__(self, vr: str, low: str, high: str) -> None:
        self.vr = vr
        self.low: str | int | None = None
        self.high: str | int | None = None
        if vr == "TM":
            self.low = time_bound(low, False) if low else None
            self.high = time_bound(high, True) if high else None
        elif vr == "DA":
            self.low, self.high = _date_digits(low) or None, _date_digits(high) or None
        else:
            self.low = _datetime_bound(low, False) if low else None
            self.high = _datetime_bound(high, True) if high else None

    def _key(self, value: str) -> str | int | None:
        if self.vr == "TM":
            return time_bound(value, False)
        if self.vr == "DA":
            return _date_digits(value)
        return _datetime_bound(value, False)

    def __call__(self, values: Values) -> bool:
        for value in values:
            key = self._key(value)
            if key is None:
                continue
            if self.low is not None and key < self.low:  # type: ignore[operator]
                continue
            if self.high is not None and key > self.high:  # type: ignore[operator]
                continue
            return True
        return False


class _Time:
    """TM single value: equal as times (``1030`` is ``103000``)."""

    __slots__ = ("at",)

    def __init__(self, key: str) -> None:
        self.at = time_bound(key, False)

    def __call__(self, values: Values) -> bool:
        return self.at is not None and any(time_bound(v, False) == self.at for v in values)


def is_universal(vr: str, raw: str) -> bool:
    """Zero-length, or only ``*`` where wildcards are allowed (C.2.2.2.3, C.2.2.2.4)."""
    text = _strip(raw)
    return not text or (vr in WILDCARD_VRS and set(text) == {"*"})


def matcher_for(vr: str, raw: str, *, case_insensitive_names: bool = False) -> Matcher | None:
    """The matcher for a key of *vr* with value *raw* (None: universal matching)."""
    if is_universal(vr, raw):
        return None
    text = _strip(raw)
    if vr == "UI":
        return _UidList(frozenset(_strip(u) for u in text.split("\\") if _strip(u)))
    parts = [_strip(p) for p in text.split("\\")] if vr != "PN" else [text]
    matchers: list[Matcher] = []
    for part in parts:
        if vr in RANGE_VRS and "-" in part and not (vr == "DT" and part.count("-") > 1):
            low, _, high = part.partition("-")
            matchers.append(_Range(vr, _strip(low), _strip(high)))
        elif vr == "TM":
            matchers.append(_Time(part))
        elif vr == "PN":
            matchers.append(_PersonName(part, case_insensitive_names))
        else:
            matchers.append(_Text(part, wildcards=vr in WILDCARD_VRS))
    return matchers[0] if len(matchers) == 1 else _Any(matchers)


def level_rank(level: str, model: str) -> int:
    """Depth of *level* in *model*: the patient keys are study keys in Study Root."""
    if level == PATIENT and model == STUDY_ROOT:
        return 1
    return LEVELS.index(level)


def required_keys(model: str, level: str) -> list[int]:
    """Unique keys of the levels above *level* (hierarchical queries, PS3.4 C.4.1.2.1)."""
    first = 0 if model == PATIENT_ROOT else 1
    return [UNIQUE_KEYS[lv] for lv in LEVELS[first : LEVELS.index(level)]]


def check_identifier(model: str, level: str, keys: Mapping[int, str]) -> str | None:
    """Why an identifier cannot be answered (None: it can): a level the model lacks, or a
    unique key of an upper level missing or not a single value (PS3.4 C.4.1.2.1)."""
    if level not in LEVELS:
        return f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE"
    if model == STUDY_ROOT and level == PATIENT:
        return "PATIENT level is not part of the Study Root information model"
    for tag in required_keys(model, level):
        value = _strip(keys.get(tag, ""))
        if not value or "*" in value or "?" in value:
            name = KEYS[tag].keyword
            return (
                f"a {level} level query needs a value for {name} (hierarchical query: the "
                "unique keys of the levels above; relational queries are not negotiated)"
            )
    return None


def matches(entity: Mapping[int, Values], matchers: Iterable[tuple[int, Matcher]]) -> bool:
    """True if *entity* satisfies every matcher (an absent value is an empty one)."""
    return all(matcher(entity.get(tag, ())) for tag, matcher in matchers)
