"""ctnode as Storage Commitment SCP, with a pynetdicom scanner as the requestor (``ctnode run``
as a process): the report on a new association with role selection, on the same association,
the Failure Reasons (0x0112, 0x0119), malformed requests, a peer not allowed to ask, and a
requestor that is down when the report is due."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ctnode.dicom.commitment_messages import new_transaction_uid
from ctnode.dicom.contexts import CT_IMAGE, MR_IMAGE
from tests.helpers.dicomgen import write_series
from tests.helpers.peerfiles import FAST_QUEUE
from tests.helpers.procs import CtnodeProcess
from tests.helpers.scanner import Scanner, action_dataset
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow


def _refs(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


@pytest.fixture
def node_and_scanner(tmp_path: Path) -> Iterator[tuple[CtnodeProcess, Scanner]]:
    """ctnode with the scanner as a peer (accept: [echo, store, commit]; no linger)."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE})
    scanner = Scanner(node.port)
    node.write_peer("scanner", scanner.peer_file(commit_linger=0))
    node.write_peer(
        "reporter",
        {
            "ae_title": "REPORTER",
            "host": "127.0.0.1",
            "port": 11112,
            "accept": ["echo", "store", "commitment_report"],
        },
    )
    with node:
        yield node, scanner
    scanner.stop()


def _commitments(node: CtnodeProcess, *args: str) -> Any:
    result = node.cli("commitments", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_report_on_a_new_association_with_failure_reasons(
    node_and_scanner: tuple[CtnodeProcess, Scanner], tmp_path: Path
) -> None:
    """Two stored instances are committed; one ctnode never received fails 0x0112, one named
    with another SOP class fails 0x0119; the report (Event Type 2) comes on a new association
    on which ctnode took the SCP role of the SOP class through role selection."""
    node, scanner = node_and_scanner
    paths = write_series(tmp_path / "study", 2)
    scanner.store(paths)
    scanner.listen()
    stored = _refs(paths)
    unknown = (CT_IMAGE, "1.2.826.0.1.3680043.10.999.1")
    conflict = (MR_IMAGE, stored[1][1])
    uid = new_transaction_uid()
    status, _ = scanner.request(uid, [stored[0], unknown, conflict])
    assert status == 0x0000
    report = scanner.wait_report(uid)
    assert report.event_type == 2
    assert not report.same_association
    assert report.requestor_roles == (False, True)
    assert report.committed == [stored[0][1]]
    assert report.failed == {unknown[1]: 0x0112, conflict[1]: 0x0119}
    # The transaction is recorded as reported.
    listed = wait_until(lambda: [t for t in _commitments(node) if t["state"] == "reported"], 10)
    assert listed[0]["transaction_uid"] == uid
    assert (listed[0]["instances"], listed[0]["committed"], listed[0]["failed"]) == (3, 1, 2)


def test_all_committed_is_event_type_1(
    node_and_scanner: tuple[CtnodeProcess, Scanner], tmp_path: Path
) -> None:
    """Every instance durable in ctnode: Event Type 1, no Failed SOP Sequence."""
    _node, scanner = node_and_scanner
    paths = write_series(tmp_path / "study", 3)
    scanner.store(paths)
    scanner.listen()
    uid = new_transaction_uid()
    assert scanner.request(uid, _refs(paths))[0] == 0x0000
    report = scanner.wait_report(uid)
    assert report.event_type == 1 and report.failed == {}
    assert sorted(report.committed) == sorted(r[1] for r in _refs(paths))


def test_malformed_requests_get_the_n_action_failure(
    node_and_scanner: tuple[CtnodeProcess, Scanner],
) -> None:
    """Action Type 2 → 0x0123; no Transaction UID → 0x0115; an empty Referenced SOP Sequence →
    0x0115; nothing is persisted for them."""
    node, scanner = node_and_scanner
    refs = [(CT_IMAGE, "1.2.3.4")]
    assert scanner.request(new_transaction_uid(), refs, action_type=2)[0] == 0x0123
    no_uid = action_dataset("", refs)
    del no_uid.TransactionUID
    assert scanner.request("", refs, dataset=no_uid)[0] == 0x0115
    assert scanner.request(new_transaction_uid(), [])[0] == 0x0115
    assert _commitments(node) == []


def test_a_peer_without_commit_is_refused(
    node_and_scanner: tuple[CtnodeProcess, Scanner],
) -> None:
    """A peer whose accept list lacks ``commit``: asking in the SCU role, its association is
    rejected (the only context it proposes is one it may not use); with the default roles
    (allowed for its reports) its N-ACTION is answered 0x0124."""
    node, _ = node_and_scanner
    reporter = Scanner(node.port, ae_title="REPORTER")
    refs = [(CT_IMAGE, "1.2.3.4")]
    assert reporter.request(new_transaction_uid(), refs, role=(True, False)) == (None, None)
    assert reporter.request(new_transaction_uid(), refs)[0] == 0x0124
    assert _commitments(node) == []


def test_requestor_down_at_report_time_gets_it_when_back(
    node_and_scanner: tuple[CtnodeProcess, Scanner], tmp_path: Path
) -> None:
    """The scanner's SCP is down when the report is due: the report job retries under the
    peer's policy (attempts counted) and the report arrives once the scanner listens again."""
    node, scanner = node_and_scanner
    paths = write_series(tmp_path / "study", 1)
    scanner.store(paths)
    uid = new_transaction_uid()
    assert scanner.request(uid, _refs(paths))[0] == 0x0000
    wait_until(
        lambda: [t for t in _commitments(node, "--state", "pending") if t["report_attempts"] >= 2],
        20,
        message="two failed report attempts",
    )
    scanner.listen()
    report = scanner.wait_report(uid)
    assert report.event_type == 1
    shown = node.cli("commitments", "show", uid, "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["state"] == "reported" and detail["report_attempts"] >= 3


def test_report_on_the_same_association(tmp_path: Path) -> None:
    """A requestor that keeps the N-ACTION's association open (within ``commit_linger``) gets
    the report on it; nothing is sent on a new association afterwards."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE})
    scanner = Scanner(node.port)
    node.write_peer("scanner", scanner.peer_file(commit_linger=2))
    with node:
        paths = write_series(tmp_path / "study", 2)
        scanner.store(paths)
        scanner.listen()
        try:
            uid = new_transaction_uid()
            status, _ = scanner.request(uid, _refs(paths), keep_open=10)
            assert status == 0x0000
            report = scanner.wait_report(uid, timeout=1)
            assert report.same_association and report.event_type == 1
            tx = wait_until(
                lambda: [t for t in _commitments(node) if t["state"] == "reported"], 10
            )[0]
            assert tx["transaction_uid"] == uid
            job = json.loads(node.cli("jobs", "show", str(tx["report_job"]), "--json").stdout)
            wait_until(
                lambda: (
                    json.loads(node.cli("jobs", "show", str(tx["report_job"]), "--json").stdout)[
                        "state"
                    ]
                    == "succeeded"
                ),
                10,
            )
            assert job["kind"] == "commit_report"
            assert len(scanner.reports) == 1  # not sent again on a new association
        finally:
            scanner.stop()
