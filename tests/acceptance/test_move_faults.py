"""Move faults no real peer produces on demand, with a scripted pynetdicom Q/R SCP: failed
sub-operations (0xB000) and a PACS that keeps sending pending responses."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from tests.helpers.fakeqr import FakeQRSCP
from tests.helpers.jobs import job_json, wait_job
from tests.helpers.procs import CtnodeProcess, free_port
from tests.helpers.qrdata import FAST_QUEUE, Study, make_study, peer
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow


def _study(tmp_path: Path) -> tuple[Study, list[pydicom.Dataset]]:
    study = make_study(
        tmp_path / "in",
        patient_id="PAT100",
        patient_name="Fault^Frank",
        study_date="20260401",
        series_sizes=(3, 2),
    )
    return study, [pydicom.dcmread(p) for p in study.files]


def _uids(datasets: list[pydicom.Dataset]) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in datasets]


def test_partial_failure_retries_only_missing(tmp_path: Path) -> None:
    """First C-MOVE: two of five sub-operations fail (0xB000). The retry lists the study with
    C-FIND (SERIES, then IMAGE), and moves only the two missing instances at IMAGE level; the
    job then succeeds with all five instances recorded as arrived."""
    study, datasets = _study(tmp_path)
    broken_uids = set(_uids(datasets)[1:3])
    node_port = free_port()
    fake = FakeQRSCP(
        datasets,
        {"CTNODE": ("127.0.0.1", node_port)},
        broken=lambda call, uid: call == 1 and uid in broken_uids,
    )
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            port=node_port,
            config={"queue": FAST_QUEUE},
            peers={"fake": peer("FAKEQR", fake.port)},
        ) as node,
    ):
        result = node.cli("move", "fake", "--study", study.uid, "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        job = wait_job(node, json.loads(result.stdout)["id"], {"succeeded"})
    assert job["attempts"] == 2
    assert job["items"]["succeeded"] == 5 and job["items"]["failed"] == 0
    retry = next(e for e in job["events"] if e["event"] == "retry_scheduled")
    assert retry["status"] == "0xB000" and "2 of 5 sub-operation(s) failed" in retry["message"]
    resumed = next(e for e in job["events"] if e["event"] == "resumed")
    assert "2 of 5 instance(s) missing" in resumed["message"]
    assert fake.move_calls[0]["level"] == "STUDY"
    assert [c["level"] for c in fake.move_calls[1:]] == ["IMAGE"]
    assert set(fake.move_calls[1]["instances"]) == broken_uids
    assert fake.find_calls == ["SERIES", "IMAGE", "IMAGE"]
    assert job["result"]["mode"] == "missing" and job["result"]["arrived"] == 2


def test_partial_failure_gives_up_with_counts(tmp_path: Path) -> None:
    """Sub-operations that keep failing: retried within the policy (2 attempts), then the job
    fails with the counts, and the missing instances are listed as failed items."""
    study, datasets = _study(tmp_path)
    broken_uids = set(_uids(datasets)[:2])
    node_port = free_port()
    fake = FakeQRSCP(
        datasets,
        {"CTNODE": ("127.0.0.1", node_port)},
        broken=lambda call, uid: uid in broken_uids,
    )
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            port=node_port,
            config={"queue": FAST_QUEUE},
            peers={
                "fake": peer("FAKEQR", fake.port, retry={"max_attempts": 2, "initial_delay": 0.2})
            },
        ) as node,
    ):
        result = node.cli("move", "fake", "--study", study.uid, "--wait", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        job = wait_job(node, json.loads(result.stdout)["id"], {"failed"})
    # the second attempt moves only the two failing instances: all fail, which pynetdicom
    # answers 0xA702 (unable to perform sub-operations) rather than 0xB000
    assert job["attempts"] == 2 and job["last_status"] == "0xA702"
    assert "gave up after 2 attempt(s)" in job["last_error"]
    assert "2 of 2 sub-operation(s) failed" in job["last_error"]
    assert "3 instance(s) arrived so far" in job["last_error"]
    assert job["items"]["succeeded"] == 3 and job["items"]["failed"] == 2
    assert {i["sop_instance_uid"] for i in job["failed_items"]} == broken_uids


def test_move_total_exceeded_cancels_and_retries(tmp_path: Path) -> None:
    """A PACS still sending pending responses after timeouts.move_total: ctnode sends
    C-CANCEL, the attempt is retried, and the next attempt (a normal move) succeeds."""
    study, datasets = _study(tmp_path)
    node_port = free_port()
    fake = FakeQRSCP(
        datasets,
        {"CTNODE": ("127.0.0.1", node_port)},
        stall_calls=frozenset({1}),
        stall_interval=0.1,
    )
    timeouts = {"connect": 3, "acse": 5, "dimse": 10, "network": 10, "move_total": 1.5}
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            port=node_port,
            config={"queue": FAST_QUEUE},
            peers={"fake": peer("FAKEQR", fake.port, timeouts=timeouts)},
        ) as node,
    ):
        result = node.cli("move", "fake", "--study", study.uid, "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        job = wait_job(node, json.loads(result.stdout)["id"], {"succeeded"})
    assert fake.cancelled_moves == 1
    assert job["attempts"] == 2
    retry = next(e for e in job["events"] if e["event"] == "retry_scheduled")
    assert retry["status"] == "0xFE00" and "timeouts.move_total (1.5 s)" in retry["message"]
    assert job["items"]["succeeded"] == 5


def test_cancel_running_move_sends_c_cancel(tmp_path: Path) -> None:
    """`ctnode jobs cancel` of a running move: at the next pending response ctnode sends
    C-CANCEL to the PACS and the job ends cancelled (not retried)."""
    study, datasets = _study(tmp_path)
    node_port = free_port()
    fake = FakeQRSCP(
        datasets,
        {"CTNODE": ("127.0.0.1", node_port)},
        stall_calls=frozenset({1}),
        stall_interval=0.1,
    )
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            port=node_port,
            config={"queue": {**FAST_QUEUE, "lease_seconds": 3}},
            peers={"fake": peer("FAKEQR", fake.port)},
        ) as node,
    ):
        job_id = int(node.cli("move", "fake", "--study", study.uid).stdout)
        wait_until(
            lambda: (job_json(node, job_id).get("progress") or {}).get("arrived"),
            30,
            interval=0.1,
            message="a first arrived instance",
        )
        cancel = node.cli("jobs", "cancel", str(job_id))
        assert cancel.returncode == 0, cancel.stderr
        job = wait_job(node, job_id, {"cancelled", "succeeded", "failed"})
    assert job["state"] == "cancelled", job
    assert fake.cancelled_moves == 1 and len(fake.move_calls) == 1
    assert job["attempts"] == 1
