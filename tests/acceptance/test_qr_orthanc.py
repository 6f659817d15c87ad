"""Query and retrieve against Orthanc (Debian package, unprivileged, spare loopback ports),
with ctnode registered in its DicomModalities."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from ctnode.dicom.contexts import MR_IMAGE
from tests.helpers.dicomgen import dataset_bytes
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess, free_port
from tests.helpers.qrdata import FAST_QUEUE, Study, make_study, peer

pytestmark = pytest.mark.slow


@dataclass
class Env:
    """Orthanc holding three studies, and a ctnode that knows it (and is known by it)."""

    orthanc: Orthanc
    node: CtnodeProcess
    a: Study  # Doe^Jane, 2026-01-15, three series (2 + 2 + 3 instances)
    b: Study  # Roe^Richard, 2026-02-10, one MR series
    c: Study  # Doe^John, 2025-12-20, one series


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Orthanc with the studies uploaded over REST, and a running ctnode."""
    base = tmp_path_factory.mktemp("orthanc-qr")
    a = make_study(
        base / "in",
        patient_id="PAT001",
        patient_name="Doe^Jane",
        study_date="20260115",
        series_sizes=(2, 2, 3),
    )
    b = make_study(
        base / "in",
        patient_id="PAT002",
        patient_name="Roe^Richard",
        study_date="20260210",
        sop_class=MR_IMAGE,
    )
    c = make_study(
        base / "in",
        patient_id="PAT003",
        patient_name="Doe^John",
        study_date="20251220",
        series_sizes=(1,),
    )
    node_port = free_port()
    modalities = {"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node_port}}
    with Orthanc(modalities=modalities) as orthanc:
        for path in a.files + b.files + c.files:
            orthanc.upload(path)
        with CtnodeProcess(
            base / "node",
            port=node_port,
            config={"queue": FAST_QUEUE},
            peers={"orthanc": peer("ORTHANC", orthanc.dicom_port)},
        ) as node:
            yield Env(orthanc, node, a, b, c)


def _query(env: Env, *args: str) -> list[Dataset]:
    result = env.node.cli("query", "orthanc", *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return [Dataset.from_json(m) for m in json.loads(result.stdout)]


def _studies(matches: list[Dataset]) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in matches}


def test_find_wildcards_and_date_ranges(env: Env) -> None:
    """Wildcards (`*`, `?`) and date ranges (closed, open-ended) reach Orthanc unchanged and
    select the right studies; the returned DICOM JSON round-trips and carries the default
    return keys (patient, date, modalities, counts)."""
    queries = {
        "name": ("-k", "PatientName=DOE*"),
        "id": ("-k", "PatientID=PAT00?"),
        "january": ("-k", "StudyDate=20260101-20260131"),
        "since": ("-k", "StudyDate=20260201-"),
        "until": ("-k", "StudyDate=-20251231"),
        "both": ("-k", "PatientName=Doe*", "-k", "StudyDate=20260101-"),
    }
    with ThreadPoolExecutor(3) as pool:  # each CLI run is mostly waiting
        futures = {name: pool.submit(_query, env, *args) for name, args in queries.items()}
        found = {name: future.result() for name, future in futures.items()}
    assert _studies(found["name"]) == {env.a.uid, env.c.uid}
    assert _studies(found["id"]) == {env.a.uid, env.b.uid, env.c.uid}
    assert _studies(found["january"]) == {env.a.uid}
    (study,) = found["january"]
    assert str(study.PatientName) == "Doe^Jane" and study.PatientID == "PAT001"
    assert study.ModalitiesInStudy == "CT"
    assert int(study.NumberOfStudyRelatedInstances) == 7
    assert int(study.NumberOfStudyRelatedSeries) == 3
    assert _studies(found["since"]) == {env.b.uid}
    assert _studies(found["until"]) == {env.c.uid}
    assert _studies(found["both"]) == {env.a.uid}


def test_find_series_and_table(env: Env) -> None:
    """SERIES level under a study, and the plain table with a user-added return key."""
    series = _query(env, "--level", "SERIES", "-k", f"StudyInstanceUID={env.a.uid}")
    assert {str(ds.SeriesInstanceUID) for ds in series} == set(env.a.series)
    table = env.node.cli("query", "orthanc", "-k", "PatientName=Roe*", "-k", "InstitutionName")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[-1] == "InstitutionName"
    assert len(lines) == 2 and "Roe^Richard" in lines[1] and "MR" in lines[1]


def _orthanc_files(orthanc: Orthanc) -> dict[str, bytes]:
    out = {}
    for orthanc_id in orthanc.request("GET", "/instances"):
        data = orthanc.instance_file(orthanc_id)
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = data
    return out


def test_move_study_with_several_series_byte_identical(env: Env, tmp_path: Path) -> None:
    """`ctnode move orthanc --study A --wait`: all seven instances of its three series arrive
    through ctnode's receive path, the job records each one, and every stored data set is
    byte-identical to the one Orthanc holds."""
    result = env.node.cli("move", "orthanc", "--study", env.a.uid, "--wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    job: dict[str, Any] = json.loads(result.stdout)
    assert job["state"] == "succeeded"
    assert job["items"]["succeeded"] == 7
    assert job["result"]["completed"] == 7 and job["result"]["arrived"] == 7
    assert "arrival_mismatch" not in job["result"]
    rows = json.loads(env.node.cli("instances", "--study", env.a.uid, "--json").stdout)
    assert {r["series_instance_uid"] for r in rows} == set(env.a.series)
    held = _orthanc_files(env.orthanc)
    assert len(rows) == 7
    for row in rows:
        copy = env.node.data_dir / "store" / row["path"]
        original = tmp_path / "orthanc.dcm"
        original.write_bytes(held[row["sop_instance_uid"]])
        assert dataset_bytes(copy) == dataset_bytes(original), row["sop_instance_uid"]
