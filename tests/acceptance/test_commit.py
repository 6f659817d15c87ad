"""Storage commitment end to end: `ctnode commit` / `ctnode push --commit` executed by
`ctnode run`, with Orthanc as the real Storage Commitment SCP (it reports on a new association
to ctnode's port, proposing the SCP role) and a scripted pynetdicom SCP for what Orthanc cannot
show on demand."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ctnode.dicom.contexts import CT_IMAGE
from tests.helpers.dicomgen import write_series
from tests.helpers.fake_commitment import FakeCommitmentSCP
from tests.helpers.jobs import job_json, wait_job
from tests.helpers.orthanc import Orthanc
from tests.helpers.peerfiles import commit_peer as _peer
from tests.helpers.procs import CtnodeProcess, run_tool

pytestmark = pytest.mark.slow

FAST_QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {
        "max_attempts": 3,
        "initial_delay": 0.3,
        "multiplier": 1,
        "max_delay": 1,
        "jitter": 0,
    },
}
MODALITY = {
    "ae_title": "STORESCU",
    "host": "127.0.0.1",
    "port": 104,
    "accept": ["echo", "store"],
}


def _uid(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(getattr(pydicom.dcmread(path, stop_before_pixels=True), keyword))


def _instances(job: dict[str, Any]) -> dict[str, str]:
    return {i["sop_instance_uid"]: i["state"] for i in job["commitment"]["instances"]}


def _store_into(node: CtnodeProcess, files: list[Path]) -> None:
    sent = run_tool(["storescu", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)])
    assert sent.returncode == 0, sent.stdout + sent.stderr


def _waiting_transaction(node: CtnodeProcess, job_id: int) -> str:
    job = wait_job(node, job_id, {"waiting", "failed", "succeeded"})
    assert job["state"] == "waiting", job
    (tx,) = [t for t in job["commitment"]["transactions"] if t["state"] == "requested"]
    return str(tx["transaction_uid"])


# ---------------------------------------------------------------- Orthanc


@pytest.fixture
def orthanc_node(tmp_path: Path) -> Iterator[tuple[CtnodeProcess, Orthanc]]:
    """ctnode and Orthanc knowing each other (Orthanc's DicomModalities has ctnode's port)."""
    node = CtnodeProcess(
        tmp_path / "node", config={"queue": FAST_QUEUE}, peers={"modality": MODALITY}
    )
    with Orthanc(
        modalities={"ctnode": {"AET": "CTNODE", "Host": "127.0.0.1", "Port": node.port}}
    ) as orthanc:
        # Linger 0: the report always races the parking of the job (the harder path).
        node.write_peer("orthanc", _peer("ORTHANC", orthanc.dicom_port, commit_linger=0))
        with node:
            yield node, orthanc


def test_orthanc_push_and_commit_a_series(
    orthanc_node: tuple[CtnodeProcess, Orthanc], tmp_path: Path
) -> None:
    """`push --series S --commit --wait` of a series received from a modality: Orthanc stores
    it, reports event type 1 on a new association it opens to ctnode's port (SCP role), every
    instance is committed, and `instances --series` shows Orthanc as the committing peer."""
    node, orthanc = orthanc_node
    files = write_series(tmp_path / "in", 5)
    series = _uid(files[0], "SeriesInstanceUID")
    _store_into(node, files)
    result = node.cli(
        "push", "orthanc", "--series", series, "--commit", "--wait", "--json", timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["state"] == "succeeded" and out["commit"]["state"] == "succeeded"
    job = job_json(node, out["commit"]["id"])
    assert job["kind"] == "commit" and job["attempts"] == 1
    assert set(_instances(job).values()) == {"committed"} and len(_instances(job)) == 5
    (tx,) = job["commitment"]["transactions"]
    assert tx["state"] == "reported" and tx["event_type"] == 1
    assert tx["transaction_uid"].startswith("2.25.")
    assert {_uid(f) for f in files} <= orthanc.sop_instance_uids()
    assert node.log is not None
    report = node.log.wait_for("commitment.report", transaction_uid=tx["transaction_uid"])
    assert report["calling_ae"] == "ORTHANC" and report["outcome"] == "applied"
    assert report["association"] != "n-action"  # a new association opened by Orthanc
    listed = json.loads(node.cli("instances", "--series", series, "--json").stdout)
    assert len(listed) == 5
    assert all([c["peer"] for c in r["committed_by"]] == ["orthanc"] for r in listed)
    assert "orthanc" in node.cli("instances", "--series", series).stdout


def test_orthanc_missing_instance_is_pushed_again(
    orthanc_node: tuple[CtnodeProcess, Orthanc], tmp_path: Path
) -> None:
    """A commit of 4 instances of which Orthanc holds 3: it reports event type 2 with the
    fourth failed (0x0112); the job pushes that one again, asks with a new Transaction UID and
    ends with all 4 committed."""
    node, orthanc = orthanc_node
    files = write_series(tmp_path / "in", 4)
    for path in files[:3]:
        orthanc.upload(path)
    missing = _uid(files[3])
    result = node.cli("commit", "orthanc", str(tmp_path / "in"), "--wait", "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    job = job_json(node, json.loads(result.stdout)["id"])
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert set(_instances(job).values()) == {"committed"}
    first, second = job["commitment"]["transactions"]
    assert first["event_type"] == 2 and second["event_type"] == 1
    assert first["transaction_uid"] != second["transaction_uid"]
    events = {e["event"]: e for e in job["events"]}
    assert "event type 2, 3 committed, 1 failed" in next(
        e["message"] for e in job["events"] if e["event"] == "commit_reported"
    )
    retry = events["retry_scheduled"]
    assert retry["status"] == "0x0112" and missing in retry["message"]
    assert "1 of 1 failed instance(s) pushed again" in events["commit_repushed"]["message"]
    assert {_uid(f) for f in files} <= orthanc.sop_instance_uids()


# ---------------------------------------------------------------- scripted SCP


def _fake_node(tmp_path: Path, fake: FakeCommitmentSCP, **peer: Any) -> CtnodeProcess:
    extra_peers = peer.pop("extra_peers", {})
    config = peer.pop("config", {})
    node = CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE, **config},
        peers={"fake": _peer("FAKECOMMIT", fake.port, **peer), "modality": MODALITY, **extra_peers},
    )
    fake.target = ("127.0.0.1", node.port, "CTNODE")
    return node


def test_report_on_the_same_association(tmp_path: Path) -> None:
    """A PACS that reports on the N-ACTION's own association: ctnode answers it there with
    0x0000 and the job succeeds at once, without waiting and without any inbound association."""
    files = write_series(tmp_path / "in", 3)
    with FakeCommitmentSCP(mode="same_association") as fake, _fake_node(tmp_path, fake) as node:
        result = node.cli("commit", "fake", str(tmp_path / "in"), "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        job = job_json(node, json.loads(result.stdout)["id"])
        assert node.log is not None
        inbound = node.log.named("scp.association")
    (action,) = fake.actions
    assert fake.reports == [(action.transaction_uid, 0x0000)]
    assert sorted(r[1] for r in action.refs) == sorted(_uid(f) for f in files)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert set(_instances(job).values()) == {"committed"}
    assert not any(e["event"] == "waiting" for e in job["events"])
    assert inbound == []


def test_no_report_before_the_deadline(tmp_path: Path) -> None:
    """No report ever: at each deadline the job asks again with a new Transaction UID, up to
    the retry policy's attempts (3), then fails with every instance failed for that reason."""
    write_series(tmp_path / "in", 2)
    with (
        FakeCommitmentSCP(mode="never") as fake,
        _fake_node(tmp_path, fake, commit_timeout=1.5) as node,
    ):
        result = node.cli("commit", "fake", str(tmp_path / "in"), "--wait", "--json", timeout=90)
        assert result.returncode == 1, result.stdout + result.stderr
        job = job_json(node, json.loads(result.stdout)["id"])
    assert job["state"] == "failed" and job["attempts"] == 3
    assert "gave up after 3 commitment request(s)" in job["last_error"]
    uids = [a.transaction_uid for a in fake.actions]
    assert len(uids) == 3 and len(set(uids)) == 3
    assert [t["transaction_uid"] for t in job["commitment"]["transactions"]] == uids
    assert {t["state"] for t in job["commitment"]["transactions"]} == {"expired"}
    assert set(_instances(job).values()) == {"failed"}
    assert all("no report within commit_timeout" in i["error"] for i in job["failed_items"])


def test_reports_from_others_or_for_unknown_transactions_change_nothing(tmp_path: Path) -> None:
    """While a job waits: a report for its transaction from another configured peer, a report
    from the right peer for a Transaction UID nobody issued (both answered 0x0110), and a caller
    that is no peer at all (rejected) change nothing; the genuine report then completes it."""
    write_series(tmp_path / "in", 2)
    other = _peer("OTHERPACS", 11112)
    with (
        FakeCommitmentSCP(mode="never") as fake,
        _fake_node(tmp_path, fake, extra_peers={"other": other}) as node,
    ):
        job_id = int(node.cli("commit", "fake", str(tmp_path / "in")).stdout)
        tx = _waiting_transaction(node, job_id)
        (action,) = fake.actions
        assert fake.send_report(tx, action.refs, calling_ae="OTHERPACS") == 0x0110
        assert fake.send_report("2.25.4242", action.refs) == 0x0110
        assert fake.send_report(tx, action.refs, calling_ae="NOBODY") is None
        job = job_json(node, job_id)
        assert job["state"] == "waiting"
        assert set(_instances(job).values()) == {"pending"}
        assert [t["state"] for t in job["commitment"]["transactions"]] == ["requested"]
        assert fake.send_report(tx, action.refs) == 0x0000
        job = wait_job(node, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert set(_instances(job).values()) == {"committed"}


def test_report_after_restart_is_matched(tmp_path: Path) -> None:
    """The report arrives after `ctnode run` was killed (-9) and restarted: the transaction is
    in the database, so the report is matched and the job succeeds."""
    write_series(tmp_path / "in", 3)
    with FakeCommitmentSCP(mode="never") as fake:
        node = _fake_node(tmp_path, fake)
        node.start()
        try:
            job_id = int(node.cli("commit", "fake", str(tmp_path / "in")).stdout)
            tx = _waiting_transaction(node, job_id)
            node.kill()
            node.start()
            (action,) = fake.actions
            assert fake.send_report(tx, action.refs) == 0x0000
            job = wait_job(node, job_id, {"succeeded", "failed"})
        finally:
            node.stop()
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert set(_instances(job).values()) == {"committed"}
    assert len(fake.actions) == 1


def test_deadline_fires_after_restart(tmp_path: Path) -> None:
    """The deadline of a waiting job passes while ctnode is down: after the restart the job
    asks again with a new Transaction UID, and that transaction's report completes it."""
    write_series(tmp_path / "in", 2)
    with FakeCommitmentSCP(mode="never") as fake:
        node = _fake_node(tmp_path, fake, commit_timeout=2)
        node.start()
        try:
            job_id = int(node.cli("commit", "fake", str(tmp_path / "in")).stdout)
            first = _waiting_transaction(node, job_id)
            node.kill()
            time.sleep(2.5)
            node.start()
            second = fake.wait_actions(2)[1]
            assert second.transaction_uid != first
            assert fake.send_report(second.transaction_uid, second.refs) == 0x0000
            job = wait_job(node, job_id, {"succeeded", "failed"})
        finally:
            node.stop()
    assert job["state"] == "succeeded" and job["attempts"] == 2
    states = {t["transaction_uid"]: t["state"] for t in job["commitment"]["transactions"]}
    assert states == {first: "expired", second.transaction_uid: "reported"}


def test_commit_exactly_what_a_push_delivered(tmp_path: Path) -> None:
    """`commit PEER --job PUSH_ID` asks about exactly the instances that push delivered."""
    files = write_series(tmp_path / "in", 3)
    with FakeCommitmentSCP() as fake, _fake_node(tmp_path, fake) as node:
        pushed = node.cli("push", "fake", str(tmp_path / "in"), "--wait", "--json")
        assert pushed.returncode == 0, pushed.stderr
        push_id = json.loads(pushed.stdout)["id"]
        result = node.cli("commit", "fake", "--job", str(push_id), "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
    (action,) = fake.actions
    assert sorted(r[1] for r in action.refs) == sorted(_uid(f) for f in files)
    assert all(r[0] == CT_IMAGE for r in action.refs)


def test_retention_removes_only_committed_instances(tmp_path: Path) -> None:
    """storage.delete_after_commit with the peer in commitment_peers: after a report
    committing 2 of 4 stored instances, those 2 are gone from the store and marked deleted in
    the index; the 2 not committed are still there."""
    files = write_series(tmp_path / "in", 4)
    study = _uid(files[0], "StudyInstanceUID")
    held = {_uid(f) for f in files[:2]}
    config = {"storage": {"delete_after_commit": True, "commitment_peers": ["fake"]}}
    with (
        FakeCommitmentSCP(holds=set(held)) as fake,
        _fake_node(tmp_path, fake, retry={"max_attempts": 1}, config=config) as node,
    ):
        _store_into(node, files)
        result = node.cli("commit", "fake", "--study", study, "--wait", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        job = job_json(node, json.loads(result.stdout)["id"])
        live = json.loads(node.cli("instances", "--study", study, "--json").stdout)
        every = json.loads(node.cli("instances", "--study", study, "--deleted", "--json").stdout)
    assert job["state"] == "failed"
    assert {u for u, s in _instances(job).items() if s == "committed"} == held
    assert {r["sop_instance_uid"] for r in live} == {_uid(f) for f in files[2:]}
    deleted = {r["sop_instance_uid"] for r in every if r["deleted_at"]}
    assert deleted == held
    assert all([c["peer"] for c in r["committed_by"]] == ["fake"] for r in every if r["deleted_at"])
    on_disk = {p.stem for p in (node.data_dir / "store").rglob("*.dcm")}
    assert on_disk == {_uid(f) for f in files[2:]}


def test_commit_usage_errors(tmp_path: Path) -> None:
    """No source, two sources, a peer that does not allow commit, or --job of a job that is not
    a push: one line on stderr, exit 2."""
    write_series(tmp_path / "in", 1)
    with FakeCommitmentSCP() as fake, _fake_node(tmp_path, fake) as node:
        node.write_peer("storeonly", {**_peer("STOREONLY", 11113), "services": ["store"]})
        assert node.cli("commit", "fake").returncode == 2
        assert node.cli("commit", "fake", str(tmp_path / "in"), "--study", "1.2.3").returncode == 2
        denied = node.cli("commit", "storeonly", str(tmp_path / "in"))
        assert denied.returncode == 2 and "does not allow commit" in denied.stderr
        job_id = int(node.cli("commit", "fake", str(tmp_path / "in")).stdout)
        not_push = node.cli("commit", "fake", "--job", str(job_id))
        assert not_push.returncode == 2 and "not a push" in not_push.stderr
