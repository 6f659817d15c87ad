"""Routing end to end: ``storescu`` as the scanner (calling AE SCANNER) → ``ctnode run`` →
DCMTK ``storescp`` and Orthanc (with storage commitment), driven only by route files; DCMTK
``dcmqrscp`` as the PACS a move job retrieves from (``include_retrieved``)."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.helpers.dcmqrscp import dcmqrscp
from tests.helpers.dicomgen import Ids, new_ids, write_series
from tests.helpers.jobs import job_json
from tests.helpers.orthanc import Orthanc
from tests.helpers.peerfiles import commit_peer as dest_peer
from tests.helpers.procs import (
    CtnodeProcess,
    ServerProcess,
    free_port,
    run_tool,
    storescp,
    write_yaml,
)
from tests.helpers.qrdata import make_study, peer
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


@contextlib.contextmanager
def started(tmp_path: Path, config: dict[str, Any] | None = None) -> Iterator[Setup]:
    """A Setup whose storescp runs; the node is started by the test (after its routes)."""
    s = Setup(tmp_path, config=config)
    s.pacs.start()
    try:
        yield s
    finally:
        s.node.kill() if s.node.proc and s.node.proc.poll() is None else None
        s.pacs.stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """Started storescp; the node is started by the test (after writing its routes)."""
    with started(tmp_path) as s:
        yield s


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
            lambda: [s for s in setup.studies() if s["routes"][0]["state"] == "delivered"],
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
        wait_until(
            lambda: (
                json.loads(node.cli("routes", "list", "--json").stdout)[0]["counters"]["forwarded"]
                == 7
            ),
            10,
        )
        # replay while the node runs: everything was delivered, nothing is added
        replayed = node.cli("routes", "replay", "ct-to-pacs", "--study", ids.study, "--json")
        assert replayed.returncode == 0, replayed.stderr
        outcome = json.loads(replayed.stdout)
        assert (outcome["examined"], outcome["added"], outcome["skipped"]) == (7, 0, 7)


def test_commit_with_orthanc_then_retention_frees_the_disk(tmp_path: Path) -> None:
    """`commit: true` to Orthanc (a real Storage Commitment SCP) plus storescp without
    commitment: the study reaches both; Orthanc's report marks it committed in `studies --json`
    and, with delete_after_commit and orthanc in commitment_peers, the study leaves the disk
    only once storescp has it too."""
    routes = tmp_path / "routes"
    received = tmp_path / "pacs-in"
    node = CtnodeProcess(
        tmp_path / "node",
        config={
            "queue": FAST_QUEUE,
            "routes_dir": str(routes),
            "storage": {"delete_after_commit": True, "commitment_peers": ["orthanc"]},
        },
        peers={"scanner": scanner_peer()},
    )
    write_yaml(
        routes / "to-orthanc.yaml",
        {
            "match": {"calling_ae": ["SCANNER"]},
            "stable_after": 1,
            "to": ["orthanc"],
            "commit": True,
        },
    )
    write_yaml(routes / "to-pacs.yaml", {"stable_after": 1, "to": ["pacs"]})
    files = write_series(tmp_path / "in", 4)
    study = uid_of(files[0], "StudyInstanceUID")
    with (
        storescp(received, ae_title="PACS") as pacs,
        Orthanc(
            modalities={"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node.port}}
        ) as orthanc,
    ):
        node.write_peer("orthanc", dest_peer("ORTHANC", orthanc.dicom_port, commit_linger=0))
        node.write_peer("pacs", dest_peer("PACS", pacs.port))
        with node:
            send(node, files)
            orthanc.wait_for(lambda o: {uid_of(f) for f in files} <= o.sop_instance_uids())
            wait_until(lambda: len(uids_in(received)) == 4, 20, message="4 at storescp")
            assert node.log is not None
            node.log.wait_for("commitment.retention", timeout=40, peer="orthanc")
            wait_until(
                lambda: not list((node.data_dir / "store").rglob("*.dcm")), 20, message="freed"
            )
            out = json.loads(node.cli("studies", "--json").stdout)
            assert [s for s in out if s["study_instance_uid"] == study] == []
            commit_jobs = node.log.named("commit.submitted")
            assert commit_jobs
            job = job_json(node, commit_jobs[0]["commit_job"])
            assert job["kind"] == "commit" and job["route"] == "to-orthanc"
            assert job["state"] == "succeeded"
            listed = {r["name"]: r for r in json.loads(node.cli("routes", "list", "--json").stdout)}
            assert listed["to-orthanc"]["counters"]["forwarded"] == 4
            assert listed["to-pacs"]["counters"]["forwarded"] == 4


def test_instance_and_series_triggers_and_two_scanners(setup: Setup, tmp_path: Path) -> None:
    """SCANNER's CT goes by series (each series once stable); SCANNER2's instances go as they
    arrive, gathered into one association; neither route takes the other scanner's data."""
    setup.route(
        "ct-series",
        match={"calling_ae": ["SCANNER"]},
        trigger="series",
        stable_after=1,
        to=["pacs"],
    )
    setup.route("fast", match={"calling_ae": ["SCANNER2"]}, trigger="instance", to=["pacs"])
    ids = new_ids()
    first = write_series(tmp_path / "s1", 3, ids=ids)
    second = write_series(tmp_path / "s2", 2, ids=Ids(ids.study, new_ids().series))
    other = write_series(tmp_path / "o", 5)
    with setup.node as node:
        send(node, first)
        send(node, second)
        send(node, other, ae="SCANNER2")
        wait_until(lambda: len(uids_in(setup.received)) == 10, 30, message="10 at storescp")
        assert node.log is not None
        submitted = node.log.named("route.forward_submitted")
        by_route: dict[str, list[int]] = {}
        for event in submitted:
            by_route.setdefault(event["route"], []).append(event["instances"])
        assert sorted(by_route["ct-series"]) == [2, 3]
        assert by_route["fast"] == [5]  # one association for the 5 instances
        assert len(set(uids_in(setup.received))) == 10


def test_no_forward_back_to_the_sender(tmp_path: Path) -> None:
    """A route to [scanner, pacs] never sends an instance back to the scanner it came from,
    but sends what another modality sent to the scanner; `routes test` says so."""
    routes = tmp_path / "routes"
    to_scanner = tmp_path / "scanner-in"
    received = tmp_path / "pacs-in"
    with (
        storescp(to_scanner, ae_title="SCANNER") as scanner,
        storescp(received, ae_title="PACS") as pacs,
    ):
        node = CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE, "routes_dir": str(routes)},
            peers={
                "scanner": {**dest_peer("SCANNER", scanner.port), "accept": ["echo", "store"]},
                "modality": scanner_peer("MODALITY"),
                "pacs": dest_peer("PACS", pacs.port),
            },
        )
        write_yaml(routes / "everywhere.yaml", {"trigger": "instance", "to": ["scanner", "pacs"]})
        mine = write_series(tmp_path / "a", 2)
        theirs = write_series(tmp_path / "b", 1)
        with node:
            send(node, mine, ae="SCANNER")
            send(node, theirs, ae="MODALITY")
            wait_until(lambda: len(uids_in(received)) == 3, 20, message="3 at pacs")
            wait_until(lambda: len(uids_in(to_scanner)) == 1, 20, message="1 at scanner")
            time.sleep(3)
            assert uids_in(to_scanner) == [uid_of(theirs[0])]
            out = node.cli("routes", "test", str(mine[0]), "--calling-ae", "SCANNER")
            assert out.returncode == 0, out.stderr
            assert "not back to its sender scanner" in out.stdout


def test_sighup_adds_a_route_and_refuses_an_invalid_set(setup: Setup, tmp_path: Path) -> None:
    """With no route nothing is forwarded; SIGHUP after writing a route makes new arrivals
    routed; an invalid route set on the next SIGHUP is refused as a whole (config.reload_failed
    names the file and key) and the old set keeps routing; `config check` exits 2 naming it."""
    with setup.node as node:
        assert node.log is not None
        first = write_series(tmp_path / "a", 2)
        send(node, first)
        setup.route("all", trigger="instance", to=["pacs"])
        node.signal(signal.SIGHUP)
        node.log.wait_for("route.reloaded", routes=1)
        second = write_series(tmp_path / "b", 2)
        send(node, second)
        wait_until(lambda: len(uids_in(setup.received)) == 2, 20, message="2 at storescp")
        setup.route("bad", to=["nowhere"], match={"tags": {"NoSuchKeyword": "*"}})
        node.signal(signal.SIGHUP)
        failed = node.log.wait_for("config.reload_failed")
        problems = "\n".join(failed["problems"])
        assert "bad.yaml: to.0: no peer named 'nowhere'" in problems
        assert "bad.yaml: match.tags.NoSuchKeyword: unknown DICOM keyword" in problems
        third = write_series(tmp_path / "c", 1)
        send(node, third)
        wait_until(lambda: len(uids_in(setup.received)) == 3, 20, message="old set still routes")
        check = node.cli("config", "check")
        assert check.returncode == 2 and "bad.yaml" in check.stdout + check.stderr
        assert set(uids_in(setup.received)) == {uid_of(f) for f in second + third}


def test_routes_test_explains_a_non_match(setup: Setup, tmp_path: Path) -> None:
    """`routes test` names the first failed condition and why; --json has the same verdicts."""
    setup.route(
        "chest",
        match={"modality": ["CT"], "tags": {"StudyDescription": "*CHEST*"}},
        to=["pacs"],
    )
    (path,) = write_series(tmp_path / "a", 1)
    out = setup.node.cli("routes", "test", str(path), "--calling-ae", "SCANNER")
    assert out.returncode == 0, out.stderr
    assert (
        "chest: no match: tags.StudyDescription: 'Test study' matches none of '*CHEST*'"
        in out.stdout
    )
    (entry,) = json.loads(setup.node.cli("routes", "test", str(path), "--json").stdout)
    (verdict,) = entry["routes"]
    assert verdict["matched"] is False and verdict["reason"].startswith("tags.StudyDescription")
    bad = setup.node.cli("routes", "test", str(tmp_path / "missing.dcm"))
    assert bad.returncode == 1 and "unreadable" in bad.stdout


def test_move_retrievals_are_routed_only_with_include_retrieved(tmp_path: Path) -> None:
    """dcmqrscp holds three studies; a route matches what DCMQRSCP sends (calling_ae). A study
    that arrives as the C-MOVE of ctnode's own move job is not forwarded (include_retrieved:
    false, the default) although the route would match it, as a plain C-STORE from DCMQRSCP
    shows; after SIGHUP with include_retrieved: true, the next move's study is forwarded."""
    node_port = free_port()
    studies = [
        make_study(tmp_path / "in", patient_id=f"PAT{n}", patient_name="Doe^Jo", study_date=day)
        for n, day in ((1, "20260101"), (2, "20260102"), (3, "20260103"))
    ]
    moved, stored, moved_later = studies
    received = tmp_path / "pacs-in"
    routes = tmp_path / "routes"
    spec: dict[str, Any] = {
        "match": {"calling_ae": ["DCMQRSCP"]},
        "trigger": "study",
        "stable_after": 0.5,
        "to": ["pacs"],
    }
    write_yaml(routes / "from-qr.yaml", spec)
    qr = dcmqrscp(tmp_path / "qr", hosts={"ctnode": ("CTNODE", "127.0.0.1", node_port)})
    with qr, storescp(received, ae_title="PACS") as pacs:
        stored_in_qr = run_tool(
            ["storescu", "-aec", "DCMQRSCP", "127.0.0.1", str(qr.port)]
            + [str(f) for s in studies for f in s.files]
        )
        assert stored_in_qr.returncode == 0, stored_in_qr.stdout + stored_in_qr.stderr
        node = CtnodeProcess(
            tmp_path / "node",
            port=node_port,
            config={"queue": FAST_QUEUE, "routes_dir": str(routes)},
            peers={"qr": peer("DCMQRSCP", qr.port), "pacs": dest_peer("PACS", pacs.port)},
        )
        with node:
            assert node.log is not None
            out = node.cli("move", "qr", "--study", moved.uid, "--wait", "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            assert json.loads(out.stdout)["items"]["succeeded"] == len(moved.files)
            # the control: the same route matches a plain C-STORE from DCMQRSCP
            send(node, stored.files, ae="DCMQRSCP")
            wanted = {uid_of(f) for f in stored.files}
            wait_until(lambda: set(uids_in(received)) == wanted, 20, message="control forwarded")
            time.sleep(1.0)  # past the moved study's stable_after too
            assert set(uids_in(received)) == wanted  # the retrieved study was not forwarded
            listed = json.loads(node.cli("routes", "list", "--json").stdout)
            assert listed[0]["counters"]["matched"] == len(stored.files)

            write_yaml(routes / "from-qr.yaml", {**spec, "include_retrieved": True})
            node.signal(signal.SIGHUP)
            node.log.wait_for("route.reloaded", routes=1)
            out = node.cli("move", "qr", "--study", moved_later.uid, "--wait", "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            wanted |= {uid_of(f) for f in moved_later.files}
            wait_until(lambda: set(uids_in(received)) == wanted, 20, message="retrieval routed")
            assert sorted(uids_in(received)) == sorted(wanted)  # each once
