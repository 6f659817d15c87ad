"""UID and AE title rules."""

from __future__ import annotations

import pytest

from ctnode.dicom.uids import ae_title_problem, generate_uid, is_valid_uid, normalize_ae_title


@pytest.mark.parametrize(
    "uid",
    ["1.2.840.10008.5.1.4.1.1.2", "2.25.123", "0", "1.0.2", "1." + "2" * 62],
)
def test_valid_uids_accepted(uid: str) -> None:
    """Digits and dots up to 64 characters are valid UIDs."""
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1.2.",
        ".1.2",
        "1..2",
        "1.2/3",
        "../../etc",
        "1.2\\3",
        "1.2\x00",
        "1.2 ",
        "a.b",
        "1." + "2" * 63,
        None,
        12,
    ],
)
def test_invalid_uids_refused(uid: object) -> None:
    """Anything that is not digits and dots, is empty or longer than 64 chars is refused."""
    assert not is_valid_uid(uid)


def test_strict_mode_refuses_leading_zeros() -> None:
    """PS3.5 forbids leading zeros in components; strict mode enforces it."""
    assert is_valid_uid("1.02.3")
    assert not is_valid_uid("1.02.3", strict=True)


def test_generated_uids_are_uuid_derived_and_valid() -> None:
    """New UIDs sit under 2.25 and are unique and valid."""
    a, b = generate_uid(), generate_uid()
    assert a.startswith("2.25.") and a != b
    assert is_valid_uid(a, strict=True)


@pytest.mark.parametrize(
    ("title", "problem"),
    [
        ("PACS", None),
        ("NO", None),
        ("A" * 16, None),
        ("", "empty"),
        ("   ", "empty"),
        ("A" * 17, "at most 16"),
        ("BAD\\AE", "backslash"),
        ("BAD\nAE", "control"),
        ("ÄE", "ASCII"),
    ],
)
def test_ae_title_rules(title: str, problem: str | None) -> None:
    """AE titles: 1-16 characters, no backslash or control characters."""
    found = ae_title_problem(title)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_normalize_ae_title_strips_padding() -> None:
    """Wire AE titles are padded with spaces (and sometimes NULs)."""
    assert normalize_ae_title(b"PACS            ") == "PACS"
    assert normalize_ae_title("  PACS\x00") == "PACS"
