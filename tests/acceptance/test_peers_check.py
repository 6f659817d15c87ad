"""`ctnode peers list` and `ctnode peers check` against real peers: DCMTK storescp, dcmqrscp
(refuses compressed syntaxes), Orthanc (accepts storage commitment) and a stopped peer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.dcmqrscp import dcmqrscp
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess, free_port, storescp

pytestmark = pytest.mark.slow


def test_peers_check_against_real_peers(tmp_path: Path) -> None:
    """storescp accepts storage; dcmqrscp's refusal of compressed syntaxes is reported (as a
    note); Orthanc accepts commitment; a stopped peer fails; exit 1 because of it."""
    node_port = free_port()
    with (
        storescp(tmp_path / "sc") as sc,
        dcmqrscp(tmp_path / "qr", hosts={"ctnode": ("CTNODE", "127.0.0.1", node_port)}) as qr,
        Orthanc(
            modalities={"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node_port}}
        ) as orthanc,
    ):
        peers = {
            "scp": {
                "ae_title": "STORESCP",
                "host": "127.0.0.1",
                "port": sc.port,
                "services": ["store"],
            },
            "qr": {
                "ae_title": "DCMQRSCP",
                "host": "127.0.0.1",
                "port": qr.port,
                "accept": ["echo", "store"],
                "services": ["store", "find", "move"],
            },
            "orthanc": {
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "accept": ["echo", "store", "commitment_report"],
                "services": ["store", "find", "move", "commit"],
            },
            "stopped": {"ae_title": "STOPPED", "host": "127.0.0.1", "port": free_port()},
        }
        node = CtnodeProcess(tmp_path / "node", peers=peers, port=node_port)
        listed = json.loads(node.cli("peers", "list", "--json").stdout)
        result = node.cli("peers", "check", "--json", timeout=120)
        one = node.cli("peers", "check", "orthanc")
    assert sorted(p["name"] for p in listed) == ["orthanc", "qr", "scp", "stopped"]
    assert result.returncode == 1
    reports = {r["peer"]: r for r in json.loads(result.stdout)}
    checks = {name: {c["name"]: c for c in r["checks"]} for name, r in reports.items()}

    assert reports["scp"]["ok"]
    assert checks["scp"]["store CT Image Storage"]["ok"]

    assert reports["qr"]["ok"]
    compressed = checks["qr"]["store CT Image Storage compressed"]
    assert not compressed["ok"] and not compressed["required"]
    assert "1.2.840.10008.1.2.4.90" in compressed["detail"]
    assert checks["qr"]["find"]["ok"] and checks["qr"]["move"]["ok"]

    assert reports["orthanc"]["ok"]
    assert checks["orthanc"]["commit"]["ok"]
    assert "Storage Commitment accepted" in checks["orthanc"]["commit"]["detail"]

    assert not reports["stopped"]["ok"]
    assert "Connection refused" in checks["stopped"]["echo"]["detail"]

    assert one.returncode == 0
    assert "orthanc (ORTHANC@" in one.stdout and ": OK" in one.stdout


def test_peers_check_reports_unknown_move_destination(tmp_path: Path) -> None:
    """A PACS that does not know ctnode as a move destination is reported with the fix."""
    with Orthanc() as orthanc:  # ctnode is not in its DicomModalities
        node = CtnodeProcess(
            tmp_path / "node",
            peers={
                "orthanc": {
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "accept": ["echo", "store"],
                    "services": ["move"],
                }
            },
        )
        result = node.cli("peers", "check", "--json")
    assert result.returncode == 1
    (report,) = json.loads(result.stdout)
    move = next(c for c in report["checks"] if c["name"] == "move destination")
    assert not move["ok"] and "DicomModalities" in move["detail"]
