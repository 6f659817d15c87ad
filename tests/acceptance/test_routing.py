"""Routing end to end: ``storescu`` as the scanner (calling AE SCANNER) → ``ctnode run`` →
DCMTK ``storescp`` and Orthanc (with storage commitment), driven only by route files."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.helpers.dicomgen import new_ids, write_series
from tests.helpers.jobs import job_json
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess, ServerProcess, run_tool, storescp, write_yaml
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

FAST_QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {"max_attempts": 3, "initial_delay": 0.3, "multiplier": 1, "max_delay": 1},
}


def scanner_peer(ae: str = "SCANNER") -> dict[str, Any]:
    """A modality that stores to ctnode (and could be a destination: port 9)."""
    return {"ae_title": ae, "host": "127.0.0.1", "port": 9, "accept": ["echo", "store"]}


def dest_peer(ae: str, port: int, **extra: Any) -> dict[str, Any]:
    """A destination peer on loopback."""
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        "accept": ["echo", "store", "commitment_report"],
        "timeouts": {"connect": 3, "acse": 5, "dimse": 10, "network": 10},
        "commit_timeout": 30,
        **extra,
    }


def send(node: CtnodeProcess, files: list[Path], ae: str = "SCANNER") -> None:
    """storescu as the scanner."""
    out = run_tool(
        ["storescu", "-aet", ae, "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)]
    )
    assert out.returncode == 0, out.stdout + out.stderr


def uids_in(directory: Path) -> list[str]:
    """SOP Instance UIDs of the files storescp wrote (duplicates counted)."""
    if not directory.exists():
        return []
    return [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in sorted(directory.iterdir())
        if p.is_file()
    ]


def uid_of(path: Path, keyword: str = "SOPInstanceUID") -> str:
    """One attribute of a file."""
    return str(getattr(pydicom.dcmread(path, stop_before_pixels=True), keyword))


class Setup:
    """A node with a routes dir, the scanner peer and one storescp destination."""

    def __init__(self, tmp: Path, *, config: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.routes = tmp / "routes"
        self.routes.mkdir()
        self.received = tmp / "pacs-in"
        self.pacs: ServerProcess = storescp(self.received, ae_title="PACS")
        self.node = CtnodeProcess(
            tmp / "node",
            config={"queue": FAST_QUEUE, "routes_dir": str(self.routes), **(config or {})},
            peers={"scanner": scanner_peer(), "scanner2": scanner_peer("SCANNER2")},
        )
        self.node.write_peer("pacs", dest_peer("PACS", self.pacs.port))

    def route(self, name: str, **spec: Any) -> Path:
        """Write routes/NAME.yaml."""
        return write_yaml(self.routes / f"{name}.yaml", spec)

    def studies(self) -> list[dict[str, Any]]:
        """`ctnode studies --json`."""
        out = self.node.cli("studies", "--json")
        assert out.returncode == 0, out.stderr
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """Started storescp; the node is started by the test (after writing its routes)."""
    s = Setup(tmp_path)
    s.pacs.start()
    try:
        yield s
    finally:
        s.node.kill() if s.node.proc and s.node.proc.poll() is None else None
        s.pacs.stop()


def test_study_trigger_forwards_once_stable_then_a_late_instance_alone(
    setup: Setup, tmp_path: Path
) -> None:
    """A study from SCANNER reaches storescp once it has been quiet for stable_after, in one
    push job whose `jobs show --json` names the route; `studies --json` shows it delivered; an
    instance arriving after the forward is sent alone, and nothing is sent twice."""
    setup.route(
        "ct-to-pacs",
        match={"calling_ae": ["SCANNER"], "modality": ["CT"]},
        trigger="study",
        stable_after=1.5,
        to=["pacs"],
    )
    ids = new_ids()
    files = write_series(tmp_path / "in", 6, ids=ids)
    late = write_series(tmp_path / "late", 1, ids=ids)
    with setup.node as node:
        send(node, files[:3])
        time.sleep(0.8)
        send(node, files[3:])
        time.sleep(0.8)  # not yet stable: the second half restarted the clock
        assert uids_in(setup.received) == []
        wait_until(lambda: len(uids_in(setup.received)) == 6, 20, message="6 at storescp")
        assert node.log is not None
        submitted = node.log.wait_for("route.forward_submitted", route="ct-to-pacs")
        assert submitted["instances"] == 6 and submitted["study_instance_uid"] == ids.study
        assert "patient" not in json.dumps(submitted).lower()
        job = job_json(node, submitted["job_id"])
        assert job["route"] == "ct-to-pacs" and job["kind"] == "push"
        (study,) = wait_until(
            lambda: [s for s in setup.studies() if s["routes"][0]["state"] == "delivered"] or None,
            10,
        )
        assert study["routes"][0]["delivered"] == 6 and study["routes"][0]["destination"] == "pacs"
        send(node, late)
        wait_until(lambda: len(uids_in(setup.received)) == 7, 20, message="late instance")
        jobs = node.log.named("route.forward_submitted")
        assert [j["instances"] for j in jobs] == [6, 1]
        assert sorted(uids_in(setup.received)) == sorted(uid_of(f) for f in files + late)
        listed = json.loads(node.cli("routes", "list", "--json").stdout)
        (route,) = listed
        assert route["name"] == "ct-to-pacs" and route["trigger"] == "study"
        wait_until(lambda: json.loads(node.cli("routes", "list", "--json").stdout)[0]
                   ["counters"]["forwarded"] == 7, 10)
