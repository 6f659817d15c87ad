"""ctnode as Storage Commitment SCP, with a pynetdicom scanner as the requestor (``ctnode run``
as a process): the report on a new association with role selection, on the same association,
the Failure Reasons (0x0112, 0x0119), malformed requests, a peer not allowed to ask, and a
requestor that is down when the report is due."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from ctnode.commitment_scp.intake import ActionAnswer, Intake
from ctnode.commitment_scp.report import ReportOperation
from ctnode.commitment_scp.transactions import (
    IncomingCommitments,
    IncomingReader,
    IncomingState,
)
from ctnode.config import NodeSettings, Settings, StorageSettings
from ctnode.daemon import recover_reports_periodically
from ctnode.db.engine import session_factory
from ctnode.db.models import IncomingCommitment
from ctnode.db.types import utcnow
from ctnode.dicom.commitment_messages import new_transaction_uid
from ctnode.dicom.contexts import (
    CT_IMAGE,
    EXPLICIT_VR_LE,
    MR_IMAGE,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
)
from ctnode.index import IndexReader
from ctnode.peers import Peer, load_peers
from ctnode.queue.jobs import JobKind, JobState
from ctnode.queue.repository import JobRepository
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset, new_ids, write_series
from tests.helpers.peerfiles import FAST_QUEUE
from tests.helpers.procs import CtnodeProcess, write_yaml
from tests.helpers.scanner import Scanner, action_dataset
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow


def _refs(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


@pytest.fixture
def node_and_scanner(tmp_path: Path) -> Iterator[tuple[CtnodeProcess, Scanner]]:
    """ctnode with the scanner as a peer (accept: [echo, store, commit]; no linger)."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE})
    scanner = Scanner(node.port)
    node.write_peer("scanner", scanner.peer_file(commit_linger=0))
    node.write_peer(
        "reporter",
        {
            "ae_title": "REPORTER",
            "host": "127.0.0.1",
            "port": 11112,
            "accept": ["echo", "store", "commitment_report"],
        },
    )
    with node:
        yield node, scanner
    scanner.stop()


def _commitments(node: CtnodeProcess, *args: str) -> Any:
    result = node.cli("commitments", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_report_on_a_new_association_with_failure_reasons(
    node_and_scanner: tuple[CtnodeProcess, Scanner], tmp_path: Path
) -> None:
    """Two stored instances are committed; one ctnode never received fails 0x0112, one named
    with another SOP class fails 0x0119; the report (Event Type 2) comes on a new association
    on which ctnode took the SCP role of the SOP class through role selection."""
    node, scanner = node_and_scanner
    paths = write_series(tmp_path / "study", 2)
    scanner.store(paths)
    scanner.listen()
    stored = _refs(paths)
    unknown = (CT_IMAGE, "1.2.826.0.1.3680043.10.999.1")
    conflict = (MR_IMAGE, stored[1][1])
    uid = new_transaction_uid()
    status, _ = scanner.request(uid, [stored[0], unknown, conflict])
    assert status == 0x0000
    report = scanner.wait_report(uid)
    assert report.event_type == 2
    assert not report.same_association
    assert report.requestor_roles == (False, True)
    assert report.committed == [stored[0][1]]
    assert report.failed == {unknown[1]: 0x0112, conflict[1]: 0x0119}
    # The transaction is recorded as reported.
    listed = wait_until(lambda: [t for t in _commitments(node) if t["state"] == "reported"], 10)
    assert listed[0]["transaction_uid"] == uid
    assert (listed[0]["instances"], listed[0]["committed"], listed[0]["failed"]) == (3, 1, 2)


def test_all_committed_is_event_type_1(
    node_and_scanner: tuple[CtnodeProcess, Scanner], tmp_path: Path
) -> None:
    """Every instance durable in ctnode: Event Type 1, no Failed SOP Sequence."""
    _node, scanner = node_and_scanner
    paths = write_series(tmp_path / "study", 3)
    scanner.store(paths)
    scanner.listen()
    uid = new_transaction_uid()
    assert scanner.request(uid, _refs(paths))[0] == 0x0000
    report = scanner.wait_report(uid)
    assert report.event_type == 1 and report.failed == {}
    assert sorted(report.committed) == sorted(r[1] for r in _refs(paths))


def test_malformed_requests_get_the_n_action_failure(
    node_and_scanner: tuple[CtnodeProcess, Scanner],
) -> None:
    """Action Type 2 → 0x0123; no Transaction UID → 0x0115; an empty Referenced SOP Sequence →
    0x0115; nothing is persisted for them."""
    node, scanner = node_and_scanner
    refs = [(CT_IMAGE, "1.2.3.4")]
    assert scanner.request(new_transaction_uid(), refs, action_type=2)[0] == 0x0123
    no_uid = action_dataset("", refs)
    del no_uid.TransactionUID
    assert scanner.request("", refs, dataset=no_uid)[0] == 0x0115
    assert scanner.request(new_transaction_uid(), [])[0] == 0x0115
    assert _commitments(node) == []


def test_a_peer_without_commit_is_refused(
    node_and_scanner: tuple[CtnodeProcess, Scanner],
) -> None:
    """A peer whose accept list lacks ``commit``: asking in the SCU role, its association is
    rejected (the only context it proposes is one it may not use); with the default roles
    (allowed for its reports) its N-ACTION is answered 0x0124."""
    node, _ = node_and_scanner
    reporter = Scanner(node.port, ae_title="REPORTER")
    refs = [(CT_IMAGE, "1.2.3.4")]
    assert reporter.request(new_transaction_uid(), refs, role=(True, False)) == (None, None)
    assert reporter.request(new_transaction_uid(), refs)[0] == 0x0124
    assert _commitments(node) == []


def test_requestor_down_at_report_time_gets_it_when_back(
    node_and_scanner: tuple[CtnodeProcess, Scanner], tmp_path: Path
) -> None:
    """The scanner's SCP is down when the report is due: the report job retries under the
    peer's policy (attempts counted) and the report arrives once the scanner listens again."""
    node, scanner = node_and_scanner
    paths = write_series(tmp_path / "study", 1)
    scanner.store(paths)
    uid = new_transaction_uid()
    assert scanner.request(uid, _refs(paths))[0] == 0x0000
    wait_until(
        lambda: [t for t in _commitments(node, "--state", "pending") if t["report_attempts"] >= 2],
        20,
        message="two failed report attempts",
    )
    scanner.listen()
    report = scanner.wait_report(uid)
    assert report.event_type == 1
    shown = node.cli("commitments", "show", uid, "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["state"] == "reported" and detail["report_attempts"] >= 3


def test_report_on_the_same_association(tmp_path: Path) -> None:
    """A requestor that keeps the N-ACTION's association open (within ``commit_linger``) gets
    the report on it; nothing is sent on a new association afterwards."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE})
    scanner = Scanner(node.port)
    node.write_peer("scanner", scanner.peer_file(commit_linger=2))
    with node:
        paths = write_series(tmp_path / "study", 2)
        scanner.store(paths)
        scanner.listen()
        try:
            uid = new_transaction_uid()
            status, _ = scanner.request(uid, _refs(paths), keep_open=10)
            assert status == 0x0000
            report = scanner.wait_report(uid, timeout=1)
            assert report.same_association and report.event_type == 1
            tx = wait_until(
                lambda: [t for t in _commitments(node) if t["state"] == "reported"], 10
            )[0]
            assert tx["transaction_uid"] == uid
            job = json.loads(node.cli("jobs", "show", str(tx["report_job"]), "--json").stdout)
            wait_until(
                lambda: (
                    json.loads(node.cli("jobs", "show", str(tx["report_job"]), "--json").stdout)[
                        "state"
                    ]
                    == "succeeded"
                ),
                10,
            )
            assert job["kind"] == "commit_report"
            assert len(scanner.reports) == 1  # not sent again on a new association
        finally:
            scanner.stop()


# -- in process, on SQLite and PostgreSQL: the intake, its recovery, report jobs, node pinning --

NODE = "node-a"
ACTION_FIELDS = {
    "RequestedSOPClassUID": STORAGE_COMMITMENT_PUSH,
    "RequestedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_INSTANCE,
    "ActionTypeID": 1,
}


class _Clock:
    """A clock the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def _intake(
    tmp: Path, engine: Engine, *, shared: bool = False, jobs: JobRepository | None = None
) -> tuple[Intake, Peer, _Clock]:
    settings = Settings(
        node={"ae_title": "CTNODE", "name": NODE},
        storage={"data_dir": str(tmp / "data"), "min_free_bytes": 0, "shared": shared},
        database={"url": engine.url.render_as_string(hide_password=False)},
        peers_dir=str(tmp / "peers"),
    )
    write_yaml(
        tmp / "peers" / "scanner.yaml",
        {"ae_title": "SCANNER", "host": "127.0.0.1", "port": 1, "accept": ["commit"]},
    )
    peer = load_peers(tmp / "peers", resolve=False).get("scanner")
    clock = _Clock()
    incoming = IncomingCommitments(session_factory(engine), clock=clock)
    return Intake(settings, incoming, jobs or JobRepository(engine)), peer, clock


def _ask(intake: Intake, peer: Peer, uid: str, refs: list[tuple[str, str]]) -> ActionAnswer:
    data = encode_dataset(action_dataset(uid, refs))
    return intake.handle(
        peer,
        {"calling_ae": "SCANNER", "peer_address": "127.0.0.1"},
        dict(ACTION_FIELDS),
        data,
        EXPLICIT_VR_LE,
        same_association=False,
    )


class _FailingSubmit(JobRepository):
    """A job repository whose next submit fails as a database error would."""

    fail = 1

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise OperationalError("INSERT INTO jobs", {}, Exception("connection lost"))
        return super().submit(*args, **kwargs)


def test_a_persisted_request_is_answered_success_when_its_job_cannot_be_queued(
    tmp_path: Path, engine: Engine
) -> None:
    """The report job's submission fails after the transaction was committed: the N-ACTION is
    answered 0x0000 (not 0x0213), the failure logged; the periodic recovery of the daemon
    queues the report job (not before the transaction is a few seconds old)."""
    jobs = _FailingSubmit(engine)
    intake, peer, clock = _intake(tmp_path, engine, jobs=jobs)
    uid = new_transaction_uid()
    with capture_logs() as logs:
        answer = _ask(intake, peer, uid, [(CT_IMAGE, "1.2.3.4.1")])
    assert answer.status == 0x0000, answer
    assert any(e["event"] == "scp.commit.report_not_queued" for e in logs)
    tx = intake.transactions.get(uid)
    assert tx is not None and tx.state.value == "pending" and tx.report_job_id is None

    # The daemon's periodic pass: too young at first, queued once a few seconds old.
    runtime = SimpleNamespace(intake=intake, peers=lambda: SimpleNamespace(peers={"scanner": peer}))

    async def passes(count: int) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            recover_reports_periodically(runtime, stop, interval=0.01)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.01 * count + 0.2)
        stop.set()
        await task

    asyncio.run(passes(2))
    assert intake.transactions.get(uid).report_job_id is None  # type: ignore[union-attr]
    clock.offset = timedelta(seconds=60)
    asyncio.run(passes(2))
    tx = intake.transactions.get(uid)
    assert tx is not None and tx.report_job_id is not None
    job = jobs.get(tx.report_job_id)
    assert job.kind is JobKind.COMMIT_REPORT and job.payload["transaction_uid"] == uid
    assert job.node_name == NODE  # storage not shared: pinned to this node


def test_a_report_job_that_ended_without_the_report_shows_the_transaction_failed(
    tmp_path: Path, engine: Engine
) -> None:
    """A report job ended failed by the worker (a PERMANENT outcome, a crash, out of attempts)
    or cancelled: the transaction reads ``failed`` (get, list, filter, counts) with the job's
    error; the recovery stores it; ``jobs retry`` makes it pending again."""
    intake, peer, _ = _intake(tmp_path, engine)
    repo = intake.jobs
    for uid in (new_transaction_uid(), new_transaction_uid()):
        assert _ask(intake, peer, uid, [(CT_IMAGE, "1.2.3.4.1")]).status == 0
    claimed = repo.claim("worker", NODE, kinds=[JobKind.COMMIT_REPORT])
    other = repo.claim("worker", NODE, kinds=[JobKind.COMMIT_REPORT])
    assert claimed is not None and other is not None
    failed_uid = claimed.payload["transaction_uid"]
    cancelled_uid = other.payload["transaction_uid"]
    failed_job = claimed.id
    repo.finish(claimed.id, "worker", JobState.FAILED, error="peer refused permanently")
    repo.finish(other.id, "worker", JobState.CANCELLED, error="cancelled by user")

    reader = IncomingReader(session_factory(engine))
    failed = reader.get(failed_uid)
    assert failed is not None and failed.state is IncomingState.FAILED
    assert failed.last_error == "peer refused permanently"
    assert reader.get(cancelled_uid).state is IncomingState.FAILED  # type: ignore[union-attr]
    assert {t.transaction_uid for t in reader.transactions(state="failed")} == {
        failed_uid,
        cancelled_uid,
    }
    assert reader.transactions(state="pending") == []
    assert reader.counts()["failed"] == 2

    # The recovery records it (the stored state), once.
    assert intake.recover(lambda _name: peer) == 0
    with session_factory(engine)() as session:
        stored = {r.transaction_uid: r.state for r in session.scalars(select(IncomingCommitment))}
    assert stored == {failed_uid: "failed", cancelled_uid: "failed"}
    assert intake.transactions.record_abandoned() == 0

    # ctnode jobs retry: the report is due again, the transaction pending.
    repo.retry(failed_job)
    assert reader.get(failed_uid).state is IncomingState.PENDING  # type: ignore[union-attr]
    assert reader.get(cancelled_uid).state is IncomingState.FAILED  # type: ignore[union-attr]


def test_report_jobs_and_held_instances_are_pinned_to_the_node_with_the_files(
    tmp_path: Path, engine: Engine
) -> None:
    """storage.shared false: the report job runs only on the node that took the N-ACTION, and
    only its store counts (another node's copy is not held here, and not pushed upstream from
    here); shared: any node."""
    intake, peer, _ = _intake(tmp_path / "a", engine)
    uid = new_transaction_uid()
    assert _ask(intake, peer, uid, [(CT_IMAGE, "1.2.3.4.1")]).status == 0
    tx = intake.transactions.get(uid)
    assert tx is not None and tx.report_job_id is not None
    assert intake.jobs.get(tx.report_job_id).node_name == NODE
    assert intake.jobs.claim("other", "node-b", kinds=[JobKind.COMMIT_REPORT]) is None

    shared, peer_s, _ = _intake(tmp_path / "s", engine, shared=True)
    uid_s = new_transaction_uid()
    assert _ask(shared, peer_s, uid_s, [(CT_IMAGE, "1.2.3.4.2")]).status == 0
    tx_s = shared.transactions.get(uid_s)
    assert tx_s is not None and shared.jobs.get(tx_s.report_job_id).node_name is None  # type: ignore[arg-type]

    # An instance stored by node-b only.
    store = Store(
        StorageSettings(data_dir=tmp_path / "b", min_free_bytes=0),  # type: ignore[arg-type]
        session_factory(engine),
        "node-b",
    )
    store.prepare()
    ds = make_dataset(CT_IMAGE, new_ids(), number=1)
    reception = store.receive(
        StoreRequest(ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SCANNER", "1", False)
    )
    reception.write(memoryview(encode_dataset(ds)))
    assert reception.complete().outcome == "stored"
    reception.close()
    sop = str(ds.SOPInstanceUID)
    incoming = intake.transactions
    assert sop in incoming.held([sop])
    assert incoming.held([sop], node_name=NODE) == {}
    assert incoming.held([sop], node_name="node-b")[sop].present
    index = IndexReader(session_factory(engine))
    assert index.stored([sop], node_name=NODE) == []
    assert [r.sop_instance_uid for r in index.stored([sop], node_name="node-b")] == [sop]

    # The report decided on node-a (not shared): 0x0112; on a shared store: committed.
    uid2 = new_transaction_uid()
    assert _ask(intake, peer, uid2, [(CT_IMAGE, sop)]).status == 0
    tx2 = incoming.get(uid2)
    assert tx2 is not None
    pinned = ReportOperation(NodeSettings(), incoming, SimpleNamespace(), held_on=NODE)  # type: ignore[arg-type]
    assert [v.failure_reason for v in pinned.decide(tx2)] == [0x0112]
    anywhere = ReportOperation(NodeSettings(), incoming, SimpleNamespace())  # type: ignore[arg-type]
    assert [v.answer.value for v in anywhere.decide(tx2)] == ["committed"]
