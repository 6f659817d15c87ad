"""A commitment round's items and messages (``scu.commit_round``) and the services check every
outbound operation makes (``scu.services``): pure, no association and no database."""

from __future__ import annotations

from pathlib import Path

from ctnode.dicom.commitment_messages import SopReference
from ctnode.peers import Peer, PeerConfig
from ctnode.queue.attempt import Outcome
from ctnode.queue.jobs import ItemRow, ItemState
from ctnode.scu.commit_round import (
    in_states,
    outstanding,
    references,
    shortfall,
    summary,
    unreported_reason,
)
from ctnode.scu.services import service_refused


def item(
    seq: int, state: ItemState, status: int | None = None, error: str | None = None
) -> ItemRow:
    """An item of a commit job (SOP class CT, instance 1.2.<seq>)."""
    return ItemRow(
        seq, seq, state, "1.2.840.10008.5.1.4.1.1.2", f"1.2.{seq}", None, None, status, error, 1
    )


ITEMS = [
    item(1, ItemState.SUCCEEDED),
    item(2, ItemState.FAILED, 0x0112),
    item(3, ItemState.PENDING),
    item(4, ItemState.WARNING),
    item(5, ItemState.FAILED, None, "pushing it again failed: gone"),
]


def test_selection_and_references() -> None:
    """Succeeded and warning items are committed; the rest are outstanding, in order; a request
    references items by SOP class and instance."""
    assert [i.seq for i in outstanding(ITEMS)] == [2, 3, 5]
    assert [i.seq for i in in_states(ITEMS, ItemState.PENDING)] == [3]
    assert references(ITEMS[2:3]) == [SopReference("1.2.840.10008.5.1.4.1.1.2", "1.2.3")]


def test_summary_counts() -> None:
    """The job's result: total, committed, failed, pending, and the requests made."""
    assert summary(ITEMS, 2) == {
        "total": 5,
        "committed": 2,
        "failed": 2,
        "pending": 1,
        "requests": 2,
    }


def test_shortfall_names_the_first_failure_and_why_the_rest_is_open() -> None:
    """The message counts what is not committed, names the first failure (its status, else its
    error) and why unreported instances are open."""
    why = unreported_reason(expired=True, commit_timeout=600)
    assert why == "no report within commit_timeout (600 s)"
    assert unreported_reason(expired=False, commit_timeout=600) == "not in the report"
    left = shortfall(ITEMS, "pacs", why)
    assert left.message == (
        "3 of 5 instance(s) not committed by pacs: 2 failed (first: 1.2.2 0x0112 (No such SOP "
        "instance)), 1 no report within commit_timeout (600 s)"
    )
    assert left.status == 0x0112
    assert [i.seq for i in left.unreported] == [3]
    only_error = shortfall([ITEMS[4]], "pacs", why)
    assert only_error.message == (
        "1 of 1 instance(s) not committed by pacs: 1 failed (first: 1.2.5 pushing it again "
        "failed: gone)"
    )
    assert only_error.status is None


def test_service_refused_unless_listed(tmp_path: Path) -> None:
    """A peer that does not list a service refuses the job for good; the query and move jobs
    name the peer file."""
    peer = Peer(
        "pacs",
        PeerConfig(ae_title="PACS", host="h", port=104, services=("store",)),
        tmp_path / "pacs.yaml",
    )
    assert service_refused(peer, "store") is None
    refused = service_refused(peer, "commit")
    assert refused is not None and refused.outcome is Outcome.PERMANENT
    assert refused.error == "peer 'pacs' does not list 'commit' in its services"
    named = service_refused(peer, "move", name_file=True)
    assert named is not None
    assert (
        named.error
        == f"peer 'pacs' does not list 'move' in its services ({tmp_path / 'pacs.yaml'})"
    )
