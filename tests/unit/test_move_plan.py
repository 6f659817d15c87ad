"""A retried move's plan (``scu.move_plan``) and an attempt's bookkeeping (``scu.move_tally``):
pure, no association and no database."""

from __future__ import annotations

from pydicom.dataset import Dataset

from ctnode.dicom import status as st
from ctnode.move_registry import Arrival
from ctnode.queue.jobs import ItemState, ItemUpsert
from ctnode.scu.move_outcome import Counts, MoveFinal
from ctnode.scu.move_plan import (
    UIDS_PER_MOVE,
    image_moves,
    listed_uids,
    listing_identifier,
    missing_instances,
)
from ctnode.scu.move_request import MoveRequest
from ctnode.scu.move_tally import MoveTally

STUDY = "1.2.3"


def test_listing_identifier_asks_for_series_then_instances() -> None:
    """SERIES level lists a study's series; IMAGE level a series' SOP Instance UIDs."""
    series = listing_identifier(STUDY, "SERIES", None)
    assert series.QueryRetrieveLevel == "SERIES"
    assert series.StudyInstanceUID == STUDY and series.SeriesInstanceUID == ""
    assert "SOPInstanceUID" not in series
    image = listing_identifier(STUDY, "IMAGE", "1.2.3.4")
    assert image.QueryRetrieveLevel == "IMAGE"
    assert image.SeriesInstanceUID == "1.2.3.4" and image.SOPInstanceUID == ""


def test_listed_uids_are_valid_unique_and_in_order() -> None:
    """Invalid and missing UIDs are dropped, repeats kept once, the PACS's order kept."""
    matches = []
    for uid in ("1.2.9", "not a uid", "1.2.5", "1.2.9", None):
        ds = Dataset()
        if uid is not None:
            ds.SOPInstanceUID = uid
        matches.append(ds)
    assert listed_uids(matches, "IMAGE") == ["1.2.9", "1.2.5"]
    assert listed_uids(matches, "SERIES") == []


def test_missing_instances_subtract_arrived_and_stored() -> None:
    """What arrived before and what the index holds is not moved again; a series with nothing
    missing is left out."""
    expected = {"1.2.3.1": ["1.1", "1.2", "1.3"], "1.2.3.2": ["2.1"]}
    missing = missing_instances(expected, have={"1.1"}, here={"1.3", "2.1"})
    assert missing == {"1.2.3.1": ["1.2"]}


def test_image_moves_chunk_per_series() -> None:
    """IMAGE-level requests per series, at most UIDS_PER_MOVE UIDs each, same destination."""
    request = MoveRequest(STUDY, destination="OTHER")
    uids = [f"1.2.{n}" for n in range(UIDS_PER_MOVE + 1)]
    plan = image_moves(request, {"1.2.3.1": uids, "1.2.3.2": ["9.9"]})
    assert [(m.series, len(m.instances)) for m in plan] == [
        ("1.2.3.1", UIDS_PER_MOVE),
        ("1.2.3.1", 1),
        ("1.2.3.2", 1),
    ]
    assert all(m.level == "IMAGE" and m.destination == "OTHER" for m in plan)
    assert plan[0].instances + plan[1].instances == tuple(uids)


def test_tally_arrivals_become_items() -> None:
    """An arrival is a succeeded item; a quarantined copy a warning that says why."""
    tally = MoveTally(MoveRequest(STUDY), "CTNODE", to_self=True)
    upserts = tally.note_arrivals(
        [Arrival("1.2.840.1", "5.1", "stored"), Arrival("1.2.840.1", "5.2", "quarantined")]
    )
    assert upserts[0] == ItemUpsert(
        "5.1", ItemState.SUCCEEDED, sop_class_uid="1.2.840.1", status=st.SUCCESS
    )
    assert upserts[1].state is ItemState.WARNING and "quarantined" in str(upserts[1].error)
    assert set(tally.arrived) == {"5.1", "5.2"}
    assert tally.progress()["arrived"] == 2


def test_tally_counts_finished_moves_and_a_cancel_keeps_remaining() -> None:
    """Finished C-MOVEs add up; what a cancelled one left remaining stays in ``remaining``."""
    tally = MoveTally(MoveRequest(STUDY), "OTHER", to_self=False)
    tally.begin_move()
    tally.current = Counts(remaining=5, completed=1)
    assert tally.progress() == {"remaining": 5, "completed": 1, "failed": 0, "warning": 0}
    tally.end_move(MoveFinal(st.SUCCESS, Counts(0, 3, 1, 1)))
    tally.begin_move()
    tally.end_move(MoveFinal(st.CANCEL, Counts(4, 2, 0, 0), cancelled="move_total"))
    result = tally.result(st.CANCEL)
    assert (result["completed"], result["failed"], result["warning"]) == (5, 1, 1)
    assert result["remaining"] == 4
    assert result["status"] == "0xFE00" and result["mode"] == "request"
    assert "arrived" not in result and "missing" not in result
    assert tally.failed_items(st.CANCEL) == []  # a third-party destination has no items


def test_tally_failed_items_are_reported_failures_and_still_missing() -> None:
    """Towards ctnode, what the PACS reported failed and (retrying) what is still missing become
    failed items unless they arrived; each says why."""
    tally = MoveTally(MoveRequest(STUDY), "CTNODE", to_self=True)
    tally.resume({"1.2.3.1": ["7.1", "7.2", "7.3"]})
    tally.note_arrivals([Arrival("1.2.840.1", "7.1", "stored")])
    tally.end_move(MoveFinal(0xA702, Counts(0, 1, 2, 0), failed_uids=["7.2", "7.4"]))
    items = tally.failed_items(0xA702)
    assert [(i.sop_instance_uid, i.error) for i in items] == [
        ("7.2", "not received: the PACS reported this sub-operation as failed"),
        ("7.3", "not received"),
        ("7.4", "not received: the PACS reported this sub-operation as failed"),
    ]
    assert all(i.state is ItemState.FAILED and i.status == 0xA702 for i in items)
    assert tally.result(None)["missing"] == 3 and tally.result(None)["mode"] == "missing"
