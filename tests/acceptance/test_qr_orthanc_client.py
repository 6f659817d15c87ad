"""Orthanc as a real-world Q/R client of ctnode: it queries ctnode through its REST API
(``/modalities/ctnode/query``) and retrieves the answers into itself (C-MOVE to its own AE).

The other direction (ctnode querying Orthanc) is ``test_qr_orthanc.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ctnode.dicom.contexts import MR_IMAGE
from tests.helpers.dicomgen import dataset_bytes
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess, free_port, run_tool
from tests.helpers.qrdata import FAST_QUEUE, Study, make_study

pytestmark = pytest.mark.slow


@dataclass
class Env:
    """ctnode holding two studies, and an empty Orthanc that knows it (and is known by it)."""

    orthanc: Orthanc
    node: CtnodeProcess
    a: Study  # Client^Alice, two series (2 + 3 instances)
    b: Study  # Other^Bob, one MR series


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Orthanc, and a running ctnode with the studies stored through storescu."""
    base = tmp_path_factory.mktemp("orthanc-client")
    a = make_study(
        base / "in",
        patient_id="QRC001",
        patient_name="Client^Alice",
        study_date="20260301",
        series_sizes=(2, 3),
    )
    b = make_study(
        base / "in",
        patient_id="QRC002",
        patient_name="Other^Bob",
        study_date="20260302",
        sop_class=MR_IMAGE,
    )
    node_port = free_port()
    modalities = {"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node_port}}
    with Orthanc(modalities=modalities) as orthanc:
        peers = {
            "orthanc": {
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "accept": ["echo", "find", "move"],
                "move_destinations": ["orthanc"],
                "timeouts": {"connect": 3, "acse": 5, "dimse": 30, "network": 30},
            },
            "storer": {
                "ae_title": "STORESCU",
                "host": "127.0.0.1",
                "port": 104,
                "accept": ["store"],
            },
        }
        with CtnodeProcess(
            base / "node", port=node_port, config={"queue": FAST_QUEUE}, peers=peers
        ) as node:
            files = [str(p) for p in a.files + b.files]
            dcmtk = ["storescu", "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1"]
            done = run_tool([*dcmtk, str(node_port), *files])
            assert done.returncode == 0, done.stdout + done.stderr
            yield Env(orthanc, node, a, b)


def _query(orthanc: Orthanc, level: str, query: dict[str, str]) -> tuple[str, list[Any]]:
    """POST /modalities/ctnode/query; the query's id and its expanded answers."""
    created = orthanc.request("POST", "/modalities/ctnode/query", {"Level": level, "Query": query})
    query_id = str(created["ID"])
    answers = orthanc.request("GET", f"/queries/{query_id}/answers?expand&simplify")
    return query_id, list(answers)


def _held(orthanc: Orthanc) -> dict[str, bytes]:
    """Orthanc's stored files by SOP Instance UID."""
    out = {}
    for orthanc_id in orthanc.request("GET", "/instances"):
        data = orthanc.instance_file(orthanc_id)
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = data
    return out


def test_orthanc_finds_studies_with_a_wildcard_and_series_below(env: Env) -> None:
    """A STUDY query with ``PatientName=Client*`` answers study A only, with its patient,
    date and counts; Orthanc's SERIES query below that answer lists A's two series."""
    query_id, answers = _query(
        env.orthanc,
        "Study",
        {"PatientName": "Client*", "StudyDate": "", "NumberOfStudyRelatedInstances": ""},
    )
    assert [a["StudyInstanceUID"] for a in answers] == [env.a.uid]
    (study,) = answers
    assert study["PatientName"] == "Client^Alice" and study["PatientID"] == "QRC001"
    assert study["StudyDate"] == "20260301", study
    assert study["NumberOfStudyRelatedInstances"] == "5"
    _, nothing = _query(env.orthanc, "Study", {"PatientName": "Nobody*"})
    assert nothing == []
    below = env.orthanc.request("POST", f"/queries/{query_id}/answers/0/query-series", {})
    series = env.orthanc.request("GET", f"/queries/{below['ID']}/answers?expand&simplify")
    assert {s["SeriesInstanceUID"] for s in series} == set(env.a.series)


def test_orthanc_retrieves_a_study_byte_identical(env: Env) -> None:
    """``POST /queries/{id}/retrieve`` to Orthanc's own AE: ctnode C-MOVEs the five instances
    of study A to Orthanc, whose stored data sets are byte-identical to ctnode's files (and
    nothing of study B comes along)."""
    query_id, answers = _query(env.orthanc, "Study", {"PatientName": "Cli*"})
    assert len(answers) == 1
    env.orthanc.request(
        "POST",
        f"/queries/{query_id}/retrieve",
        {"TargetAet": "ORTHANC", "Synchronous": True},
    )
    held = _held(env.orthanc)
    stored = sorted((env.node.data_dir / "store" / env.a.uid).rglob("*.dcm"))
    assert len(stored) == 5
    assert set(held) == {p.stem for p in stored}
    scratch = env.node.workdir / "orthanc-copy.dcm"
    for path in stored:
        scratch.write_bytes(held[path.stem])
        assert dataset_bytes(scratch) == dataset_bytes(Path(path)), path.stem
