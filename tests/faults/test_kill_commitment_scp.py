"""kill -9 of ``ctnode run`` between answering a storage commitment request (N-ACTION, ctnode
as SCP) and sending its report: the transaction was persisted before the N-ACTION-RSP, so the
restarted node still sends the report (on a new association, under the peer's retry policy).

Two ways to land there: the scanner's SCP is down when the report is due (the report job is
retrying) and ctnode is killed; or ctnode is killed 0-300 ms after the N-ACTION-RSP, while its
report job is starting or on its way. Either way the scanner gets exactly the report for its
transaction after the restart (at least once: a report cut mid-flight may come twice, which a
requestor must tolerate, PS3.4 J.3.3)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pydicom
import pytest

from ctnode.dicom.commitment_messages import new_transaction_uid
from tests.helpers.dicomgen import write_series
from tests.helpers.procs import CtnodeProcess
from tests.helpers.scanner import Scanner

pytestmark = pytest.mark.slow

FAST_QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 4,
    "retry": {
        "max_attempts": 50,
        "initial_delay": 0.3,
        "multiplier": 1,
        "max_delay": 0.5,
        "jitter": 0,
    },
}


def _refs(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def test_kill_between_n_action_and_report(tmp_path: Path, rng: random.Random) -> None:
    """Three requests, each followed by a kill -9 and a restart; every report arrives."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE})
    scanner = Scanner(node.port)
    node.write_peer("scanner", scanner.peer_file(commit_linger=0))
    node.start()
    try:
        paths = write_series(tmp_path / "study", 4)
        scanner.store(paths)
        refs = _refs(paths)
        for case in range(3):
            uid = new_transaction_uid()
            scanner_down = case == 0 or rng.random() < 0.5
            if scanner_down:
                scanner.stop()
            else:
                scanner.listen()
            assert scanner.request(uid, refs[: 1 + case])[0] == 0x0000
            time.sleep(rng.uniform(0.0, 0.3) if not scanner_down else 1.0)
            node.kill()
            if scanner_down:
                assert all(r.transaction_uid != uid for r in scanner.reports)
                scanner.listen()
            node.start()
            report = scanner.wait_report(uid, timeout=30)
            assert report.event_type == 1
            assert sorted(report.committed) == sorted(r[1] for r in refs[: 1 + case])
            scanner.stop()
    finally:
        scanner.stop()
        node.kill()
