"""DIMSE status classification."""

from __future__ import annotations

import pytest

from ctnode.dicom.status import Category, Outcome, category, describe, group, hex_status, outcome


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, Outcome.DONE),
        (0xB000, Outcome.WARNING),
        (0xB006, Outcome.WARNING),
        (0xB007, Outcome.WARNING),
        (0xA700, Outcome.TRANSIENT),
        (0xA711, Outcome.TRANSIENT),
        (0x0213, Outcome.TRANSIENT),
        (0x0122, Outcome.PERMANENT),
        (0x0124, Outcome.PERMANENT),
        (0xA900, Outcome.PERMANENT),
        (0xA9FF, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0xCFFF, Outcome.PERMANENT),
        (0x0110, Outcome.PERMANENT),
    ],
)
def test_outcome_classification(code: int, expected: Outcome) -> None:
    """Final statuses map to done/warning/transient/permanent as the retry policy needs."""
    assert outcome(code) is expected


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
