"""Query (Study Root C-FIND): query keys, the request identifier, the C-FIND exchange, and the
``query`` job operation.

Keys follow DCMTK ``findscu -k``: ``Keyword=value`` or ``gggg,eeee=value`` is a matching key,
``Keyword`` (or ``Keyword=``) a return key. Values pass through untouched, so wildcards
(``DOE*``, ``?``), date ranges (``20260101-20260131``, ``-20260131``) and UID lists
(``1.2.3\\1.2.4``) are the peer's to interpret. Each level has default return keys
(``DEFAULT_RETURN_KEYS``); a key the user gives replaces the default for the same tag.

Return keys are sent empty (universal match), or ``*`` for the string VRs that allow wildcards
when the peer's ``query.universal_match`` says so; dates, times, numbers and UIDs are always sent
empty (``*`` is not a valid value for them).

Patient names and IDs appear in the query's *output* (that is its point) and in the job's
payload and result, never in log lines: logs name the keys, not their values.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.contexts import BASIC_SYNTAXES, IMPLICIT_VR_LE, STUDY_ROOT_FIND
from ctnode.dicom.uids import is_valid_uid
from ctnode.errors import AssociationAborted, PermanentError, TransientError, UsageError
from ctnode.queue.attempt import (
    Attempt,
    AttemptResult,
    Outcome,
    StopFlag,
    outcome_of,
    outcome_of_status,
)
from ctnode.scu.association import params_for
from ctnode.ul.dimse import C_CANCEL_RQ, C_FIND_RQ
from ctnode.ul.requestor import ContextRequest, Requestor

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

#: Columns of ``ctnode query``'s table at each level, in order (user keys are appended).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "STUDY": (
        "StudyDate",
        "StudyTime",
        "PatientID",
        "PatientName",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    "SERIES": (
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "SeriesDate",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ),
    "IMAGE": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}

#: VRs whose universal match may be written ``*`` (PS3.4 C.2.2.2.4 wildcard matching).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs that cannot be a query key.
_UNSUPPORTED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_TAG_RE = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")
_QR_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005

DEFAULT_LIMIT = 1000
FIND_CONTEXTS = (ContextRequest(STUDY_ROOT_FIND, BASIC_SYNTAXES),)


# ------------------------------------------------------------------ keys (pure)


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


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    """*ds* encoded in the accepted (uncompressed little endian) transfer syntax."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(fp, ds)
    return bytes(fp.getvalue())


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """A response identifier as a Dataset (ValueError if it cannot be decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(
                DicomBytesIO(data),  # type: ignore[arg-type]
                transfer_syntax == IMPLICIT_VR_LE,
                True,
                len(data),
            )
            for tag in list(ds.keys()):
                raw = ds.get_item(tag)
                if (
                    isinstance(raw, RawDataElement)
                    and raw.value is not None
                    and raw.length != 0xFFFFFFFF
                    and len(raw.value) != raw.length
                ):
                    raise ValueError(f"element {tag} is truncated")
            # Convert every raw element now, so a malformed value fails here and not later.
            for _ in ds:
                pass
    except Exception as exc:
        raise ValueError(f"undecodable identifier: {exc}") from exc
    return ds


def to_dicom_json(ds: Dataset) -> dict[str, Any]:
    """PS3.18 Annex F (DICOM JSON) form of a response identifier."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(ds.to_json_dict(bulk_data_element_handler=lambda _elem: ""))


# ------------------------------------------------------------------ table (pure)


def _tag_hex(keyword: str) -> str:
    return f"{int(tag_for_keyword(keyword)):08X}"  # type: ignore[arg-type]


def json_cell(match: Mapping[str, Any], tag_hex: str) -> str:
    """One DICOM JSON attribute as table text (multiple values joined by ``\\``)."""
    element = match.get(tag_hex)
    if not isinstance(element, Mapping):
        return ""
    values = element.get("Value") or []
    parts = []
    for value in values:
        if isinstance(value, Mapping):
            parts.append(str(value.get("Alphabetic", "")))
        elif isinstance(value, float) and value.is_integer():
            parts.append(str(int(value)))
        else:
            parts.append(str(value))
    return "\\".join(parts)


def table(
    level: str, keys: Iterable[QueryKey], matches: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    """Headers (keywords) and rows for ``ctnode query``: the level's columns, then user keys."""
    columns = list(TABLE_COLUMNS[level])
    defaults = set(DEFAULT_RETURN_KEYS[level])
    for key in keys:
        keyword = key.keyword
        if keyword not in columns and keyword not in defaults:
            columns.append(keyword)
    hexes = [
        _tag_hex(c) if tag_for_keyword(c) is not None else c.strip("()").replace(",", "")
        for c in columns
    ]
    rows = [[json_cell(m, h) for h in hexes] for m in matches]
    return columns, rows


# ------------------------------------------------------------------ outcome (pure)


def find_meaning(code: int, *, cancelled_by_us: bool) -> st.StatusMeaning:
    """What a C-FIND's final status means: a cancel we asked for (limit reached) is success."""
    if cancelled_by_us and code in (st.SUCCESS, st.CANCEL):
        return st.StatusMeaning.SUCCESS
    return st.meaning(code)


# ------------------------------------------------------------------ the exchange


@dataclass(slots=True)
class FindResult:
    """What one C-FIND returned."""

    matches: list[Dataset] = field(default_factory=list)
    #: Final status (None: the peer never confirmed our C-CANCEL; the association was aborted).
    status: int | None = None
    #: We sent C-CANCEL (limit reached, or asked to stop).
    cancelled: bool = False
    #: More matches than the limit exist (or may exist: the peer confirmed the cancel).
    truncated: bool = False
    #: Pending responses whose identifier could not be decoded (skipped).
    undecodable: int = 0
    #: Pending 0xFF01 responses (optional keys not supported).
    partial_keys: int = 0
    error_comment: str | None = None


def c_find(
    assoc: Requestor,
    identifier: Dataset,
    *,
    limit: int | None = None,
    stop: StopFlag | None = None,
) -> FindResult:
    """Send a Study Root C-FIND on *assoc* and collect the matches.

    With *limit*, a C-CANCEL-RQ goes out once that many matches arrived; the responses still in
    flight are read (and dropped) until the final one, within the DIMSE timeout. Raises
    PermanentError when the peer did not accept Study Root FIND, AssociationAborted on failure.
    """
    ctx = assoc.context_for(STUDY_ROOT_FIND)
    if ctx is None or ctx.transfer_syntax is None:
        raise PermanentError(
            f"{assoc.peer_label} does not accept Study Root Query/Retrieve FIND "
            "(presentation context rejected)"
        )
    syntax = ctx.transfer_syntax
    message_id = assoc.next_message_id()
    assoc.send(
        ctx.context_id,
        {
            "AffectedSOPClassUID": STUDY_ROOT_FIND,
            "CommandField": C_FIND_RQ,
            "MessageID": message_id,
            "Priority": 0,
        },
        encode_identifier(identifier, syntax),
    )
    out = FindResult()
    dimse = assoc.params.timeouts.dimse
    drain_deadline = 0.0
    while True:
        timeout = None
        if out.cancelled:
            timeout = max(0.1, drain_deadline - time.monotonic())
        try:
            message = assoc.receive_response(message_id, timeout)
        except AssociationAborted:
            if out.cancelled:  # the peer did not confirm the cancel; what we have stands
                out.truncated = True
                return out
            raise
        code = message.command.get("Status")
        if not isinstance(code, int):
            raise AssociationAborted(f"{assoc.peer_label} sent a C-FIND-RSP without Status")
        if code in (st.PENDING, st.PENDING_WARNING):
            if code == st.PENDING_WARNING:
                out.partial_keys += 1
            if out.cancelled:
                out.truncated = True
                continue
            if message.dataset is not None:
                try:
                    out.matches.append(decode_identifier(message.dataset, syntax))
                except ValueError:
                    out.undecodable += 1
            reached = limit is not None and len(out.matches) >= limit
            if reached or (stop is not None and stop):
                assoc.send(
                    ctx.context_id,
                    {"CommandField": C_CANCEL_RQ, "MessageIDBeingRespondedTo": message_id},
                )
                out.cancelled = True
                drain_deadline = time.monotonic() + dimse
            continue
        out.status = code
        comment = message.command.get("ErrorComment")
        out.error_comment = comment if isinstance(comment, str) and comment else None
        if out.cancelled and code == st.CANCEL:
            out.truncated = True
        return out


# ------------------------------------------------------------------ the operation


def query_payload(level: str, keys: Sequence[QueryKey], limit: int) -> dict[str, Any]:
    """The payload of a ``query`` job."""
    return {"level": level, "keys": [k.to_json() for k in keys], "limit": limit}


class QueryOperation:
    """Runs ``query`` jobs: one association, one C-FIND, matches stored as the job's result."""

    def __init__(self, node: NodeSettings) -> None:
        self.node = node

    def run(self, attempt: Attempt) -> AttemptResult:
        """One C-FIND; the matches (DICOM JSON, at most ``limit``) become ``result.matches``."""
        peer = attempt.peer
        if "find" not in peer.config.services:
            return AttemptResult(
                Outcome.PERMANENT,
                error=f"peer {peer.name!r} does not list 'find' in its services ({peer.path})",
            )
        payload = attempt.job.payload
        try:
            level = str(payload["level"])
            keys = [QueryKey.from_json(k) for k in payload["keys"]]
            limit = int(payload.get("limit") or DEFAULT_LIMIT)
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            return AttemptResult(Outcome.PERMANENT, error=f"invalid query job payload: {exc}")
        identifier = build_identifier(level, keys, peer.config.query.universal_match)
        started = time.monotonic()
        try:
            with Requestor(params_for(peer, self.node, FIND_CONTEXTS)) as assoc:
                found = c_find(assoc, identifier, limit=limit, stop=attempt.stop)
        except (TransientError, PermanentError) as exc:
            return outcome_of(exc)
        log_fields = {
            "qr_level": level,
            # keywords only: values (patient names, IDs) never go to the log
            "matching_keys": [k.keyword for k in keys if k.value is not None],
            "matches": len(found.matches),
            "truncated": found.truncated,
            "status": st.hex_status(found.status),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if attempt.stop and not (limit is not None and len(found.matches) >= limit):
            attempt.log.info("query.stopped", **log_fields)
            return AttemptResult(Outcome.STOPPED)
        code = found.status
        outcome = (
            Outcome.DONE
            if code is None
            else outcome_of_status(find_meaning(code, cancelled_by_us=found.cancelled))
        )
        if outcome is not Outcome.DONE:
            assert code is not None
            message = f"{peer.name!r} answered C-FIND with {st.describe(code)}"
            if found.error_comment:
                message += f": {found.error_comment}"
            missing = missing_upper_keys(level, keys)
            if missing and outcome is Outcome.PERMANENT:
                message += (
                    f" (a {level}-level query may need "
                    + " and ".join(f"-k {kw}=UID" for kw in missing)
                    + ")"
                )
            attempt.log.warning("query.failed", **log_fields)
            return AttemptResult(outcome, status=code, error=message)
        attempt.log.info("query.finished", **log_fields)
        matches = [to_dicom_json(ds) for ds in found.matches[:limit]]
        result: dict[str, Any] = {
            "level": level,
            "count": len(matches),
            "limit": limit,
            "truncated": found.truncated,
            "status": st.hex_status(code),
            "matches": matches,
        }
        if found.undecodable:
            result["undecodable"] = found.undecodable
        if found.partial_keys:
            result["optional_keys_not_supported"] = True
        text = f"{len(matches)} match(es)" + (" (limit reached)" if found.truncated else "")
        return AttemptResult(Outcome.DONE, status=code, result=result, message=text)
