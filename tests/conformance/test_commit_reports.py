"""Storage commitment reports that arrive after ctnode stopped waiting for them (PS3.4 Annex J).

PS3.4 J.3.3 lets the SCP send the N-EVENT-REPORT of a Transaction UID at any time after it
accepted the N-ACTION, on any association, and J.3.4 makes the report the SCP's statement of
which instances it has committed. So a report from the peer that was asked, for a Transaction
UID ctnode issued, is proof even when ctnode no longer awaits it: the N-ACTION reached the peer
but ctnode died before recording its answer (the round was replaced after the restart), or the
deadline passed and a newer round was asked. Such a report is applied to the job's items unless
the job has finished; an unknown Transaction UID or a report from anyone else is refused
(0x0110). ``ctnode run`` runs in a subprocess on SQLite and PostgreSQL; the Storage Commitment
SCP is a scripted pynetdicom peer (no real PACS reports on demand for a transaction of our
choosing, after a crash we stage)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from ctnode.config import load_settings
from ctnode.dicom.commitment_messages import new_transaction_uid
from ctnode.queue.commit_rounds import CommitmentRepository
from tests.helpers.dicomgen import write_series
from tests.helpers.fake_commitment import FakeCommitmentSCP
from tests.helpers.jobs import job_json, repo_of, submit_commit, wait_job
from tests.helpers.peerfiles import commit_peer
from tests.helpers.procs import CtnodeProcess
from tests.helpers.waiting import wait_until

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
#: The seconds a requested transaction waits for its report: far longer than any test here, so
#: only a late report can end the round that is waiting.
COMMIT_TIMEOUT = 300
FINAL = {"succeeded", "failed", "cancelled"}


def _peer(ae_title: str, port: int, **extra: Any) -> dict[str, Any]:
    return commit_peer(ae_title, port, **{"commit_timeout": COMMIT_TIMEOUT, **extra})


def _node(tmp_path: Path, fake: FakeCommitmentSCP, db_url: str, **peer: Any) -> CtnodeProcess:
    """A node (not started) on *db_url* whose peer ``fake`` is *fake*; ``other`` is a second
    configured peer on the same host that may send reports too."""
    node = CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE, "database": {"url": db_url}},
        peers={
            "fake": _peer("FAKECOMMIT", fake.port, **peer),
            "other": _peer("OTHERPACS", 11112),
        },
    )
    fake.target = ("127.0.0.1", node.port, "CTNODE")
    return node


def _dead_owner(node_name: str) -> str:
    """A lease owner naming a process of this host that has exited (a worker killed -9)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{node_name}:{socket.gethostname()}:{proc.pid}:dead00"


def _crashed_round(node: CtnodeProcess, job_id: int, *, deadline_passed: bool) -> str:
    """Leave *job_id* as a worker of a node that died mid-round leaves it, writing through the
    repository exactly what that worker had written; returns the round's Transaction UID.

    ``deadline_passed=False``: the round was persisted and its N-ACTION sent, but the worker died
    before recording the N-ACTION-RSP (transaction ``open``, job ``running`` on a dead lease).
    ``deadline_passed=True``: the N-ACTION was accepted and the job parked, and its deadline
    passed while the node was down (transaction ``requested``, job ``waiting``, both due).
    """
    settings = load_settings(node.config_path)
    repo = repo_of(node)
    commits = CommitmentRepository(repo)
    try:
        owner = _dead_owner(settings.node.name)
        job = repo.claim(owner, settings.node.name)
        assert job is not None and job.id == job_id
        uid = new_transaction_uid()
        round_ = {"transaction_uid": uid, "attempt": job.attempts, "concluded": False}
        assert commits.begin(
            job.id,
            owner,
            transaction_uid=uid,
            peer="fake",
            peer_ae_title="FAKECOMMIT",
            item_ids=[i.id for i in repo.items(job.id)],
            payload={**job.payload, "round": round_},
        )
        if deadline_passed:
            assert commits.mark_requested(job.id, owner, uid, 0) is not None
            assert repo.wait_until(
                job.id, owner, 0, message="waiting", claimed_not_before=job.not_before
            )
    finally:
        repo.engine.dispose()
    return uid


def _instances(job: dict[str, Any]) -> dict[str, str]:
    return {i["sop_instance_uid"]: i["state"] for i in job["commitment"]["instances"]}


def _transactions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["transaction_uid"]: t for t in job["commitment"]["transactions"]}


def _waiting_on_new_round(node: CtnodeProcess, job_id: int, old: str) -> str:
    """Wait until the job waits for the report of a round newer than *old*; its UID."""

    def new_round() -> str | None:
        job = job_json(node, job_id)
        txs = _transactions(job)
        requested = [u for u, tx in txs.items() if tx["state"] == "requested" and u != old]
        if job["state"] == "waiting" and requested:
            return requested[0]
        assert job["state"] not in FINAL, job
        return None

    return wait_until(
        new_round,
        60,
        interval=0.1,
        message=lambda: f"job {job_id} waiting on a new round: {job_json(node, job_id)}",
    )


@dataclass
class Late:
    """A job waiting on round 2 whose round 1 (``old``) ended unanswered."""

    node: CtnodeProcess
    fake: FakeCommitmentSCP
    job_id: int
    old: str
    current: str
    refs: list[tuple[str, str]]


def _late(tmp_path: Path, db_url: str, *, deadline_passed: bool) -> Iterator[Late]:
    write_series(tmp_path / "in", 3)
    with FakeCommitmentSCP(mode="never") as fake:
        node = _node(tmp_path, fake, db_url)
        job_id = submit_commit(node, "fake", tmp_path / "in")
        old = _crashed_round(node, job_id, deadline_passed=deadline_passed)
        with node:
            current = _waiting_on_new_round(node, job_id, old)
            (action,) = fake.wait_actions(1)
            assert action.transaction_uid == current
            yield Late(node, fake, job_id, old, current, action.refs)


@pytest.fixture
def migrated(engine: Engine, db_url: str) -> str:
    """*db_url*, migrated to head (``ctnode run`` upgrades only an embedded SQLite database)."""
    return db_url


@pytest.fixture
def unanswered(tmp_path: Path, migrated: str) -> Iterator[Late]:
    """Round 1 was sent, the node was killed before it recorded the N-ACTION-RSP; after the
    restart round 2 superseded it and waits for its report."""
    yield from _late(tmp_path, migrated, deadline_passed=False)


@pytest.fixture
def expired(tmp_path: Path, migrated: str) -> Iterator[Late]:
    """Round 1 was accepted, its deadline passed (while the node was down); after the restart
    it expired and round 2 waits for its report."""
    yield from _late(tmp_path, migrated, deadline_passed=True)


def test_report_for_a_round_whose_answer_was_never_recorded_is_applied(
    unanswered: Late,
) -> None:
    """PS3.4 J.3.3/J.3.4: the report of a Transaction UID whose N-ACTION reached the peer but
    whose N-ACTION-RSP was lost in a crash (the restarted node superseded the round) is answered
    0x0000 and applied: every instance committed, the job succeeds without waiting for the
    round it superseded it with, and no transaction is left awaiting."""
    late = unanswered
    before = _transactions(job_json(late.node, late.job_id))
    assert before[late.old]["state"] == "superseded"
    assert late.fake.send_report(late.old, late.refs) == 0x0000
    job = wait_job(late.node, late.job_id, FINAL, timeout=20)
    assert job["state"] == "succeeded", job
    assert set(_instances(job).values()) == {"committed"} and len(_instances(job)) == 3
    txs = _transactions(job)
    assert txs[late.old]["reported_at"] is not None and txs[late.old]["event_type"] == 1
    assert {tx["state"] for tx in txs.values()} == {"superseded"}
    events = [e for e in job["events"] if e["event"] == "commit_late_report_applied"]
    assert len(events) == 1 and late.old in events[0]["message"]
    assert late.node.log is not None
    line = late.node.log.wait_for("commitment.report", transaction_uid=late.old)
    assert line["outcome"] == "late_applied" and line["committed"] == 3
    assert line["job"] == late.job_id


def test_report_for_an_expired_round_is_applied(expired: Late) -> None:
    """PS3.4 J.3.4: the report of a round whose deadline passed, arriving while a newer round
    waits, is answered 0x0000 and applied: the instances it commits are committed (recorded for
    the peer) and, as that decides every instance, the job succeeds at once."""
    late = expired
    before = _transactions(job_json(late.node, late.job_id))
    assert before[late.old]["state"] == "expired"
    assert late.fake.send_report(late.old, late.refs) == 0x0000
    job = wait_job(late.node, late.job_id, FINAL, timeout=20)
    assert job["state"] == "succeeded", job
    assert set(_instances(job).values()) == {"committed"}
    txs = _transactions(job)
    assert txs[late.old]["state"] == "expired" and txs[late.old]["reported_at"] is not None
    assert txs[late.current]["state"] == "superseded"
    # The awaited round's own report, now for a finished job: acknowledged, nothing changes.
    assert late.fake.send_report(late.current, late.refs) == 0x0000
    after = job_json(late.node, late.job_id)
    assert after["state"] == "succeeded" and set(_instances(after).values()) == {"committed"}


def test_report_for_a_finished_job_changes_nothing(tmp_path: Path, migrated: str) -> None:
    """PS3.4 J.3.4: a job that already ended (failed: no report within commit_timeout, one
    request allowed) is not reopened by its transaction's report: answered 0x0000, recorded in
    the job's event trail, its instances stay failed and no commitment is recorded."""
    write_series(tmp_path / "in", 2)
    with FakeCommitmentSCP(mode="never") as fake:
        node = _node(tmp_path, fake, migrated, commit_timeout=1, retry={"max_attempts": 1})
        with node:
            job_id = submit_commit(node, "fake", tmp_path / "in")
            ended = wait_job(node, job_id, FINAL, timeout=60)
            assert ended["state"] == "failed", ended
            (action,) = fake.actions
            assert fake.send_report(action.transaction_uid, action.refs) == 0x0000
            job = job_json(node, job_id)
            repo = repo_of(node)
            try:
                committed = CommitmentRepository(repo).committed_by("fake", _instances(job))
            finally:
                repo.engine.dispose()
    assert job["state"] == "failed" and job["finished_at"] == ended["finished_at"]
    assert set(_instances(job).values()) == {"failed"}
    assert _instances(job) == _instances(ended)
    (tx,) = job["commitment"]["transactions"]
    assert tx["state"] == "expired"
    trail = [e for e in job["events"] if e["event"] == "commit_report_after_finish"]
    assert len(trail) == 1 and "not applied" in trail[0]["message"]
    assert committed == set()


def test_unknown_transaction_is_refused(expired: Late) -> None:
    """PS3.4 J.3.4, PS3.7 10.1.1 (N-EVENT-REPORT status): a report from the right peer for a
    Transaction UID ctnode never issued is answered 0x0110 (processing failure) and changes
    nothing, even while a round is late and another waits."""
    late = expired
    before = job_json(late.node, late.job_id)
    assert late.fake.send_report(new_transaction_uid(), late.refs) == 0x0110
    after = job_json(late.node, late.job_id)
    assert after["state"] == "waiting"
    assert _instances(after) == _instances(before) and set(_instances(after).values()) == {
        "pending"
    }
    assert _transactions(after) == _transactions(before)


def test_report_from_another_peer_is_refused(expired: Late) -> None:
    """PS3.4 J.3.4: only the peer that was asked may report on a transaction: the late round's
    report sent by another configured peer (calling AE OTHERPACS) is answered 0x0110 and
    changes nothing; the genuine report then is applied."""
    late = expired
    before = job_json(late.node, late.job_id)
    assert late.fake.send_report(late.old, late.refs, calling_ae="OTHERPACS") == 0x0110
    after = job_json(late.node, late.job_id)
    assert after["state"] == "waiting"
    assert _instances(after) == _instances(before)
    assert _transactions(after) == _transactions(before)
    assert late.fake.send_report(late.old, late.refs) == 0x0000
    assert wait_job(late.node, late.job_id, FINAL, timeout=20)["state"] == "succeeded"
