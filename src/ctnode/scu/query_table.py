"""The table of ``ctnode query`` (pure): each level's columns, then the user's keys, with the
cells taken from the matches' DICOM JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydicom.datadict import tag_for_keyword

from ctnode.scu.query_keys import DEFAULT_RETURN_KEYS, QueryKey

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
