"""DIMSE status classification."""

from __future__ import annotations

import pytest

from ctnode.dicom.status import (
    Category,
    StatusMeaning,
    category,
    describe,
    group,
    hex_status,
    meaning,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, StatusMeaning.SUCCESS),
        (0xB000, StatusMeaning.WARNING),
        (0xB006, StatusMeaning.WARNING),
        (0xB007, StatusMeaning.WARNING),
        (0xA700, StatusMeaning.TRANSIENT_FAILURE),
        (0xA711, StatusMeaning.TRANSIENT_FAILURE),
        (0x0213, StatusMeaning.TRANSIENT_FAILURE),
        (0x0122, StatusMeaning.PERMANENT_FAILURE),
        (0x0124, StatusMeaning.PERMANENT_FAILURE),
        (0xA900, StatusMeaning.PERMANENT_FAILURE),
        (0xA9FF, StatusMeaning.PERMANENT_FAILURE),
        (0xC000, StatusMeaning.PERMANENT_FAILURE),
        (0xCFFF, StatusMeaning.PERMANENT_FAILURE),
        (0x0110, StatusMeaning.PERMANENT_FAILURE),
    ],
)
def test_meaning_classification(code: int, expected: StatusMeaning) -> None:
    """Final statuses mean success, warning, transient or permanent failure, as the retry
    policy needs."""
    assert meaning(code) is expected


def test_categories() -> None:
    """Pending, cancel and warning ranges are recognised."""
    assert category(0xFF00) is Category.PENDING
    assert category(0xFF01) is Category.PENDING
    assert category(0xFE00) is Category.CANCEL
    assert category(0x0107) is Category.WARNING
    assert category(0xA801) is Category.FAILURE


def test_labels_have_low_cardinality() -> None:
    """Metric labels group ranges instead of listing every code."""
    assert group(0xA711) == "0xA7xx"
    assert group(0xC123) == "0xCxxx"
    assert group(0x0122) == "0x0122"
    assert group(0) == "success"


def test_describe_and_hex() -> None:
    """Status texts name the code in hex and in words."""
    assert describe(0xA700) == "0xA700 (Refused: out of resources)"
    assert describe(0xC123).startswith("0xC123 (Error: cannot understand")
    assert hex_status(0xA700) == "0xA700"
    assert hex_status(None) is None
