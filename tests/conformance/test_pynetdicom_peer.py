"""pynetdicom as ctnode's peer in both directions, with negotiation DCMTK does not produce on
demand: SCP/SCU role selection (PS3.7 D.3.3.4), an asynchronous operations window (D.3.3.3),
user identity with a positive response requested (D.3.3.7) and a maximum PDU length of 0,
"no maximum" (PS3.8 D.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.sop_class import (
    CTImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from ctnode.config import NodeSettings
from ctnode.daemon import Runtime
from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ctnode.peers import load_peers
from ctnode.queue.jobs import JobKind
from ctnode.scu.association import params_for
from ctnode.scu.echo import ECHO_CONTEXTS, echo
from ctnode.scu.query_keys import build_keys, query_payload
from tests.conformance.matrix_helpers import (
    files_payload,
    find_instance,
    make_sample,
    submit,
)
from tests.helpers.dicomgen import dataset_bytes, encode_dataset, make_dataset
from tests.helpers.fake_commitment import FakeCommitmentSCP, report_dataset
from tests.helpers.fakeqr import FakeQRSCP
from tests.helpers.jobs import wait_job
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.procs import CtnodeProcess, free_port
from tests.helpers.qrdata import peer
from tests.helpers.scu import client_ae

INBOUND = ["echo", "store", "commitment_report"]


# ------------------------------------------------------------------ pynetdicom SCU into ctnode


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """One in-process ctnode SCP; MODALITY may echo, store and send commitment reports."""
    tmp = tmp_path_factory.mktemp("pynetdicom-in")
    write_peers(
        tmp,
        {"modality": {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": INBOUND}},
    )
    with running_node(make_settings(tmp, f"sqlite:///{tmp / 'ctnode.db'}")) as runtime:
        yield runtime


def _associate(runtime: Runtime, ae: AE, **kwargs: Any) -> Any:
    assoc = ae.associate("127.0.0.1", runtime.server.port, ae_title="CTNODE", **kwargs)
    assert assoc.is_established, "association not established"
    return assoc


def _ac_items(assoc: Any) -> list[Any]:
    """The user information sub-items of the A-ASSOCIATE-AC ctnode sent."""
    return list(assoc.acceptor.primitive.user_information)


def test_role_selection_commitment_scp_role_accepted(scp: Runtime) -> None:
    """PS3.7 D.3.3.4 / PS3.4 J.3.3: Storage Commitment proposed with the requestor in the SCP
    role only (how a PACS sends a report on a new association): ctnode accepts the context and
    the role; the N-EVENT-REPORT is answered (0x0110 processing failure: no such transaction)."""
    ae = client_ae()
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc = _associate(scp, ae, ext_neg=[role])
    try:
        (context,) = assoc.accepted_contexts
        assert context.as_scp and not context.as_scu
        report = _report(generate_uid())
        status, _ = assoc.send_n_event_report(
            report, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert int(status.Status) == 0x0110
    finally:
        assoc.release()


def _report(transaction_uid: str) -> Any:
    return report_dataset(transaction_uid, [(CTImageStorage, generate_uid())])


def test_role_selection_storage_both_roles_answers_scu_only(scp: Runtime) -> None:
    """PS3.7 D.3.3.4: CT Image Storage proposed with both roles: ctnode accepts the requestor
    as SCU only (it never plays Storage SCU inbound), and a C-STORE succeeds."""
    ae = client_ae()
    ae.add_requested_context(CTImageStorage, [EXPLICIT_VR_LE])
    role = build_role(CTImageStorage, scu_role=True, scp_role=True)
    assoc = _associate(scp, ae, ext_neg=[role])
    try:
        (context,) = assoc.accepted_contexts
        assert context.as_scu and not context.as_scp
        assert int(assoc.send_c_store(make_dataset()).Status) == 0x0000
    finally:
        assoc.release()


def test_role_selection_storage_scp_only_is_rejected(scp: Runtime) -> None:
    """PS3.7 D.3.3.4: CT Image Storage proposed with the requestor as SCP only (a C-GET
    client's sub-operation context): ctnode cannot be the Storage SCU, so that context is
    rejected (result 1, user rejection) while Verification on the same association is accepted."""
    ae = client_ae()
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [EXPLICIT_VR_LE])
    role = build_role(CTImageStorage, scu_role=False, scp_role=True)
    assoc = _associate(scp, ae, ext_neg=[role])
    try:
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
        (rejected,) = assoc.rejected_contexts
        assert rejected.abstract_syntax == CTImageStorage and rejected.result == 0x01
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_async_operations_window_not_negotiated(scp: Runtime) -> None:
    """PS3.7 D.3.3.3: an asynchronous operations window (5, 5) proposed: ctnode accepts the
    association without the item (window 1, 1: one outstanding operation) and serves C-ECHO."""
    ae = client_ae()
    ae.add_requested_context(Verification)
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    assoc = _associate(scp, ae, ext_neg=[window])
    try:
        assert not any(
            isinstance(i, AsynchronousOperationsWindowNegotiation) for i in _ac_items(assoc)
        )
        assert assoc.acceptor.asynchronous_operations == (1, 1)
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_user_identity_with_positive_response_requested_is_ignored(scp: Runtime) -> None:
    """PS3.7 D.3.3.7: user name and passcode with a positive response requested: ctnode does
    not support user identity, accepts the association and sends no User Identity response
    (the requestor decides whether to go on); a C-STORE then succeeds."""
    ae = client_ae()
    ae.add_requested_context(CTImageStorage, [EXPLICIT_VR_LE])
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"modality"
    identity.secondary_field = b"secret"
    identity.positive_response_requested = True
    assoc = _associate(scp, ae, ext_neg=[identity])
    try:
        assert not any(isinstance(i, UserIdentityNegotiation) for i in _ac_items(assoc))
        assert int(assoc.send_c_store(make_dataset()).Status) == 0x0000
    finally:
        assoc.release()


def test_requestor_max_pdu_zero(scp: Runtime) -> None:
    """PS3.8 D.1: a requestor announcing maximum PDU length 0 (no limit): ctnode accepts,
    announces its own maximum (262144), answers C-ECHO and stores a 128 KiB data set
    byte-identical (pynetdicom fragments it within ctnode's maximum)."""
    ae = client_ae()
    ae.maximum_pdu_size = 0
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [EXPLICIT_VR_LE])
    ds = make_dataset(size=256)
    assoc = _associate(scp, ae)
    try:
        assert assoc.acceptor.maximum_length == 262144
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert int(assoc.send_c_store(ds).Status) == 0x0000
    finally:
        assoc.release()
    stored = find_instance(scp.store.root, str(ds.SOPInstanceUID))
    assert dataset_bytes(stored) == encode_dataset(ds)


# ------------------------------------------------------------------ ctnode SCU into pynetdicom


@dataclass
class StoreSCP:
    """A pynetdicom Storage / Verification SCP announcing maximum PDU 0; keeps raw data sets."""

    port: int = field(default_factory=free_port)
    received: dict[str, bytes] = field(default_factory=dict)
    largest_pdu: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def start(self) -> StoreSCP:
        ae = AE(ae_title="PYSTORE")
        ae.maximum_pdu_size = 0
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_PDU_RECV, self._on_pdu)],
        )
        return self

    def _on_store(self, event: Any) -> int:
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = bytes(
                event.request.DataSet.getvalue()
            )
        return 0x0000

    def _on_pdu(self, event: Any) -> None:
        length = len(event.pdu.encode())
        with self._lock:
            self.largest_pdu = max(self.largest_pdu, length)


@dataclass
class Peers:
    """ctnode and its pynetdicom peers, all announcing maximum PDU 0."""

    node: CtnodeProcess
    store: StoreSCP
    commit: FakeCommitmentSCP
    qr: FakeQRSCP
    study: str
    work: Path


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """A running ctnode with three pynetdicom peers (storage, commitment, Q/R)."""
    base = tmp_path_factory.mktemp("pynetdicom-out")
    node_port = free_port()
    match = make_dataset()
    store = StoreSCP().start()
    commit = FakeCommitmentSCP(ae_title="PYCOMMIT")
    commit.ae.maximum_pdu_size = 0
    commit.target = ("127.0.0.1", node_port, "CTNODE")
    qr = FakeQRSCP([match], {}, ae_title="PYQR")
    qr.ae.maximum_pdu_size = 0
    fast = {"workers": 2, "poll_interval": 0.1, "lease_seconds": 6}
    fast["retry"] = {"max_attempts": 2, "initial_delay": 0.2, "multiplier": 1, "jitter": 0}
    try:
        with (
            commit,
            qr,
            CtnodeProcess(
                base / "node",
                port=node_port,
                config={"queue": fast},
                peers={
                    "pystore": peer("PYSTORE", store.port),
                    "pycommit": peer("PYCOMMIT", commit.port, accept=INBOUND),
                    "pyqr": peer("PYQR", qr.port),
                },
            ) as node,
        ):
            yield Peers(node, store, commit, qr, str(match.StudyInstanceUID), base)
    finally:
        store.server.shutdown()


def _run(peers: Peers, kind: JobKind, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    job = wait_job(peers.node, submit(peers.node, kind, name, payload), {"succeeded", "failed"})
    assert job["state"] == "succeeded", f"{job['last_error']} {job.get('result')}"
    return job


def test_echo_to_max_pdu_zero(peers: Peers) -> None:
    """PS3.8 D.1: ``ctnode echo`` to an acceptor announcing maximum PDU 0: C-ECHO succeeds."""
    target = load_peers(peers.node.peers_dir).get("pystore")
    assert echo(params_for(target, NodeSettings(ae_title="CTNODE"), ECHO_CONTEXTS)) >= 0


def test_push_to_max_pdu_zero(peers: Peers) -> None:
    """PS3.8 D.1: a push to an acceptor announcing maximum PDU 0 (no limit): the 128 KiB data
    set arrives byte-identical in PDUs no larger than ctnode's own maximum (262144)."""
    sample = make_sample(peers.work / "push", "explicit", size=256)
    _run(peers, JobKind.PUSH, "pystore", files_payload(sample.path))
    received = peers.store.received[sample.sop_instance]
    want = dataset_bytes(sample.path)
    assert received == want + (b"\x00" if len(want) % 2 else b"")
    assert 0 < peers.store.largest_pdu <= 262144 + 6


def test_commit_report_with_role_selection(peers: Peers) -> None:
    """PS3.4 J.3 and PS3.7 D.3.3.4: a commit job to a pynetdicom Storage Commitment SCP
    (maximum PDU 0): N-ACTION accepted, then the report arrives on a new association proposing
    the SCP role; ctnode accepts that role, answers the N-EVENT-REPORT 0x0000 and the job
    succeeds with the instance committed."""
    sample = make_sample(peers.work / "commit", "explicit")
    job = _run(peers, JobKind.COMMIT, "pycommit", files_payload(sample.path))
    (action,) = peers.commit.wait_actions(1)
    assert action.refs == [(sample.sop_class, sample.sop_instance)]
    assert peers.commit.reports == [(action.transaction_uid, 0x0000)]
    assert job["items"]["succeeded"] == 1


def test_query_to_max_pdu_zero(peers: Peers) -> None:
    """PS3.4 C.4.1 and PS3.8 D.1: a Study Root C-FIND to an acceptor announcing maximum PDU 0:
    the one match comes back."""
    level, keys = build_keys("STUDY", [f"StudyInstanceUID={peers.study}"])
    job = _run(peers, JobKind.QUERY, "pyqr", query_payload(level, keys, 10))
    assert [m["0020000D"]["Value"] for m in job["result"]["matches"]] == [[peers.study]]
    assert len(peers.qr.find_calls) == 1
