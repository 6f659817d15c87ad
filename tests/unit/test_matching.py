"""C-FIND matching (PS3.4 C.2.2.2) and the hierarchical query rules, without sockets."""

from __future__ import annotations

import string
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from ctnode.dicom import matching as M
from ctnode.dicom.identifier import encode_elements, response_charset


def _m(vr: str, key: str, *values: str, fold: bool = False) -> bool:
    matcher = M.matcher_for(vr, key, case_insensitive_names=fold)
    return True if matcher is None else matcher(tuple(values))


def test_universal_matching_matches_everything_even_empty() -> None:
    """C.2.2.2.3: zero-length matches all; ``*`` alone too (C.2.2.2.4), for wildcard VRs."""
    assert M.matcher_for("LO", "") is None
    assert M.matcher_for("PN", "*") is None
    assert M.matcher_for("DA", "*") is not None  # no wildcards for dates


def test_single_value_is_exact_and_case_sensitive() -> None:
    """C.2.2.2.1: exact match; spaces around the value do not count."""
    assert _m("LO", "PAT1", "PAT1")
    assert _m("LO", " PAT1 ", "PAT1")
    assert not _m("LO", "PAT1", "pat1")
    assert not _m("LO", "PAT1")


def test_wildcards() -> None:
    """C.2.2.2.4: ``*`` any run, ``?`` one character; regex characters are literal."""
    assert _m("LO", "PA*", "PAT1") and _m("LO", "P?T1", "PAT1")
    assert not _m("LO", "P?1", "PAT1")
    assert _m("LO", "A.B*", "A.BC") and not _m("LO", "A.B*", "AXBC")
    assert not _m("LO", "PA*")  # an empty value matches no wildcard but ``*`` alone


def test_person_names() -> None:
    """PN: literal by default, per component group; trailing ``^`` ignored; case folding on
    request."""
    assert _m("PN", "DOE^JOHN", "DOE^JOHN^^^")
    assert not _m("PN", "doe^john", "DOE^JOHN")
    assert _m("PN", "doe^john", "DOE^JOHN", fold=True)
    assert _m("PN", "Yamada^Tarou", "Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert _m("PN", "=山田*", "Yamada^Tarou=山田^太郎")
    assert _m("PN", "müller*", "MÜLLER^JÖRG", fold=True)


def test_date_and_time_ranges() -> None:
    """C.2.2.2.5: closed and open ranges of DA, TM and DT; TM parts missing fill up."""
    assert _m("DA", "20250101-20251231", "20250612")
    assert not _m("DA", "20250101-20251231", "20260101")
    assert _m("DA", "20250601-", "20260101") and _m("DA", "-20250310", "20250310")
    assert _m("TM", "1000-1030", "101500.123")
    assert _m("TM", "10-10", "105959")  # 10 .. 10:59:59.999999
    assert not _m("TM", "1100-", "101500")
    assert _m("TM", "1015", "101500")
    assert _m("DT", "20250101-20250102", "20250101235959")


def test_uid_lists() -> None:
    """C.2.2.2.2: any UID of the list."""
    assert _m("UI", "1.2.3\\1.2.4", "1.2.4")
    assert not _m("UI", "1.2.3\\1.2.4", "1.2.5")


def test_hierarchical_rules() -> None:
    """C.4.1.2.1: upper unique keys required; PATIENT only in Patient Root."""
    assert M.check_identifier(M.STUDY_ROOT, "STUDY", {}) is None
    assert M.check_identifier(M.STUDY_ROOT, "PATIENT", {}) is not None
    assert M.check_identifier(M.STUDY_ROOT, "SERIES", {M.STUDY_UID: "1.2"}) is None
    assert "StudyInstanceUID" in (M.check_identifier(M.STUDY_ROOT, "SERIES", {}) or "")
    assert "PatientID" in (M.check_identifier(M.PATIENT_ROOT, "STUDY", {}) or "")
    assert M.check_identifier(M.PATIENT_ROOT, "STUDY", {M.PATIENT_ID: "P*"}) is not None
    assert M.check_identifier(M.STUDY_ROOT, "BOGUS", {}) is not None


def test_response_identifier_encoding_is_even_and_charset_chosen() -> None:
    """Every value padded to even length; the character set follows the values."""
    data = encode_elements(
        [
            (0x00080052, "CS", ("STUDY",)),
            (0x0020000D, "UI", ("1.2.3",)),
            (0x00280010, "US", ("16",)),
        ],
        explicit=True,
        charset="ISO_IR 192",
    )
    assert len(data) % 2 == 0
    assert response_charset(["DOE"], "") == ""
    assert response_charset(["Müller"], "ISO_IR 100") == "ISO_IR 100"
    assert response_charset(["山田"], "ISO_IR 100") == "ISO_IR 192"


_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " ^.-", max_size=12)


@given(_TEXT)
def test_a_value_matches_itself_as_a_single_value(value: str) -> None:
    """Any text without wildcards matches itself (after space trimming)."""
    assert _m("LO", value, value.strip(" "))


@given(_TEXT, _TEXT)
def test_star_suffix_matches_every_extension(prefix: str, rest: str) -> None:
    """``prefix*`` matches prefix + anything (as long as the value is not empty)."""
    value = (prefix + rest).strip(" ")
    if prefix.strip(" ") and value.startswith(prefix.strip(" ")):
        assert _m("LO", prefix.strip(" ") + "*", value)


_DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(9999, 12, 31))


@given(_DATES, _DATES, _DATES)
def test_date_range_is_the_order_of_dates(low: date, high: date, day: date) -> None:
    """DA range matching agrees with date order, open ends included."""
    f = "{:%Y%m%d}".format
    assert _m("DA", f"{f(low)}-{f(high)}", f(day)) == (low <= day <= high)
    assert _m("DA", f"{f(low)}-", f(day)) == (low <= day)
