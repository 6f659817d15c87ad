"""Orthanc as the scanner asking ctnode for storage commitment (ctnode as SCP): Orthanc stores a
study to ctnode and requests commitment through its REST API (``/modalities/ctnode/store`` with
``StorageCommitment: true``); ``/storage-commitment/{uid}`` then shows every instance committed.
Local mode: committed once durable in ctnode. Upstream mode, with a second Orthanc as the PACS:
committed only once the PACS committed the same instances (ctnode pushed and asked it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

FAST_QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {
        "max_attempts": 10,
        "initial_delay": 0.5,
        "multiplier": 1,
        "max_delay": 1,
        "jitter": 0,
    },
}


def _peer(ae: str, port: int, accept: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        "accept": accept,
        "timeouts": {"connect": 3, "acse": 5, "dimse": 10, "network": 10},
        **extra,
    }


def _ask(scanner: Orthanc, paths: list[Path]) -> tuple[str, set[str]]:
    """Upload *paths* to the scanner Orthanc, store them to ctnode with storage commitment;
    returns the Transaction UID and the SOP Instance UIDs."""
    ids = [scanner.upload(p) for p in paths]
    answer = scanner.request(
        "POST",
        "/modalities/ctnode/store",
        {"Resources": ids, "StorageCommitment": True, "Synchronous": True},
    )
    uid = answer["StorageCommitmentTransactionUID"]
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    return uid, uids


def _status(scanner: Orthanc, uid: str) -> dict[str, Any]:
    return dict(scanner.request("GET", f"/storage-commitment/{uid}"))


def _committed(scanner: Orthanc, uid: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(
        lambda: (s := _status(scanner, uid))["Status"] != "Pending" and s,
        timeout,
        interval=0.3,
        message=lambda: f"Orthanc's storage commitment {uid}: {_status(scanner, uid)}",
    )


@pytest.fixture
def scanner_and_node(tmp_path: Path) -> Iterator[tuple[Orthanc, CtnodeProcess]]:
    """ctnode (local mode) and an Orthanc scanner that knows it as ``ctnode``."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE})
    with Orthanc(
        modalities={"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node.port}}
    ) as scanner:
        node.write_peer(
            "scanner", _peer("ORTHANC", scanner.dicom_port, ["echo", "store", "commit"])
        )
        with node:
            yield scanner, node


def test_orthanc_scanner_local_mode(
    scanner_and_node: tuple[Orthanc, CtnodeProcess], tmp_path: Path
) -> None:
    """Orthanc's ``/storage-commitment/{uid}`` shows every instance committed by ctnode."""
    scanner, node = scanner_and_node
    paths = write_series(tmp_path / "study", 3)
    uid, uids = _ask(scanner, paths)
    status = _committed(scanner, uid)
    assert status["Status"] == "Success", status
    assert {s["SOPInstanceUID"] for s in status["Success"]} == uids
    assert status["Failures"] == []
    shown = node.cli("commitments", "--peer", "scanner", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"state": "reported"' in shown.stdout
    # Orthanc releases the N-ACTION's association at once: the report goes on a new one.
    assert node.log is not None
    sent = node.log.wait_for("commit_scp.report.sent", timeout=5)
    assert sent["association"] == "new", sent


def test_orthanc_scanner_upstream_mode_waits_for_the_pacs(tmp_path: Path) -> None:
    """Upstream mode with a second Orthanc as the PACS: ctnode pushes the study to the PACS and
    asks it for commitment; the scanner's commitment is Success only once the PACS committed
    every instance (the PACS holds them by then)."""
    node = CtnodeProcess(
        tmp_path / "node",
        config={
            "queue": FAST_QUEUE,
            "commitment_scp": {"mode": "upstream", "upstream": ["pacs"], "report_within": 120},
        },
    )
    modality = {"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node.port}}
    with (
        Orthanc(modalities=modality) as scanner,
        Orthanc(ae_title="PACS", modalities=modality) as pacs,
    ):
        node.write_peer(
            "scanner", _peer("ORTHANC", scanner.dicom_port, ["echo", "store", "commit"])
        )
        node.write_peer(
            "pacs",
            _peer(
                "PACS",
                pacs.dicom_port,
                ["echo", "store", "commitment_report"],
                commit_linger=0,
                commit_timeout=60,
            ),
        )
        with node:
            paths = write_series(tmp_path / "study", 3)
            uid, uids = _ask(scanner, paths)
            status = _committed(scanner, uid, timeout=90)
            assert status["Status"] == "Success", status
            assert {s["SOPInstanceUID"] for s in status["Success"]} == uids
            # The PACS holds and committed them before the scanner was told.
            assert uids <= pacs.sop_instance_uids()
            study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            listed = node.cli("instances", "--study", study, "--json")
            assert listed.returncode == 0, listed.stderr
            assert listed.stdout.count('"peer": "pacs"') >= len(uids)
