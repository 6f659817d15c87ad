"""ctnode as Query/Retrieve SCP with pynetdicom as the SCU: C-CANCEL in the middle of a C-MOVE
(pending counts, then 0xFE00), and C-GET proposing only uncompressed syntaxes for an instance
stored compressed (decompressed delivery, pixel-equal), and a C-MOVE of a study one of whose
stored files is gone (before the move or while it is being sent): 0xB000 naming that one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ctnode.daemon import Runtime
from tests.conformance.matrix_helpers import make_sample
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.procs import free_port, run_tool
from tests.helpers.qrdata import make_study

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Runtime, int]]:
    """A node with a pynetdicom SCU peer (find, move, get) and a slow pynetdicom destination."""
    dest_port = free_port()
    write_peers(
        tmp_path,
        {
            "storer": {
                "ae_title": "STORESCU",
                "host": "127.0.0.1",
                "port": 104,
                "accept": ["store"],
            },
            "viewer": {
                "ae_title": "VIEWER",
                "host": "127.0.0.1",
                "port": 104,
                "accept": ["find", "move", "get"],
            },
            "slow": {"ae_title": "SLOWSCP", "host": "127.0.0.1", "port": dest_port},
        },
    )
    with running_node(make_settings(tmp_path, f"sqlite:///{tmp_path / 'ctnode.db'}")) as runtime:
        yield runtime, dest_port


def _store(runtime: Runtime, files: list[Path], *options: str) -> None:
    done = run_tool(
        ["storescu", *options, "-aet", "STORESCU", "-aec", "CTNODE"]
        + ["127.0.0.1", str(runtime.server.port)]
        + [str(p) for p in files]
    )
    assert done.returncode == 0, done.stderr


def _identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def test_cancel_in_the_middle_of_a_move(node: tuple[Runtime, int], tmp_path: Path) -> None:
    """C-CANCEL after the first pending response: the move stops with 0xFE00 and counts, and
    fewer instances than the study holds reach the destination."""
    runtime, dest_port = node
    study = make_study(
        tmp_path / "files", patient_id="C1", patient_name="C^X", study_date="20260101",
        series_sizes=(20,),
    )  # fmt: skip
    _store(runtime, study.files)
    received: list[str] = []

    def slow_store(event: Any) -> int:
        time.sleep(0.1)
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    dest = AE(ae_title="SLOWSCP")
    dest.add_supported_context(CTImageStorage, [EXPLICIT, IMPLICIT])
    server = dest.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_store)]
    )
    try:
        scu = AE(ae_title="VIEWER")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = scu.associate("127.0.0.1", runtime.server.port, ae_title="CTNODE")
        assert assoc.is_established
        statuses: list[tuple[int, int | None]] = []
        cancelled = threading.Event()
        responses = assoc.send_c_move(
            _identifier(study.uid), "SLOWSCP", StudyRootQueryRetrieveInformationModelMove
        )
        for rsp_status, _ in responses:
            code = int(rsp_status.Status)
            statuses.append((code, rsp_status.get("NumberOfCompletedSuboperations")))
            if code == 0xFF00 and not cancelled.is_set():
                assoc.send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelMove)
                cancelled.set()
        assoc.release()
    finally:
        server.shutdown()
    assert statuses[0][0] == 0xFF00
    final_code, completed = statuses[-1]
    assert final_code == 0xFE00, statuses
    assert completed is not None and completed < 20
    assert len(received) < 20


def test_get_with_only_uncompressed_syntaxes_gets_decompressed_pixels(
    node: tuple[Runtime, int], tmp_path: Path
) -> None:
    """An instance stored in RLE, a C-GET proposing CT storage in explicit/implicit little
    endian only: it arrives decompressed, with the same pixels."""
    runtime, _ = node
    sample = make_sample(tmp_path / "work", "rle")
    _store(runtime, [sample.path], "-xr")  # propose RLE: stored as is
    original = pydicom.dcmread(sample.path)
    got: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return 0x0000

    scu = AE(ae_title="VIEWER")
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    scu.add_requested_context(CTImageStorage, [EXPLICIT, IMPLICIT])
    assoc = scu.associate(
        "127.0.0.1",
        runtime.server.port,
        ae_title="CTNODE",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    codes = [
        int(s.Status)
        for s, _ in assoc.send_c_get(
            _identifier(str(original.StudyInstanceUID)), StudyRootQueryRetrieveInformationModelGet
        )
    ]
    assoc.release()
    assert codes[-1] == 0x0000, [hex(c) for c in codes]
    assert len(got) == 1
    assert got[0].file_meta.TransferSyntaxUID in (EXPLICIT, IMPLICIT)
    assert np.array_equal(got[0].pixel_array, original.pixel_array)


def _move_collecting(
    runtime: Runtime, dest_port: int, study_uid: str
) -> tuple[list[tuple[int, Dataset | None]], list[str]]:
    """C-MOVE *study_uid* to a pynetdicom destination: every response and the UIDs received."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    dest = AE(ae_title="SLOWSCP")
    dest.add_supported_context(CTImageStorage, [EXPLICIT, IMPLICIT])
    server = dest.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        scu = AE(ae_title="VIEWER")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = scu.associate("127.0.0.1", runtime.server.port, ae_title="CTNODE")
        assert assoc.is_established
        responses = [
            (int(rsp.Status), identifier)
            for rsp, identifier in assoc.send_c_move(
                _identifier(study_uid), "SLOWSCP", StudyRootQueryRetrieveInformationModelMove
            )
        ]
        assert assoc.is_established, "the association was dropped without a final response"
        assoc.release()
    finally:
        server.shutdown()
    return responses, received


@pytest.mark.parametrize("when", ["before", "mid_stream"])
def test_move_with_a_stored_file_gone_fails_that_one_and_sends_the_others(
    node: tuple[Runtime, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A stored file removed before the move (found when opening it), or while the move runs
    (found while streaming it: the destination association is aborted and a new one carries
    the rest): final 0xB000, its UID alone in the Failed SOP Instance UID List, the others
    delivered."""
    from ctnode.scp import qr_retrieve

    runtime, dest_port = node
    study = make_study(
        tmp_path / "files", patient_id="G1", patient_name="G^X", study_date="20260101",
        series_sizes=(5,),
    )  # fmt: skip
    _store(runtime, study.files)
    uids = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                  for p in study.files)  # fmt: skip
    victim = uids[2]
    stored = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in runtime.settings.storage.store_dir.rglob("*.dcm")
    }
    if when == "before":
        stored[victim].unlink()
    else:
        dataset_of = qr_retrieve._dataset_of

        def removed_once_opened(item: Any, syntax: str) -> Any:
            data = dataset_of(item, syntax)  # opened and measured: a FileSegment
            if item.sop_instance_uid == victim:
                item.path.unlink()  # retention, between that and the streaming
            return data

        monkeypatch.setattr(qr_retrieve, "_dataset_of", removed_once_opened)
    responses, received = _move_collecting(runtime, dest_port, study.uid)
    final, identifier = responses[-1]
    assert final == 0xB000, [hex(c) for c, _ in responses]
    assert identifier is not None
    failed = identifier.FailedSOPInstanceUIDList
    assert ([failed] if isinstance(failed, str) else list(failed)) == [victim]
    assert sorted(received) == [u for u in uids if u != victim]
