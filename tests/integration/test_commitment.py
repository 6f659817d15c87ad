"""Storage commitment on SQLite and PostgreSQL: rounds persisted before sending (fenced), report
matching and application, late and duplicate reports, waking a waiting job, retention; and the
SCP accepting a report on a new association that proposes the SCP role."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from ctnode.commit_report_intake import Reconciler
from ctnode.config import StorageSettings
from ctnode.daemon import Runtime
from ctnode.db.models import CommitTransaction, Instance, InstanceCommitment
from ctnode.db.types import utcnow
from ctnode.dicom.commitment_messages import (
    CommitmentReport,
    FailedReference,
    Sender,
    SopReference,
    encode_report,
)
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE
from ctnode.queue.commit_rounds import CommitmentRepository, ReportOutcome, TransactionState
from ctnode.queue.jobs import ItemState, Job, JobKind, JobState, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.retention import Retention
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset, new_ids
from tests.helpers.fake_commitment import FakeCommitmentSCP
from tests.helpers.node import make_settings, running_node, write_peers

POLICY = RetryPolicy(max_attempts=3, initial_delay=1, multiplier=1, max_delay=1, jitter=0)
PACS = Sender("pacs", "PACS", "10.0.0.5")
UIDS = ["1.2.3.100.1", "1.2.3.100.2", "1.2.3.100.3"]


@pytest.fixture
def repo(engine: Engine) -> JobRepository:
    """A job repository with a generous lease."""
    return JobRepository(engine, lease_seconds=30)


@pytest.fixture
def commits(repo: JobRepository) -> CommitmentRepository:
    """The commitment section of the repository."""
    return CommitmentRepository(repo)


def _claimed_commit_job(repo: JobRepository, uids: list[str] = UIDS) -> Job:
    job, _ = repo.submit(
        JobKind.COMMIT,
        "pacs",
        {"source": "files"},
        [NewItem(CT_IMAGE, uid, EXPLICIT_VR_LE, f"/x/{uid}.dcm") for uid in uids],
        policy=POLICY,
    )
    claimed = repo.claim("w1", "node")
    assert claimed is not None and claimed.id == job.id
    return claimed


def _requested(
    repo: JobRepository, commits: CommitmentRepository, tx: str, uids: list[str] = UIDS
) -> Job:
    """A commit job whose round *tx* was sent and which now waits for its report."""
    job = _claimed_commit_job(repo, uids)
    items = repo.items(job.id)
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid=tx,
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=[i.id for i in items],
        payload={"round": {"transaction_uid": tx}},
    )
    requested = commits.mark_requested(job.id, "w1", tx, 3600)
    assert requested is not None and requested.state is TransactionState.REQUESTED
    assert repo.wait_until(job.id, "w1", 3600, message="waiting", claimed_not_before=job.not_before)
    return job


def _report(
    tx: str, committed: list[str], failed: dict[str, int] | None = None
) -> CommitmentReport:
    return CommitmentReport(
        tx,
        2 if failed else 1,
        tuple(SopReference(CT_IMAGE, u) for u in committed),
        tuple(FailedReference(CT_IMAGE, u, r) for u, r in (failed or {}).items()),
    )


def _states(repo: JobRepository, job_id: int) -> dict[str, tuple[ItemState, int | None]]:
    return {str(i.sop_instance_uid): (i.state, i.status) for i in repo.items(job_id)}


def _commitments(engine: Engine) -> set[tuple[str, str, str]]:
    with Session(engine) as s:
        return {
            (c.sop_instance_uid, c.peer, c.transaction_uid)
            for c in s.scalars(select(InstanceCommitment))
        }


# ---------------------------------------------------------------- rounds


def test_round_is_persisted_before_sending_and_fenced(
    repo: JobRepository, commits: CommitmentRepository, engine: Engine
) -> None:
    """`begin` writes the transaction, tags its instances and stores the round in the payload in
    one step; a worker that does not hold the lease writes nothing."""
    job = _claimed_commit_job(repo)
    ids = [i.id for i in repo.items(job.id)]
    assert not commits.begin(
        job.id,
        "intruder",
        transaction_uid="2.25.1",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids,
        payload={"round": {}},
    )
    assert commits.get("2.25.1") is None
    assert all(i.transaction_uid is None for i in commits.instance_states(job.id))
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid="2.25.1",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids[:2],
        payload={"round": {"transaction_uid": "2.25.1"}},
    )
    tx = commits.get("2.25.1")
    assert tx is not None and tx.state is TransactionState.OPEN and tx.peer_ae_title == "PACS"
    assert [i.transaction_uid for i in commits.instance_states(job.id)] == [
        "2.25.1",
        "2.25.1",
        None,
    ]
    assert repo.get(job.id).payload["round"] == {"transaction_uid": "2.25.1"}
    # A new round supersedes an unanswered one.
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid="2.25.2",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids,
        payload={},
    )
    assert [t.state for t in commits.transactions(job.id)] == [
        TransactionState.SUPERSEDED,
        TransactionState.OPEN,
    ]


def test_expire_only_after_the_deadline(repo: JobRepository, commits: CommitmentRepository) -> None:
    """A requested transaction expires only once its deadline passed."""
    job = _claimed_commit_job(repo)
    ids = [i.id for i in repo.items(job.id)]
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid="2.25.3",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids,
        payload={},
    )
    assert commits.mark_requested(job.id, "w1", "2.25.3", 3600) is not None
    assert not commits.expire(job.id, "w1", "2.25.3")
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid="2.25.4",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids,
        payload={},
    )
    assert commits.mark_requested(job.id, "w1", "2.25.4", 0.01) is not None
    time.sleep(0.05)
    assert commits.expire(job.id, "w1", "2.25.4")
    tx = commits.get("2.25.4")
    assert tx is not None and tx.state is TransactionState.EXPIRED


# ---------------------------------------------------------------- reports


def test_report_is_applied_and_wakes_the_waiting_job(
    repo: JobRepository, commits: CommitmentRepository, engine: Engine
) -> None:
    """Event type 2: the committed instance is committed (and recorded per peer), the failed one
    failed with its Failure Reason, an instance not in the transaction is ignored; the
    transaction is reported and the waiting job runnable now, resuming the same attempt."""
    job = _requested(repo, commits, "2.25.10")
    assert repo.claim("w2", "node") is None  # waiting until the deadline
    result = commits.apply_report(_report("2.25.10", [UIDS[0], "9.9.9"], {UIDS[1]: 0x0112}), PACS)
    assert result.outcome is ReportOutcome.APPLIED and result.status == 0x0000
    assert result.committed == (UIDS[0],) and result.failed == 1
    assert result.ignored == ("9.9.9",) and result.woken
    assert _states(repo, job.id) == {
        UIDS[0]: (ItemState.SUCCEEDED, 0),
        UIDS[1]: (ItemState.FAILED, 0x0112),
        UIDS[2]: (ItemState.PENDING, None),
    }
    assert _commitments(engine) == {(UIDS[0], "pacs", "2.25.10")}
    tx = commits.get("2.25.10")
    assert tx is not None and tx.state is TransactionState.REPORTED and tx.event_type == 2
    resumed = repo.claim("w2", "node")
    assert resumed is not None and resumed.id == job.id and resumed.attempts == job.attempts
    states = [s.state for s in commits.instance_states(job.id)]
    assert states == ["committed", "failed", "pending"]


@pytest.mark.parametrize(
    ("transaction", "sender"),
    [
        ("2.25.999", PACS),  # nobody issued this Transaction UID
        ("2.25.11", Sender("pacs", "INTRUDER", "10.0.0.5")),  # another calling AE
        ("2.25.11", Sender("other", "PACS", "10.0.0.9")),  # same AE title, another peer/host
        ("2.25.11", Sender(None, "PACS", "192.168.7.7")),  # not a configured peer at all
    ],
)
def test_unknown_transaction_or_sender_changes_nothing(
    repo: JobRepository,
    commits: CommitmentRepository,
    engine: Engine,
    transaction: str,
    sender: Sender,
) -> None:
    """A report for an unknown Transaction UID, or from anyone but the peer asked, is answered
    0x0110 and changes nothing: items, transaction, commitments and the waiting job."""
    job = _requested(repo, commits, "2.25.11")
    before = repo.get(job.id)
    result = commits.apply_report(_report(transaction, UIDS), sender)
    assert result.outcome is ReportOutcome.REFUSED and result.status == 0x0110
    assert result.reason
    assert all(state == ItemState.PENDING for state, _ in _states(repo, job.id).values())
    tx = commits.get("2.25.11")
    assert tx is not None and tx.state is TransactionState.REQUESTED and tx.reported_at is None
    assert _commitments(engine) == set()
    after = repo.get(job.id)
    assert after.state is JobState.WAITING and after.not_before == before.not_before
    assert repo.claim("w2", "node") is None


def test_duplicate_report_changes_nothing(
    repo: JobRepository, commits: CommitmentRepository
) -> None:
    """A report repeated for a transaction already reported is answered 0x0000, unchanged."""
    job = _requested(repo, commits, "2.25.12")
    assert commits.apply_report(_report("2.25.12", UIDS), PACS).outcome is ReportOutcome.APPLIED
    again = commits.apply_report(_report("2.25.12", [], dict.fromkeys(UIDS, 0x0112)), PACS)
    assert again.outcome is ReportOutcome.DUPLICATE and again.status == 0x0000
    assert all(state == ItemState.SUCCEEDED for state, _ in _states(repo, job.id).values())


def _expired_then_asked_again(
    repo: JobRepository, commits: CommitmentRepository, old: str, new: str
) -> Job:
    """A commit job whose round *old* expired and whose round *new* (all instances) waits."""
    job = _claimed_commit_job(repo)
    ids = [i.id for i in repo.items(job.id)]
    for uid, seconds in ((old, 0.01), (new, 3600.0)):
        assert commits.begin(
            job.id,
            "w1",
            transaction_uid=uid,
            peer="pacs",
            peer_ae_title="PACS",
            item_ids=ids,
            payload={"round": {"transaction_uid": uid}},
        )
        assert commits.mark_requested(job.id, "w1", uid, seconds) is not None
        if uid == old:
            time.sleep(0.05)
            assert commits.expire(job.id, "w1", uid)
    assert repo.wait_until(job.id, "w1", 3600, message="waiting", claimed_not_before=job.not_before)
    return job


def test_late_report_for_an_expired_round_is_applied(
    repo: JobRepository, commits: CommitmentRepository, engine: Engine
) -> None:
    """A report for an expired transaction whose job still runs is applied (0x0000): what it
    commits is committed and recorded for the peer even though a newer round asked again; its
    failures do not touch instances that newer round asked about; the transaction stays
    expired with its report time; the job keeps waiting while instances are pending."""
    job = _expired_then_asked_again(repo, commits, "2.25.13", "2.25.113")
    result = commits.apply_report(_report("2.25.13", [UIDS[0]], {UIDS[1]: 0x0112}), PACS)
    assert result.outcome is ReportOutcome.LATE_APPLIED and result.status == 0x0000
    assert result.committed == (UIDS[0],) and result.failed == 0 and not result.woken
    assert _states(repo, job.id) == {
        UIDS[0]: (ItemState.SUCCEEDED, 0),
        UIDS[1]: (ItemState.PENDING, None),
        UIDS[2]: (ItemState.PENDING, None),
    }
    tx = commits.get("2.25.13")
    assert tx is not None and tx.state is TransactionState.EXPIRED and tx.reported_at is not None
    assert _commitments(engine) == {(UIDS[0], "pacs", "2.25.13")}
    current = commits.get("2.25.113")
    assert current is not None and current.state is TransactionState.REQUESTED
    assert repo.get(job.id).state is JobState.WAITING and repo.claim("w2", "node") is None
    events = [e for e in repo.events(job.id) if e.event == "commit_late_report_applied"]
    assert len(events) == 1 and "1 asked again since (kept)" in (events[0].message or "")
    again = commits.apply_report(_report("2.25.13", UIDS), PACS)
    assert again.outcome is ReportOutcome.DUPLICATE


def test_late_report_deciding_everything_wakes_the_job(
    repo: JobRepository, commits: CommitmentRepository
) -> None:
    """A late report that commits every instance still pending supersedes the round that is
    awaited (nothing is left to ask) and makes the waiting job runnable at once."""
    job = _expired_then_asked_again(repo, commits, "2.25.30", "2.25.31")
    result = commits.apply_report(_report("2.25.30", UIDS), PACS)
    assert result.outcome is ReportOutcome.LATE_APPLIED and result.woken
    assert all(state is ItemState.SUCCEEDED for state, _ in _states(repo, job.id).values())
    current = commits.get("2.25.31")
    assert current is not None and current.state is TransactionState.SUPERSEDED
    resumed = repo.claim("w2", "node")
    assert resumed is not None and resumed.id == job.id
    # The superseded round's own report, for an unfinished job: a repeat changes nothing.
    assert commits.apply_report(_report("2.25.31", UIDS), PACS).status == 0x0000


def test_an_older_failure_never_downgrades_a_commitment(
    repo: JobRepository, commits: CommitmentRepository, engine: Engine
) -> None:
    """Newest question wins, older rounds only add proof: once the awaited round committed an
    instance, the late report of an expired round failing it changes nothing; the newest
    round's own failure does withdraw an earlier (late) commitment."""
    job = _expired_then_asked_again(repo, commits, "2.25.32", "2.25.33")
    assert commits.apply_report(_report("2.25.33", UIDS[:2], {UIDS[2]: 0x0112}), PACS).woken
    late = commits.apply_report(_report("2.25.32", [UIDS[2]], {UIDS[0]: 0x0112}), PACS)
    assert late.outcome is ReportOutcome.LATE_APPLIED and late.failed == 0
    assert late.committed == ()  # UIDS[2] was failed by the newer round: kept
    assert _states(repo, job.id) == {
        UIDS[0]: (ItemState.SUCCEEDED, 0),
        UIDS[1]: (ItemState.SUCCEEDED, 0),
        UIDS[2]: (ItemState.FAILED, 0x0112),
    }
    assert _commitments(engine) == {(UIDS[0], "pacs", "2.25.33"), (UIDS[1], "pacs", "2.25.33")}
    # Another job: a late commitment first, then the awaited round fails the instance.
    assert repo.claim("w2", "node") is not None
    assert repo.finish(job.id, "w2", JobState.FAILED)
    other = _expired_then_asked_again(repo, commits, "2.25.34", "2.25.35")
    assert commits.apply_report(_report("2.25.34", [UIDS[0]]), PACS).committed == (UIDS[0],)
    assert commits.apply_report(_report("2.25.35", UIDS[1:], {UIDS[0]: 0x0112}), PACS).woken
    assert _states(repo, other.id)[UIDS[0]] == (ItemState.FAILED, 0x0112)
    assert (UIDS[0], "pacs", "2.25.34") not in _commitments(engine)


def test_late_report_failure_of_the_round_that_last_asked_is_applied(
    repo: JobRepository, commits: CommitmentRepository
) -> None:
    """A late report for the round that last asked about its instances (expired, next round not
    started) applies in full: committed and failed with the peer's reason, like on time."""
    job = _claimed_commit_job(repo)
    ids = [i.id for i in repo.items(job.id)]
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid="2.25.36",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids,
        payload={},
    )
    assert commits.mark_requested(job.id, "w1", "2.25.36", 0.01) is not None
    time.sleep(0.05)
    assert commits.expire(job.id, "w1", "2.25.36")
    result = commits.apply_report(_report("2.25.36", UIDS[:2], {UIDS[2]: 0x0112}), PACS)
    assert result.outcome is ReportOutcome.LATE_APPLIED and result.failed == 1
    assert _states(repo, job.id) == {
        UIDS[0]: (ItemState.SUCCEEDED, 0),
        UIDS[1]: (ItemState.SUCCEEDED, 0),
        UIDS[2]: (ItemState.FAILED, 0x0112),
    }
    assert result.woken  # nothing pending: the job concludes (and asks again for UIDS[2])


def test_report_for_a_finished_job_is_noted_not_applied(
    repo: JobRepository, commits: CommitmentRepository, engine: Engine
) -> None:
    """A report for a transaction of a job that has finished is answered 0x0000 and changes
    nothing but the transaction's report time and the job's event trail."""
    job = _requested(repo, commits, "2.25.37")
    assert repo.cancel(job.id).state is JobState.CANCELLED
    before = _states(repo, job.id)
    result = commits.apply_report(_report("2.25.37", UIDS), PACS)
    assert result.outcome is ReportOutcome.JOB_FINISHED and result.status == 0x0000
    assert result.committed == () and not result.woken and "not applied" in str(result.reason)
    assert _states(repo, job.id) == before and _commitments(engine) == set()
    tx = commits.get("2.25.37")
    assert tx is not None and tx.state is TransactionState.REQUESTED and tx.reported_at
    assert any(e.event == "commit_report_after_finish" for e in repo.events(job.id))


def test_a_later_commitment_of_the_same_instance_updates_it(
    repo: JobRepository, commits: CommitmentRepository, engine: Engine
) -> None:
    """The same peer committing an instance again (another job) updates the record; a later
    failure for it removes the peer's commitment."""
    first = _requested(repo, commits, "2.25.14", UIDS[:1])
    commits.apply_report(_report("2.25.14", UIDS[:1]), PACS)
    assert repo.claim("w1", "node") is not None
    assert repo.finish(first.id, "w1", JobState.SUCCEEDED)
    _requested(repo, commits, "2.25.15", UIDS[:1])
    assert commits.apply_report(_report("2.25.15", UIDS[:1]), PACS).status == 0
    assert _commitments(engine) == {(UIDS[0], "pacs", "2.25.15")}
    assert repo.claim("w1", "node") is not None
    _requested(repo, commits, "2.25.16", UIDS[:1])
    assert commits.apply_report(_report("2.25.16", [], {UIDS[0]: 0x0112}), PACS).status == 0
    assert _commitments(engine) == set()


def test_report_arriving_before_the_n_action_is_confirmed(
    repo: JobRepository, commits: CommitmentRepository
) -> None:
    """A report for a transaction still `open` (its N-ACTION response not processed yet) is
    applied; confirming the N-ACTION afterwards keeps it reported."""
    job = _claimed_commit_job(repo)
    ids = [i.id for i in repo.items(job.id)]
    assert commits.begin(
        job.id,
        "w1",
        transaction_uid="2.25.17",
        peer="pacs",
        peer_ae_title="PACS",
        item_ids=ids,
        payload={},
    )
    assert commits.apply_report(_report("2.25.17", UIDS), PACS).outcome is ReportOutcome.APPLIED
    tx = commits.mark_requested(job.id, "w1", "2.25.17", 3600)
    assert tx is not None and tx.state is TransactionState.REPORTED and tx.requested_at


# ---------------------------------------------------------------- waiting and waking


def test_wake_during_the_attempt_is_not_lost(repo: JobRepository) -> None:
    """A wake that arrives while the attempt still runs (report raced the N-ACTION's
    completion) keeps the job runnable when the attempt parks it."""
    job = _claimed_commit_job(repo)
    assert repo.wake(job.id, "report arrived")
    assert repo.wait_until(job.id, "w1", 3600, message="w", claimed_not_before=job.not_before)
    resumed = repo.claim("w2", "node")
    assert resumed is not None and resumed.id == job.id and resumed.attempts == 1


def test_without_a_wake_the_job_waits_for_its_deadline(repo: JobRepository) -> None:
    """No wake: the parked job is not claimable before its deadline; a wake later makes it
    runnable at once, and claiming it resumes the same attempt."""
    job = _claimed_commit_job(repo)
    assert repo.wait_until(job.id, "w1", 3600, message="w", claimed_not_before=job.not_before)
    waiting = repo.get(job.id)
    assert waiting.state is JobState.WAITING
    assert waiting.not_before > utcnow() + timedelta(seconds=3000)
    assert repo.claim("w2", "node") is None
    assert repo.wake(job.id, "report arrived")
    resumed = repo.claim("w2", "node")
    assert resumed is not None and resumed.attempts == 1
    assert not repo.wake(999999, "no such job")


# ---------------------------------------------------------------- retention


def _ingest(store: Store, count: int) -> list[str]:
    ids = new_ids()
    uids = []
    for n in range(count):
        ds = make_dataset(CT_IMAGE, ids, number=n + 1)
        reception = store.receive(StoreRequest(CT_IMAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE))
        reception.write(memoryview(encode_dataset(ds)))
        assert reception.complete().status == 0
        reception.close()
        uids.append(str(ds.SOPInstanceUID))
    return uids


def _store(tmp_path: Path, sessions: sessionmaker[Session], **kw: object) -> Store:
    settings = StorageSettings(data_dir=tmp_path / "data", min_free_bytes=0, **kw)  # type: ignore[arg-type]
    store = Store(settings, sessions, "node-a")
    store.prepare()
    return store


def _present(store: Store, sessions: sessionmaker[Session]) -> dict[str, bool]:
    with sessions() as s:
        return {
            r.sop_instance_uid: r.deleted_at is None and (store.root / r.path).exists()
            for r in s.scalars(select(Instance))
        }


def test_retention_only_after_a_listed_peer_committed(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """With delete_after_commit, a commitment by a peer in commitment_peers removes the file
    and marks the index row; a commitment by another peer, or retention off, removes nothing."""
    store = _store(tmp_path, sessions, delete_after_commit=True, commitment_peers=["pacs"])
    a, b, c = _ingest(store, 3)
    retention = Retention(store.settings, store)
    assert retention.apply("archive", [a]) == 0
    off = Retention(StorageSettings(data_dir=tmp_path / "data", commitment_peers=["pacs"]), store)
    assert off.apply("pacs", [a]) == 0
    assert retention.apply("pacs", [a, b, a]) == 2
    assert _present(store, sessions) == {a: False, b: False, c: True}
    with sessions() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
    assert rows[a].deleted_at is not None and rows[c].deleted_at is None
    assert not (store.root / rows[a].path).exists()
    assert retention.apply("pacs", [a]) == 0  # already removed


def test_store_remove_leaves_other_nodes_files_alone(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """An instance indexed by another node (not a shared data dir) is not ours to remove."""
    store = _store(tmp_path, sessions)
    (uid,) = _ingest(store, 1)
    other = Store(store.settings, sessions, "node-b")
    assert not other.remove(uid, reason="test")
    assert store.remove(uid, reason="test")
    assert _present(store, sessions) == {uid: False}


# ---------------------------------------------------------------- the reconciler


def test_reconciler_statuses(
    repo: JobRepository, commits: CommitmentRepository, tmp_path: Path, engine: Engine
) -> None:
    """The handler answers 0x0113 for an unknown event type and 0x0110 for an undecodable data
    set, changing nothing; a valid report is 0x0000 and wakes the job (and the workers)."""
    job = _requested(repo, commits, "2.25.20")
    woken: list[bool] = []
    reconciler = Reconciler(commits, Retention(StorageSettings(), None), lambda: woken.append(True))
    data = encode_report(_report("2.25.20", UIDS), EXPLICIT_VR_LE)
    assert reconciler.process(3, data, EXPLICIT_VR_LE, PACS).status == 0x0113
    assert reconciler.process(1, b"\xff\xff", EXPLICIT_VR_LE, PACS).status == 0x0110
    assert repo.get(job.id).state is JobState.WAITING and not woken
    assert reconciler.process(1, data, EXPLICIT_VR_LE, PACS).status == 0x0000
    assert woken == [True]
    with Session(engine) as s:
        assert s.get(CommitTransaction, "2.25.20").state == "reported"  # type: ignore[union-attr]


@pytest.fixture
def node(tmp_path: Path, db_url: str, engine: Engine) -> Iterator[Runtime]:
    """A node (SCP with the reconciler wired) with a reporting peer and one that may not."""
    write_peers(
        tmp_path,
        {
            "pacs": {
                "ae_title": "FAKECOMMIT",
                "host": "127.0.0.1",
                "port": 104,
                "accept": ["echo", "commitment_report"],
            },
            "mute": {"ae_title": "MUTE", "host": "127.0.0.1", "port": 104, "accept": ["echo"]},
        },
    )
    with running_node(make_settings(tmp_path, db_url)) as runtime:
        yield runtime


def test_scp_accepts_the_scp_role_for_reports(node: Runtime) -> None:
    """A peer opening a new association and proposing the SCP role for Storage Commitment
    Push Model gets it, and its report reaches the reconciler (unknown transaction: 0x0110);
    a peer whose accept list lacks commitment_report cannot send one."""
    fake = FakeCommitmentSCP()
    fake.target = ("127.0.0.1", node.server.port, "CTNODE")
    assert fake.send_report("2.25.404", [(CT_IMAGE, UIDS[0])]) == 0x0110
    assert fake.send_report("2.25.404", [(CT_IMAGE, UIDS[0])], calling_ae="MUTE") is None
