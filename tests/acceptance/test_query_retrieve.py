"""Query and retrieve end to end: `ctnode query` / `ctnode move` executed by `ctnode run`
against DCMTK dcmqrscp (default fork mode) with ctnode and a DCMTK storescp in its HostTable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.helpers.dcmqrscp import dcmqrscp
from tests.helpers.dicomgen import dataset_bytes
from tests.helpers.jobs import job_json, wait_job
from tests.helpers.procs import CtnodeProcess, ServerProcess, free_port, run_tool, storescp
from tests.helpers.qrdata import FAST_QUEUE, Study, make_study, peer
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow


@dataclass
class Env:
    """dcmqrscp holding three studies, a third-party storescp, and a running ctnode."""

    qr: ServerProcess
    node: CtnodeProcess
    scp_dir: Path
    a: Study  # PAT001, 2026-01-15, two series (3 + 2 instances)
    b: Study  # PAT002, 2026-02-10, one series of 2
    c: Study  # PAT003, 2025-12-20, one series of 1


def _store(qr: ServerProcess, files: list[Path]) -> None:
    sent = run_tool(["storescu", "-aec", "DCMQRSCP", "127.0.0.1", str(qr.port), *map(str, files)])
    assert sent.returncode == 0, sent.stdout + sent.stderr


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One dcmqrscp, storescp and ctnode for the module (tests use different studies)."""
    base = tmp_path_factory.mktemp("qr")
    node_port, scp_port = free_port(), free_port()
    a = make_study(
        base / "in",
        patient_id="PAT001",
        patient_name="Doe^Jane",
        study_date="20260115",
        series_sizes=(3, 2),
    )
    b = make_study(
        base / "in", patient_id="PAT002", patient_name="Roe^Richard", study_date="20260210"
    )
    c = make_study(
        base / "in",
        patient_id="PAT003",
        patient_name="Doe^John",
        study_date="20251220",
        series_sizes=(1,),
    )
    qr = dcmqrscp(
        base / "qr",
        hosts={
            "ctnode": ("CTNODE", "127.0.0.1", node_port),
            "movedest": ("STORESCP", "127.0.0.1", scp_port),
        },
    )
    scp = storescp(base / "scp", scp_port)
    node = CtnodeProcess(
        base / "node",
        port=node_port,
        config={"queue": FAST_QUEUE},
        peers={"qr": peer("DCMQRSCP", qr.port)},
    )
    with qr, scp:
        _store(qr, a.files + b.files + c.files)
        with node:
            yield Env(qr, node, base / "scp", a, b, c)


def _query_json(node: CtnodeProcess, *args: str) -> list[dict[str, Any]]:
    result = node.cli("query", "qr", *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    matches = json.loads(result.stdout)
    assert isinstance(matches, list)
    return matches


def _values(matches: list[dict[str, Any]], keyword: str) -> list[str]:
    out = []
    for match in matches:
        ds = Dataset.from_json(match)  # also validates the DICOM JSON
        out.append(str(ds.get(keyword, "")))
    return out


def _latest_job(node: CtnodeProcess, kind: str) -> dict[str, Any]:
    listed = json.loads(node.cli("jobs", "list", "--kind", kind, "--json").stdout)
    return job_json(node, listed[0]["id"])


def test_find_study_level(env: Env) -> None:
    """STUDY-level C-FIND with no matching keys returns all three studies as DICOM JSON that
    round-trips through Dataset.from_json, with the default return keys filled in; the same
    matches are stored with the job (`jobs show --json`), and the table shows them."""
    matches = _query_json(env.node)
    assert sorted(_values(matches, "StudyInstanceUID")) == sorted([env.a.uid, env.b.uid, env.c.uid])
    by_uid = {str(Dataset.from_json(m).StudyInstanceUID): Dataset.from_json(m) for m in matches}
    first = by_uid[env.a.uid]
    assert first.PatientID == "PAT001"
    assert str(first.PatientName) == "Doe^Jane"
    assert first.StudyDate == "20260115"
    assert first.QueryRetrieveLevel == "STUDY"
    job = _latest_job(env.node, "query")
    assert job["state"] == "succeeded"
    assert job["result"]["matches"] == matches
    assert job["result"]["count"] == 3 and job["result"]["truncated"] is False
    table = env.node.cli("query", "qr", "-k", f"StudyInstanceUID={env.b.uid}")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["StudyDate", "StudyTime", "PatientID"]
    assert len(lines) == 2 and "PAT002" in lines[1] and env.b.uid in lines[1]


def test_find_series_and_image_levels(env: Env) -> None:
    """SERIES level under a study lists its two series; IMAGE level under a series lists its
    instances (SOP Instance UIDs equal to the files stored)."""
    series = _query_json(env.node, "--level", "SERIES", "-k", f"StudyInstanceUID={env.a.uid}")
    assert sorted(_values(series, "SeriesInstanceUID")) == sorted(env.a.series)
    assert set(_values(series, "Modality")) == {"CT"}
    first_series = env.a.series[0]
    images = _query_json(
        env.node,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={env.a.uid}",
        "-k",
        f"0020,000E={first_series}",
    )
    expected = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in env.a.files_of(first_series)
    }
    assert set(_values(images, "SOPInstanceUID")) == expected
    assert len(images) == 3


def test_find_limit_cancels(env: Env) -> None:
    """`--limit 1` returns exactly one match of three: ctnode sent C-CANCEL, the job result
    says truncated, and the CLI says more exist."""
    result = env.node.cli("query", "qr", "--limit", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 1
    assert "--limit 1" in result.stderr
    job = _latest_job(env.node, "query")
    assert job["result"]["truncated"] is True and job["result"]["count"] == 1
    assert job["result"]["status"] in ("0xFE00", "0x0000")


def test_move_study_to_ctnode(env: Env) -> None:
    """`ctnode move qr --study A --wait --json`: the job succeeds, every instance of both
    series arrives through ctnode's receive path (job items, one per instance), progress shows
    the PACS's counts, and the stored data sets are byte-identical to the originals."""
    result = env.node.cli("move", "qr", "--study", env.a.uid, "--wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert job["items"] == {"total": 5, "succeeded": 5, "warning": 0, "failed": 0, "pending": 0}
    assert job["progress"]["completed"] == 5 and job["progress"]["arrived"] == 5
    assert job["result"]["completed"] == 5 and job["result"]["arrived"] == 5
    assert "arrival_mismatch" not in job["result"]
    listed = env.node.cli("instances", "--study", env.a.uid, "--json")
    rows = json.loads(listed.stdout)
    assert len(rows) == 5
    stored = {r["sop_instance_uid"]: env.node.data_dir / "store" / r["path"] for r in rows}
    for path in env.a.files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(path)


def test_move_to_third_party(env: Env) -> None:
    """`--dest STORESCP` moves study B to the storescp in dcmqrscp's HostTable: the job
    succeeds with the PACS's counts and records no arrivals at ctnode."""
    result = env.node.cli(
        "move",
        "qr",
        "-k",
        f"StudyInstanceUID={env.b.uid}",
        "--dest",
        "STORESCP",
        "--wait",
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout)
    assert job["state"] == "succeeded"
    assert job["result"]["to_self"] is False and job["result"]["completed"] == 2
    assert job["items"]["total"] == 0
    received = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in env.scp_dir.iterdir()
    }
    expected = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in env.b.files
    }
    assert expected <= received


def test_move_to_unknown_destination_fails_at_once(env: Env) -> None:
    """dcmqrscp answers 0xA801 for an AE not in its HostTable: the job fails on its first
    attempt, no retry, with a message that says what to configure on the PACS."""
    result = env.node.cli("move", "qr", "--study", env.c.uid, "--dest", "NOWHERE", "--wait")
    assert result.returncode == 1
    job = _latest_job(env.node, "move")
    assert job["state"] == "failed" and job["attempts"] == 1
    assert job["last_status"] == "0xA801"
    assert "does not know move destination 'NOWHERE'" in job["last_error"]
    assert "HostTable" in job["last_error"] and "DicomModalities" in job["last_error"]
    assert not any(e["event"] == "retry_scheduled" for e in job["events"])
    assert "HostTable" in result.stdout


def test_usage_errors(env: Env) -> None:
    """Bad keys and missing UIDs are one-line usage errors (exit 2), before any job exists."""
    # (the parsing itself is unit-tested in tests/unit/test_query_keys.py)
    cases = [
        (("query", "qr", "-k", "PatientNam=X"), "unknown DICOM keyword"),
        (("move", "qr", "-k", "PatientID=PAT001"), "by UID only"),
    ]
    for args, message in cases:
        result = env.node.cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_patient_data_never_in_logs(env: Env) -> None:
    """Patient names and IDs are in query output, never in the node's log lines (which name
    the matching keys, not their values)."""
    result = env.node.cli("query", "qr", "-k", "PatientName=Doe*", "-k", "PatientID=PAT00*")
    assert result.returncode == 0 and "PAT001" in result.stdout
    assert env.node.log is not None
    finished = env.node.log.wait_for("query.finished", matching_keys=["PatientName", "PatientID"])
    assert finished["matches"] == 2
    for line in env.node.log.lines:
        for secret in ("Doe^", "Roe^Richard", "PAT00"):
            assert secret not in line, line


def test_move_retried_until_dcmqrscp_is_started(tmp_path: Path) -> None:
    """dcmqrscp not running: the move's attempts fail with 'cannot connect' and are retried;
    once dcmqrscp is started on its port, the job succeeds and the study arrives."""
    node_port = free_port()
    study = make_study(
        tmp_path / "in", patient_id="PAT009", patient_name="Late^Larry", study_date="20260301"
    )
    qr = dcmqrscp(tmp_path / "qr", hosts={"ctnode": ("CTNODE", "127.0.0.1", node_port)})
    with qr:
        _store(qr, study.files)
    with CtnodeProcess(
        tmp_path / "node",
        port=node_port,
        config={"queue": FAST_QUEUE},
        peers={"qr": peer("DCMQRSCP", qr.port)},
    ) as node:
        job_id = int(node.cli("move", "qr", "--study", study.uid).stdout)
        job = wait_until(
            lambda: (j := job_json(node, job_id))["attempts"] >= 2 and j,
            30,
            interval=0.2,
            message=lambda: f"a second attempt: {job_json(node, job_id)}",
        )
        assert job["state"] in ("queued", "running")
        assert "cannot connect" in job["last_error"]
        with qr:
            job = wait_job(node, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert job["items"]["succeeded"] == 2
    assert any(e["event"] == "retry_scheduled" for e in job["events"])
