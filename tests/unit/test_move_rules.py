"""C-MOVE requests from the CLI, outcome classification and messages, and the `--wait` line."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.errors import UsageError
from ctnode.follow import _totals, describe
from ctnode.queue.attempt import Outcome
from ctnode.queue.jobs import ItemCounts, Job, JobKind, JobState
from ctnode.scu.move_outcome import (
    Counts,
    MovePeer,
    classify_move,
    destination_unknown_message,
    node_host,
)
from ctnode.scu.move_request import MoveRequest, make_request, request_from_cli
from ctnode.ul.dimse import Command

PEER = MovePeer(
    peer_name="pacs",
    peer_ae="PACS",
    destination="CTNODE",
    to_self=True,
    node_ae="CTNODE",
    node_host="ct-ws-01",
    node_port=4006,
    move_total=3600,
)


def test_request_levels_and_identifier() -> None:
    """A study, a series, or instances of a series: the level and identifier follow."""
    study = request_from_cli([], "1.2.3", None, None)
    assert study.level == "STUDY" and study.destination is None
    series = request_from_cli(
        ["StudyInstanceUID=1.2.3", "SeriesInstanceUID=1.2.4"], None, None, "X"
    )
    assert series.level == "SERIES" and series.destination == "X"
    image = request_from_cli(
        ["0020,000D=1.2.3", "(0020,000E)=1.2.4", "SOPInstanceUID=1.2.5\\1.2.6"], None, None, None
    )
    assert image.level == "IMAGE" and image.instances == ("1.2.5", "1.2.6")
    ds = image.identifier()
    assert ds.QueryRetrieveLevel == "IMAGE" and list(ds.SOPInstanceUID) == ["1.2.5", "1.2.6"]
    assert MoveRequest.from_payload(image.to_payload()) == image
    assert image.describe() == "2 instance(s) of series 1.2.4"


@pytest.mark.parametrize(
    ("keys", "study", "series", "dest", "message"),
    [
        ([], None, None, None, "give the study"),
        (["PatientID=1"], None, None, None, "by UID only"),
        (["StudyInstanceUID"], None, None, None, "needs a value"),
        (["StudyInstanceUID=1.2.3"], "1.2.4", None, None, "disagree"),
        ([], "1.2.3/..", None, None, "not a valid UID"),
        (["SOPInstanceUID=1.2.5"], "1.2.3", None, None, "needs their SeriesInstanceUID"),
        ([], "1.2.3", None, "A" * 17, "move destination"),
    ],
)
def test_request_errors(
    keys: list[str], study: str | None, series: str | None, dest: str | None, message: str
) -> None:
    """What cannot be moved is a usage error naming the problem."""
    with pytest.raises(UsageError, match=message):
        request_from_cli(keys, study, series, dest)


def test_payload_is_validated_again() -> None:
    """A payload written by an integrator is validated like the CLI's."""
    with pytest.raises(UsageError):
        MoveRequest.from_payload({"study": "not a uid"})
    assert make_request("1.2.3", destination=" DEST").destination == "DEST"


def test_counts_from_command() -> None:
    """Absent counts are 0; counts add up across C-MOVEs."""
    cmd = Command(
        CommandField=0x8021,
        NumberOfRemainingSuboperations=3,
        NumberOfCompletedSuboperations=2,
    )
    counts = Counts.from_command(cmd)
    assert counts == Counts(3, 2, 0, 0)
    assert (counts + Counts(0, 1, 1, 1)).total == 5


def test_classify_success_and_partial() -> None:
    """Success without failures is done; 0xB000 or any failed sub-operation is transient (the
    missing instances are retried) with the counts in the message; warnings alone are done."""
    assert classify_move(st.SUCCESS, Counts(0, 5, 0, 0), cancelled=None, p=PEER) == (
        Outcome.DONE,
        None,
    )
    outcome, message = classify_move(0xB000, Counts(0, 3, 2, 0), cancelled=None, p=PEER)
    assert outcome is Outcome.TRANSIENT
    assert message is not None and "2 of 5 sub-operation(s) failed" in message
    outcome, _ = classify_move(st.SUCCESS, Counts(0, 3, 1, 0), cancelled=None, p=PEER)
    assert outcome is Outcome.TRANSIENT
    assert classify_move(0xB000, Counts(0, 3, 0, 2), cancelled=None, p=PEER)[0] is Outcome.DONE


def test_classify_destination_unknown() -> None:
    """0xA801 is permanent; for ctnode the message gives AE, host and port to configure."""
    outcome, message = classify_move(0xA801, Counts(), cancelled=None, p=PEER)
    assert outcome is Outcome.PERMANENT
    assert message == destination_unknown_message(PEER)
    assert "add AE CTNODE, host ct-ws-01, port 4006" in message
    assert "DicomModalities" in message and "HostTable" in message
    third = dataclasses.replace(PEER, destination="VIEWER", to_self=False)
    assert "add VIEWER with its host and port" in destination_unknown_message(third)


def test_classify_cancel_and_refusals() -> None:
    """0xFE00 after move_total is transient (retried), after a stop request is a stop; 0xA7xx
    transient; 0xA900, 0xC000, 0x0122, 0x0124 permanent (with hints)."""
    outcome, message = classify_move(st.CANCEL, Counts(4, 6, 0, 0), cancelled="move_total", p=PEER)
    assert outcome is Outcome.TRANSIENT
    assert message is not None and "move_total (3600 s)" in message and "4 remaining" in message
    assert classify_move(st.CANCEL, Counts(), cancelled="stopped", p=PEER)[0] is Outcome.STOPPED
    assert classify_move(st.CANCEL, Counts(), cancelled=None, p=PEER)[0] is Outcome.TRANSIENT
    assert classify_move(0xA702, Counts(), cancelled=None, p=PEER)[0] is Outcome.TRANSIENT
    outcome, message = classify_move(0xA702, Counts(0, 0, 3, 0), cancelled=None, p=PEER)
    assert outcome is Outcome.TRANSIENT
    assert message is not None and "3 of 3 sub-operation(s) failed" in message
    for code in (0xA900, 0xC000, 0x0122):
        assert classify_move(code, Counts(), cancelled=None, p=PEER)[0] is Outcome.PERMANENT
    _, message = classify_move(0x0124, Counts(), cancelled=None, p=PEER, comment="no")
    assert message is not None and "allow C-MOVE from AE CTNODE" in message and ": no" in message


def test_node_host() -> None:
    """The host named in messages is the bind address unless it is a wildcard."""
    assert node_host(NodeSettings(bind="10.1.2.3")) == "10.1.2.3"
    assert node_host(NodeSettings(bind="0.0.0.0")) not in ("0.0.0.0", "")


def _job(kind: JobKind, progress: dict[str, int] | None, items: ItemCounts) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=7,
        kind=kind,
        peer="pacs",
        state=JobState.RUNNING,
        priority=0,
        not_before=now,
        attempts=1,
        max_attempts=5,
        retry_policy={},
        lease_owner="me",
        lease_expires_at=now,
        node_name=None,
        cancel_requested=False,
        last_status=None,
        last_error=None,
        idempotency_key=None,
        payload={},
        result=None,
        progress=progress,
        created_at=now,
        started_at=now,
        finished_at=None,
        updated_at=now,
        items=items,
    )


def test_follow_shows_move_progress() -> None:
    """`--wait` describes a move by the PACS's counts and arrivals (not by its items), and its
    progress bar total is completed + failed + warning + remaining."""
    progress = {"remaining": 4, "completed": 5, "failed": 1, "warning": 0, "arrived": 5}
    job = _job(JobKind.MOVE, progress, ItemCounts(5, 5, 0, 0, 0))
    assert describe(job) == (
        "job 7 (move from pacs) running: 5 completed, 1 failed, 0 warning, 4 remaining, 5 arrived"
    )
    assert _totals(job) == (10, 6)
    push = _job(JobKind.PUSH, None, ItemCounts(10, 6, 0, 1, 3))
    assert describe(push) == "job 7 (push to pacs) running: 6/10 delivered, 1 failed"
    assert _totals(push) == (10, 7)
