"""The ``decisions`` column of a routing arrival: compact JSON that reads back as written, and
None (never an exception) for anything else."""

from __future__ import annotations

import pytest

from ctnode.routing.arrivals import Decision, decode, encode


def test_decisions_read_back_as_written() -> None:
    decisions = [
        Decision("ct-to-pacs", "pacs", "study", 30.0, True),
        Decision("all", "archive", "instance", 2.0, False),
    ]
    text = encode(decisions)
    assert (
        text == '[["ct-to-pacs","pacs","study",30.0,true],["all","archive","instance",2.0,false]]'
    )
    assert decode(text) == decisions


@pytest.mark.parametrize(
    "text", ["", "not json", "{}", "[1]", '[["r","d","study"]]', "[[1,2,3,4]]"]
)
def test_an_unreadable_column_is_none(text: str) -> None:
    assert decode(text) is None
