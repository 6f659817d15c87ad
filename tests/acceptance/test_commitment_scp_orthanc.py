"""Orthanc as the scanner asking ctnode for storage commitment (ctnode as SCP): Orthanc stores a
study to ctnode and requests commitment through its REST API (``/modalities/ctnode/store`` with
``StorageCommitment: true``); ``/storage-commitment/{uid}`` then shows every instance committed.
Local mode: committed once durable in ctnode. Upstream mode, with a second Orthanc as the PACS:
committed only once the PACS committed the same instances (ctnode pushed and asked it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.orthanc import Orthanc
from tests.helpers.peerfiles import peer as _peer
from tests.helpers.procs import CtnodeProcess, write_yaml
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


def _scanner_and_pacs(node: CtnodeProcess, scanner_port: int, pacs_port: int) -> None:
    """Peer files for upstream mode: the scanner may ask for commitment; ctnode pushes to the
    PACS and asks it (reports on a new association, an answer within a minute)."""
    node.write_peer("scanner", _peer("ORTHANC", scanner_port, ["echo", "store", "commit"]))
    node.write_peer(
        "pacs",
        _peer(
            "PACS",
            pacs_port,
            ["echo", "store", "commitment_report"],
            commit_linger=0,
            commit_timeout=60,
        ),
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
        _scanner_and_pacs(node, scanner.dicom_port, pacs.dicom_port)
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


def _counting_pacs(modalities: dict[str, dict[str, Any]]) -> Orthanc:
    """An Orthanc PACS that logs every C-STORE it takes, duplicates included: it overwrites a
    stored instance (``OverwriteInstances``), so its Lua ``OnStoredInstance`` runs each time
    and writes ``Lua says: stored <SOP Instance UID>`` to its log."""
    pacs = Orthanc(ae_title="PACS", modalities=modalities, extra={"OverwriteInstances": True})
    script = pacs.workdir / "stores.lua"
    script.write_text(
        "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
        "  print('stored ' .. tags['SOPInstanceUID'])\n"
        "end\n"
    )
    script.chmod(0o644)
    pacs.extra["LuaScripts"] = [str(script)]
    return pacs


def _stores(pacs: Orthanc) -> list[str]:
    """SOP Instance UIDs of every store the counting PACS took, in order."""
    text = "".join(
        p.read_text()
        for p in (pacs.workdir / "logs").glob("Orthanc.log*")
        if p.is_file() and not p.is_symlink()
    )
    return [
        line.split("Lua says: stored ", 1)[1].strip()
        for line in text.splitlines()
        if "Lua says: stored " in line
    ]


def test_upstream_mode_leaves_a_committing_route_to_send_the_study(tmp_path: Path) -> None:
    """Upstream mode plus a route ``to: [pacs]`` with ``commit: true``: the scanner's study is
    forwarded and committed by the route alone — the commitment SCP queues no push of its own —
    the scanner's commitment is Success only after the PACS committed every instance, and the
    PACS took each instance exactly once."""
    routes = tmp_path / "routes"
    routes.mkdir()
    write_yaml(routes / "to-pacs.yaml", {"stable_after": 1, "to": ["pacs"], "commit": True})
    node = CtnodeProcess(
        tmp_path / "node",
        config={
            "queue": FAST_QUEUE,
            "routes_dir": str(routes),
            "commitment_scp": {"mode": "upstream", "upstream": ["pacs"], "report_within": 120},
        },
    )
    modality = {"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node.port}}
    with Orthanc(modalities=modality) as scanner, _counting_pacs(modality) as pacs:
        _scanner_and_pacs(node, scanner.dicom_port, pacs.dicom_port)
        with node:
            paths = write_series(tmp_path / "study", 3)
            uid, uids = _ask(scanner, paths)
            status = _committed(scanner, uid, timeout=90)
            assert status["Status"] == "Success", status
            assert {s["SOPInstanceUID"] for s in status["Success"]} == uids
            # The route delivered the study (ctnode's own push, were there one, came first).
            wait_until(
                lambda: _routes(node)[0]["counters"]["forwarded"] == len(uids),
                30,
                message=lambda: f"routes: {_routes(node)}",
            )
            # The PACS took each instance once: one push to it, the route's.
            stores = _stores(pacs)
            assert sorted(stores) == sorted(uids), stores
            assert pacs.request("GET", "/statistics")["CountInstances"] == len(uids)
            jobs = json.loads(node.cli("jobs", "list", "--json").stdout)
            pushes = [j for j in jobs if j["kind"] == "push" and j["peer"] == "pacs"]
            assert len(pushes) == 1, pushes
            assert node.log is not None
            routed = node.log.wait_for("commit_scp.upstream_routed", timeout=5)
            assert routed["instances"] == len(uids) and routed["upstream"] == "pacs", routed
            assert node.log.named("commit_scp.upstream_asked") == []

            # The PACS committed every instance (the route's commit job) before the scanner
            # was told.
            shown = node.cli("commitments", "show", uid, "--json")
            assert shown.returncode == 0, shown.stderr
            reported_at = datetime.fromisoformat(json.loads(shown.stdout)["reported_at"])
            study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            listed = node.cli("instances", "--study", study, "--json")
            assert listed.returncode == 0, listed.stderr
            by_pacs = [
                datetime.fromisoformat(c["committed_at"])
                for i in json.loads(listed.stdout)
                for c in i["committed_by"]
                if c["peer"] == "pacs"
            ]
            assert len(by_pacs) == len(uids)
            assert all(_utc(at) <= _utc(reported_at) for at in by_pacs), (by_pacs, reported_at)


def _routes(node: CtnodeProcess) -> list[dict[str, Any]]:
    listed = node.cli("routes", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
