"""ctnode as Query/Retrieve SCP, driven by DCMTK's findscu, movescu and getscu (real clients).

One in-process node (SQLite) holds three studies stored through storescu (the real ingest
path): a Latin-1 patient (ISO_IR 100), a UTF-8 one (ISO_IR 192) and an ASCII one with two
series. Queries cover both information models, every level and each matching type of PS3.4
C.2.2.2; retrieves go to a DCMTK storescp (C-MOVE) and to getscu itself (C-GET).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from ctnode.daemon import Runtime
from tests.conformance.matrix_helpers import assert_same_dataset_bytes
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.procs import free_port, run_tool, started, storescp
from tests.helpers.qrdata import Study, make_study

PEER_BASE = {"host": "127.0.0.1", "port": 104}


@dataclass
class Node:
    """The node, its studies and a scratch directory."""

    runtime: Runtime
    studies: dict[str, Study]
    work: Path
    storescp_port: int

    @property
    def port(self) -> str:
        return str(self.runtime.server.port)


def _recode(study: Study, charset: str, name: str) -> None:
    """Rewrite a study's files with another character set and patient name."""
    for path in study.files:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.save_as(path, enforce_file_format=True)
    study.patient_name = name


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The node with its peers and three studies stored through storescu."""
    tmp = tmp_path_factory.mktemp("qr-scp")
    dest_port = free_port()
    write_peers(
        tmp,
        {
            "storer": {"ae_title": "STORESCU", **PEER_BASE, "accept": ["store"]},
            "finder": {"ae_title": "FINDSCU", **PEER_BASE, "accept": ["echo", "find"]},
            "mover": {
                "ae_title": "MOVESCU",
                **PEER_BASE,
                "accept": ["find", "move"],
                "move_destinations": ["archive"],
            },
            "getter": {"ae_title": "GETSCU", **PEER_BASE, "accept": ["get"]},
            "archive": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port},
            "other": {"ae_title": "OTHERSCP", "host": "127.0.0.1", "port": free_port()},
        },
    )
    files = tmp / "files"
    studies = {
        "latin": make_study(files, patient_id="QR001", patient_name="x", study_date="20250310"),
        "utf8": make_study(files, patient_id="QR002", patient_name="x", study_date="20250612"),
        "ascii": make_study(
            files,
            patient_id="QR003",
            patient_name="DOE^JOHN",
            study_date="20260101",
            series_sizes=(2, 3),
        ),
    }
    _recode(studies["latin"], "ISO_IR 100", "Müller^Jörg")
    _recode(studies["utf8"], "ISO_IR 192", "Müller^Anna")
    with running_node(make_settings(tmp, f"sqlite:///{tmp / 'ctnode.db'}")) as runtime:
        all_files = [str(p) for s in studies.values() for p in s.files]
        done = run_tool(
            [
                "storescu",
                "-aet",
                "STORESCU",
                "-aec",
                "CTNODE",
                "127.0.0.1",
                str(runtime.server.port),
                *all_files,
            ]
        )
        assert done.returncode == 0, done.stderr
        yield Node(runtime, studies, tmp / "work", dest_port)


def _find(node: Node, root: str, *keys: str, aet: str = "FINDSCU") -> list[pydicom.Dataset]:
    """Run findscu with -X; the extracted responses, in order."""
    out = node.work / f"find-{free_port()}"
    out.mkdir(parents=True)
    args = ["findscu", root, "-aet", aet, "-aec", "CTNODE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    done = run_tool([*args, "127.0.0.1", node.port])
    assert done.returncode == 0, done.stdout + done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _uids(responses: list[pydicom.Dataset], keyword: str = "StudyInstanceUID") -> set[str]:
    return {str(r.get(keyword)) for r in responses}


def test_study_level_wildcard_name_returns_keys_and_counts(node: Node) -> None:
    """Study Root, STUDY level, wildcard PatientName: the Latin-1 and UTF-8 studies match a
    query in UTF-8; each response carries the requested keys, counts and modalities."""
    responses = _find(
        node,
        "-S",
        "SpecificCharacterSet=ISO_IR 192",
        "QueryRetrieveLevel=STUDY",
        "PatientName=Müller*",
        "StudyInstanceUID",
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "SOPClassesInStudy",
        "StudyDescription",
        "PatientBirthDate",
        "InstitutionName",
    )
    studies = node.studies
    assert _uids(responses) == {studies["latin"].uid, studies["utf8"].uid}
    by_uid = {str(r.StudyInstanceUID): r for r in responses}
    latin = by_uid[studies["latin"].uid]
    assert str(latin.PatientName) == "Müller^Jörg"
    assert latin.PatientID == "QR001"
    assert latin.ModalitiesInStudy == "CT"
    assert int(latin.NumberOfStudyRelatedSeries) == 1
    assert int(latin.NumberOfStudyRelatedInstances) == 2
    assert latin.PatientBirthDate == "19700101"
    assert latin.InstitutionName == ""  # not indexed: zero-length
    assert str(by_uid[studies["utf8"].uid].PatientName) == "Müller^Anna"


def test_latin1_query_matches_both_charsets(node: Node) -> None:
    """A query in ISO_IR 100 matches the study stored in UTF-8 too (values compared decoded)."""
    responses = _find(
        node,
        "-S",
        "SpecificCharacterSet=ISO_IR 100",
        "QueryRetrieveLevel=STUDY",
        # findscu sends the argument's bytes as they are: Latin-1 bytes for ISO_IR 100
        os.fsdecode("PatientName=Müller^Anna".encode("latin-1")),
        "StudyInstanceUID",
    )
    assert _uids(responses) == {node.studies["utf8"].uid}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("PatientID=QR003", {"ascii"}, id="single value"),
        pytest.param("PatientID=", {"latin", "utf8", "ascii"}, id="universal"),
        pytest.param("PatientID=QR00?", {"latin", "utf8", "ascii"}, id="wildcard ?"),
        pytest.param("StudyDate=20250101-20251231", {"latin", "utf8"}, id="range DA"),
        pytest.param("StudyDate=20250601-", {"utf8", "ascii"}, id="open range DA"),
        pytest.param("StudyDate=-20250310", {"latin"}, id="open range DA upper"),
        pytest.param("StudyTime=1000-1030", {"latin", "utf8", "ascii"}, id="range TM"),
        pytest.param("StudyTime=1100-", set(), id="open range TM"),
        pytest.param("PatientName=doe^john", set(), id="PN case-sensitive by default"),
        pytest.param("ModalitiesInStudy=MR\\CT", {"latin", "utf8", "ascii"}, id="CS multi"),
    ],
)
def test_study_root_matching_types(node: Node, key: str, expected: set[str]) -> None:
    """PS3.4 C.2.2.2: single value, universal, wildcard, range (open and closed)."""
    responses = _find(node, "-S", "QueryRetrieveLevel=STUDY", key, "StudyInstanceUID")
    assert _uids(responses) == {node.studies[name].uid for name in expected}


def test_uid_list_matching(node: Node) -> None:
    """A list of UIDs matches each of them."""
    wanted = [node.studies["latin"].uid, node.studies["ascii"].uid]
    responses = _find(
        node, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(wanted)
    )
    assert _uids(responses) == set(wanted)


def test_series_and_image_levels(node: Node) -> None:
    """SERIES and IMAGE levels (hierarchical: the upper unique keys given)."""
    study = node.studies["ascii"]
    series = _find(
        node,
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study.uid}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        "SeriesNumber",
    )
    assert _uids(series, "SeriesInstanceUID") == set(study.series)
    counts = {str(r.SeriesInstanceUID): int(r.NumberOfSeriesRelatedInstances) for r in series}
    assert counts == {study.series[0]: 2, study.series[1]: 3}
    images = _find(
        node,
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study.uid}",
        f"SeriesInstanceUID={study.series[1]}",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "Rows",
        "Columns",
    )
    assert len(images) == 3
    assert {int(r.InstanceNumber) for r in images} == {1, 2, 3}
    assert all(r.Rows == 16 and r.Columns == 16 for r in images)


def test_series_level_without_study_uid_fails(node: Node) -> None:
    """Hierarchical query without the study's unique key: 0xA900, no matches."""
    out = run_tool(
        [
            "findscu", "-d", "-S", "-aet", "FINDSCU", "-aec", "CTNODE",
            "-k", "QueryRetrieveLevel=SERIES", "-k", "SeriesInstanceUID",
            "127.0.0.1", node.port,
        ]
    )  # fmt: skip
    assert "0xa900" in (out.stdout + out.stderr).lower()


def test_patient_root_every_level(node: Node) -> None:
    """Patient Root: PATIENT level with counts, then STUDY, SERIES and IMAGE under a patient."""
    patients = _find(
        node,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientID=QR003",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    assert len(patients) == 1
    patient = patients[0]
    assert str(patient.PatientName) == "DOE^JOHN"
    assert (
        int(patient.NumberOfPatientRelatedStudies),
        int(patient.NumberOfPatientRelatedSeries),
        int(patient.NumberOfPatientRelatedInstances),
    ) == (1, 2, 5)
    study = node.studies["ascii"]
    studies = _find(node, "-P", "QueryRetrieveLevel=STUDY", "PatientID=QR003", "StudyInstanceUID")
    assert _uids(studies) == {study.uid}
    series = _find(
        node,
        "-P",
        "QueryRetrieveLevel=SERIES",
        "PatientID=QR003",
        f"StudyInstanceUID={study.uid}",
        "SeriesInstanceUID",
    )
    assert len(series) == 2
    images = _find(
        node,
        "-P",
        "QueryRetrieveLevel=IMAGE",
        "PatientID=QR003",
        f"StudyInstanceUID={study.uid}",
        f"SeriesInstanceUID={study.series[0]}",
        "SOPInstanceUID",
    )
    assert len(images) == 2


def test_caller_without_find_is_refused(node: Node) -> None:
    """A configured peer whose accept list lacks find: association rejected (1/1/3)."""
    out = run_tool(
        [
            "findscu", "-S", "-aet", "GETSCU", "-aec", "CTNODE",
            "-k", "QueryRetrieveLevel=STUDY", "127.0.0.1", node.port,
        ]
    )  # fmt: skip
    assert out.returncode != 0
    assert "Association Rejected" in out.stdout + out.stderr


def _movescu(node: Node, dest: str, study_uid: str) -> str:
    done = run_tool(
        [
            "movescu", "-S", "-aet", "MOVESCU", "-aec", "CTNODE", "-aem", dest,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", node.port,
        ]
    )  # fmt: skip
    return done.stdout + done.stderr


def test_movescu_to_storescp_delivers_the_study(node: Node) -> None:
    """C-MOVE to a configured peer: every instance arrives at storescp, byte for byte."""
    study = node.studies["ascii"]
    received = node.work / "moved"
    with started(storescp(received, node.storescp_port)):
        output = _movescu(node, "STORESCP", study.uid)
    assert "0xa702" not in output.lower() and "0xb000" not in output.lower(), output
    arrived = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in received.iterdir()
    }
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in study.files}
    assert set(arrived) == set(sent)
    for uid, path in sent.items():
        assert_same_dataset_bytes(arrived[uid], path)


def test_move_to_unknown_destination_is_a801(node: Node) -> None:
    """C-MOVE to an AE that is no configured peer: 0xA801 (DCMTK: MoveDestinationUnknown)."""
    assert "movedestinationunknown" in _movescu(node, "NOSUCHAE", node.studies["ascii"].uid).lower()


def test_move_outside_move_destinations_is_a801(node: Node) -> None:
    """C-MOVE to a configured peer not in the caller's move_destinations: 0xA801."""
    assert "movedestinationunknown" in _movescu(node, "OTHERSCP", node.studies["ascii"].uid).lower()


def test_getscu_receives_the_study_byte_identical(node: Node) -> None:
    """C-GET: the instances arrive on getscu's association, byte-identical data sets."""
    study = node.studies["latin"]
    out = node.work / "got"
    out.mkdir(parents=True)
    done = run_tool(
        [
            "getscu", "-S", "-aet", "GETSCU", "-aec", "CTNODE", "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}",
            "127.0.0.1", node.port,
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    arrived = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()
    }
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in study.files}
    assert set(arrived) == set(sent)
    for uid, path in sent.items():
        assert_same_dataset_bytes(arrived[uid], path)
