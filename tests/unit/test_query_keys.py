"""Query keys (findscu conventions), default return keys, the identifier and DICOM JSON."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from ctnode.dicom import status as st
from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ctnode.errors import UsageError
from ctnode.scu.identifier import decode_identifier, encode_identifier, to_dicom_json
from ctnode.scu.query import find_meaning
from ctnode.scu.query_keys import (
    DEFAULT_RETURN_KEYS,
    QueryKey,
    build_identifier,
    build_keys,
    missing_upper_keys,
    parse_key,
    query_payload,
)
from ctnode.scu.query_table import json_cell, table


def test_parse_keyword_tag_and_return_keys() -> None:
    """`Keyword=value`, `gggg,eeee=value`, `(gggg,eeee)=value` are matching keys; `Keyword`
    and `Keyword=` are return keys; the VR comes from the dictionary."""
    assert parse_key("PatientName=DOE*") == QueryKey(0x00100010, "PN", "DOE*")
    assert parse_key("0010,0020=PAT1") == QueryKey(0x00100020, "LO", "PAT1")
    assert parse_key("(0008,0020)=20260101-20260131") == QueryKey(
        0x00080020, "DA", "20260101-20260131"
    )
    assert parse_key("StudyDescription") == QueryKey(0x00081030, "LO", None)
    assert parse_key("AccessionNumber=") == QueryKey(0x00080050, "SH", None)
    assert parse_key("ModalitiesInStudy=CT\\MR").value == "CT\\MR"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PatientNam=X", "unknown DICOM keyword"),
        ("=X", "expected Keyword=value"),
        ("0009,0010=X", "not a standard DICOM attribute"),
        ("ReferencedSeriesSequence", "sequence matching"),
        ("PixelData", "VR OB"),
        ("ScheduledProcedureStepSequence[0].Modality=CT", "sequence paths"),
        ("StudyInstanceUID=1.2.x", "not a valid UID"),
        ("StudyInstanceUID=1.2.3\\../etc", "not a valid UID"),
        ("PatientID=a\nb", "control character"),
    ],
)
def test_parse_key_errors(text: str, message: str) -> None:
    """Keys that cannot be sent are usage errors that say why."""
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        parse_key(text)


def test_build_keys_defaults_and_overrides() -> None:
    """Every default return key of the level is requested; a user key replaces the default for
    the same tag; keys are in tag order; the level defaults to STUDY."""
    level, keys = build_keys(None, ["PatientName=DOE*", "StudyDate=20260101-20260131"])
    assert level == "STUDY"
    keywords = [k.keyword for k in keys]
    assert set(DEFAULT_RETURN_KEYS["STUDY"]) <= set(keywords)
    assert keywords.count("PatientName") == 1
    assert {k.keyword: k.value for k in keys}["PatientName"] == "DOE*"
    assert [k.tag for k in keys] == sorted(k.tag for k in keys)
    level, keys = build_keys("series", ["StudyInstanceUID=1.2.3", "BodyPartExamined"])
    assert level == "SERIES"
    assert {"SeriesInstanceUID", "Modality", "BodyPartExamined"} <= {k.keyword for k in keys}


def test_level_from_key_and_conflicts() -> None:
    """`-k QueryRetrieveLevel=IMAGE` sets the level; a contradicting --level is an error, and
    only Study Root levels exist."""
    assert build_keys(None, ["QueryRetrieveLevel=IMAGE"])[0] == "IMAGE"
    assert build_keys("IMAGE", ["QueryRetrieveLevel=image"])[0] == "IMAGE"
    with pytest.raises(UsageError, match="contradicts"):
        build_keys("STUDY", ["QueryRetrieveLevel=SERIES"])
    with pytest.raises(UsageError, match="choose STUDY, SERIES or IMAGE"):
        build_keys("PATIENT", [])
    with pytest.raises(UsageError, match="SpecificCharacterSet"):
        build_keys(None, ["SpecificCharacterSet=ISO_IR 100"])


def test_missing_upper_keys() -> None:
    """A SERIES query without a StudyInstanceUID value, or an IMAGE query without the series,
    is flagged (hierarchical peers need the values)."""
    _, keys = build_keys("IMAGE", ["StudyInstanceUID=1.2.3"])
    assert missing_upper_keys("IMAGE", keys) == ["SeriesInstanceUID"]
    assert missing_upper_keys("STUDY", keys) == []


def test_universal_match_quirk() -> None:
    """With universal_match '*', empty return keys of wildcard-capable VRs are sent as '*';
    dates, numbers and UIDs stay empty; values given by the user are untouched."""
    _, keys = build_keys(None, ["PatientID=PAT1"])
    plain = build_identifier("STUDY", keys)
    star = build_identifier("STUDY", keys, "*")
    assert plain.PatientName == "" and star.PatientName == "*"
    assert star.ModalitiesInStudy == "*" and star.AccessionNumber == "*"
    assert star.StudyDate == "" and star.StudyInstanceUID == ""
    assert star.NumberOfStudyRelatedInstances in ("", None)
    assert star.PatientID == "PAT1" and star.QueryRetrieveLevel == "STUDY"
    assert "SpecificCharacterSet" not in star


def test_non_ascii_values_get_utf8() -> None:
    """A value outside ASCII makes the identifier declare UTF-8 (ISO_IR 192)."""
    _, keys = build_keys(None, ["PatientName=Müller*"])
    ds = build_identifier("STUDY", keys)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    back = decode_identifier(encode_identifier(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE)
    assert str(back.PatientName) == "Müller*"


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
def test_identifier_round_trip(syntax: str) -> None:
    """Encoding in either uncompressed syntax and decoding gives the same keys back."""
    _, keys = build_keys("STUDY", ["PatientName=DOE*", "StudyDate=20260101-20260131"])
    ds = build_identifier("STUDY", keys)
    back = decode_identifier(encode_identifier(ds, syntax), syntax)
    assert back.StudyDate == "20260101-20260131"
    assert str(back.PatientName) == "DOE*"
    assert {e.tag for e in back} == {e.tag for e in ds}


def test_decode_garbage_is_value_error() -> None:
    """A truncated identifier is a ValueError, not a crash."""
    with pytest.raises(ValueError, match="undecodable"):
        decode_identifier(b"\x10\x00\x10\x00\xff\xff\x00\x00abc", IMPLICIT_VR_LE)


def test_dicom_json_round_trip_and_cells() -> None:
    """Matches become DICOM JSON that Dataset.from_json reads back; table cells show PN as
    the alphabetic name, numbers without '.0', multiple values joined by backslash."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Doe^Jane"
    ds.ModalitiesInStudy = ["CT", "PT"]
    ds.NumberOfStudyRelatedInstances = 12
    ds.StudyInstanceUID = "1.2.3"
    data = to_dicom_json(ds)
    assert Dataset.from_json(data) == ds
    assert json_cell(data, "00100010") == "Doe^Jane"
    assert json_cell(data, "00080061") == "CT\\PT"
    assert json_cell(data, "00201208") == "12"
    assert json_cell(data, "00081030") == ""
    _, keys = build_keys(None, ["InstitutionName"])
    headers, rows = table("STUDY", keys, [data])
    assert headers[-1] == "InstitutionName"
    assert rows[0][headers.index("PatientName")] == "Doe^Jane"


def test_payload_round_trip() -> None:
    """Keys stored in a job payload come back identical."""
    level, keys = build_keys("SERIES", ["StudyInstanceUID=1.2.3", "Modality=CT"])
    payload = query_payload(level, keys, 10)
    assert [QueryKey.from_json(k) for k in payload["keys"]] == keys
    assert payload["level"] == "SERIES" and payload["limit"] == 10


def test_find_meaning() -> None:
    """A cancel we asked for (limit reached) is success; otherwise 0xFE00 and 0xA700 are
    transient failures, 0xA900/0xC000 permanent ones."""
    assert find_meaning(st.CANCEL, cancelled_by_us=True) is st.StatusMeaning.SUCCESS
    assert find_meaning(st.SUCCESS, cancelled_by_us=True) is st.StatusMeaning.SUCCESS
    assert find_meaning(st.CANCEL, cancelled_by_us=False) is st.StatusMeaning.TRANSIENT_FAILURE
    assert find_meaning(0xA700, cancelled_by_us=False) is st.StatusMeaning.TRANSIENT_FAILURE
    assert find_meaning(0xA900, cancelled_by_us=False) is st.StatusMeaning.PERMANENT_FAILURE
    assert find_meaning(0xC001, cancelled_by_us=True) is st.StatusMeaning.PERMANENT_FAILURE
    assert find_meaning(st.SUCCESS, cancelled_by_us=False) is st.StatusMeaning.SUCCESS
