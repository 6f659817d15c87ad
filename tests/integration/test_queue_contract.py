"""The queue contract, run on SQLite and on PostgreSQL: claiming, leases, fencing, retries,
cancellation, priorities, pinning, idempotency."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ctnode.db import migrate
from ctnode.db.engine import create_db_engine
from ctnode.queue.jobs import ItemOutcome, ItemState, JobKind, JobState, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, initial_delay=5, multiplier=2, max_delay=60, jitter=0.1)


class Clock:
    """How far a test moved the repository's clock past the database's (no sleeping past
    leases and deadlines: the repository still reads the database clock, plus this)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> timedelta:
        return self.offset

    def advance(self, seconds: float) -> None:
        """Move the repository's now *seconds* forward."""
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    """The repository's clock offset, moved forward by the tests."""
    return Clock()


@pytest.fixture
def repo(engine: Engine, clock: Clock) -> JobRepository:
    """A repository with a 1 s lease on a migrated database, on the test's clock."""
    return JobRepository(engine, lease_seconds=1, clock_offset=clock)


def _submit(repo: JobRepository, n: int = 1, **kw: object) -> list[int]:
    ids = []
    for i in range(n):
        job, created = repo.submit(
            JobKind.PUSH,
            "pacs",
            {"i": i},
            [NewItem("1.2", f"1.2.{i}.1", "1.2.840.10008.1.2", "/x")],
            policy=POLICY,
            **kw,
        )  # type: ignore[arg-type]
        assert created
        ids.append(job.id)
    return ids


def _drain(url: str, owner: str, threads: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Worker process: claim and finish jobs with several threads until none are left."""
    engine = create_db_engine(url, busy_timeout=30)
    repo = JobRepository(engine, lease_seconds=60)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        me = f"{owner}-{n}"
        idle = 0
        while idle < 3:
            job = repo.claim(me, "node")
            if job is None:
                idle += 1
                time.sleep(0.05)
                continue
            idle = 0
            assert repo.finish(job.id, me, JobState.SUCCEEDED)
            with lock:
                claimed.append(job.id)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(claimed)
    engine.dispose()


@pytest.mark.slow
def test_no_job_claimed_twice_by_two_processes_of_four_workers(
    repo: JobRepository, db_url: str
) -> None:
    """2 processes x 4 workers drain 120 jobs: every job claimed and finished exactly once."""
    ids = _submit(repo, 120)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(db_url, f"proc{p}", 4, out)) for p in range(2)]
    for p in procs:
        p.start()
    claimed = [*out.get(timeout=120), *out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == sorted(ids)
    assert all(repo.get(i).state is JobState.SUCCEEDED for i in ids)
    assert all(repo.get(i).attempts == 1 for i in ids)


def test_expired_lease_is_reclaimed(repo: JobRepository, clock: Clock) -> None:
    """A job whose worker stopped renewing is claimed again after the lease, attempt 2."""
    (job_id,) = _submit(repo)
    first = repo.claim("a", "node")
    assert first is not None and first.attempts == 1
    assert repo.claim("b", "node") is None  # lease still valid
    clock.advance(1.3)
    second = repo.claim("b", "node")
    assert second is not None and second.id == job_id and second.attempts == 2
    assert second.lease_owner == "b"


def test_owner_never_steals_from_itself(repo: JobRepository, clock: Clock) -> None:
    """An expired lease is not reclaimed by the same owner (its own attempt is still running,
    e.g. after the local clock stepped forward)."""
    _submit(repo)
    assert repo.claim("a", "node") is not None
    clock.advance(1.3)
    assert repo.claim("a", "node") is None


def test_late_completion_after_lease_lost_is_refused(repo: JobRepository, clock: Clock) -> None:
    """The worker that lost its lease cannot finish, record items or retry the job."""
    (job_id,) = _submit(repo)
    assert repo.claim("a", "node") is not None
    clock.advance(1.3)
    assert repo.claim("b", "node") is not None
    item = repo.items(job_id)[0]
    assert not repo.finish(job_id, "a", JobState.SUCCEEDED)
    assert not repo.record_items(job_id, "a", [ItemOutcome(item.id, ItemState.SUCCEEDED)])
    assert not repo.schedule_retry(job_id, "a", 1, status=None, error="x")
    assert repo.renew(job_id, "a") == (False, False)
    assert repo.get(job_id).state is JobState.RUNNING
    assert repo.finish(job_id, "b", JobState.SUCCEEDED)
    assert repo.get(job_id).state is JobState.SUCCEEDED
    assert [e.event for e in repo.events(job_id)].count("succeeded") == 1


def test_retry_schedule_uses_the_delay(repo: JobRepository, clock: Clock) -> None:
    """A scheduled retry is not claimable before not_before, and is after it."""
    (job_id,) = _submit(repo)
    assert repo.claim("a", "node") is not None
    assert repo.schedule_retry(job_id, "a", 1.0, status=0xA700, error="busy")
    job = repo.get(job_id)
    assert job.state is JobState.QUEUED and job.last_status == 0xA700
    assert job.to_json()["last_status"] == "0xA700"
    assert repo.claim("a", "node") is None
    clock.advance(1.2)
    again = repo.claim("a", "node")
    assert again is not None and again.attempts == 2
    events = [e.event for e in repo.events(job_id)]
    assert events == ["submitted", "claimed", "retry_scheduled", "claimed"]


def test_cancel_queued_and_running(repo: JobRepository) -> None:
    """Queued jobs are cancelled at once; running ones get cancel_requested via the lease."""
    queued, running = _submit(repo, 2)
    assert repo.cancel(queued).state is JobState.CANCELLED
    claimed = repo.claim("a", "node")
    assert claimed is not None and claimed.id == running
    after = repo.cancel(running)
    assert after.state is JobState.RUNNING and after.cancel_requested
    assert repo.renew(running, "a") == (True, True)
    assert repo.finish(running, "a", JobState.CANCELLED)
    assert repo.get(running).state is JobState.CANCELLED


def test_priorities_then_fifo(repo: JobRepository) -> None:
    """Higher priority first; equal priorities in submission order."""
    low1 = _submit(repo)[0]
    high = _submit(repo, priority=5)[0]
    low2 = _submit(repo)[0]
    order = []
    while (job := repo.claim("a", "node")) is not None:
        order.append(job.id)
    assert order == [high, low1, low2]


def test_jobs_pinned_to_a_node(repo: JobRepository) -> None:
    """A job on one node's files is claimed only by that node; unpinned by anyone."""
    pinned = _submit(repo, node_name="node-b")[0]
    free = _submit(repo)[0]
    job = repo.claim("a", "node-a")
    assert job is not None and job.id == free
    assert repo.claim("a", "node-a") is None
    job = repo.claim("b", "node-b")
    assert job is not None and job.id == pinned


def test_excluded_peers_are_skipped(repo: JobRepository) -> None:
    """Jobs for a peer at its association limit are left for later."""
    _submit(repo)
    assert repo.claim("a", "node", exclude_peers=["pacs"]) is None
    assert repo.claim("a", "node") is not None


def test_idempotency_key(repo: JobRepository) -> None:
    """Submitting twice with the same key gives the same job."""
    first, created = repo.submit(JobKind.PUSH, "pacs", {}, policy=POLICY, idempotency_key="k1")
    again, created_again = repo.submit(
        JobKind.PUSH, "pacs", {}, policy=POLICY, idempotency_key="k1"
    )
    assert created and not created_again and again.id == first.id


def test_item_outcomes_and_counts(repo: JobRepository) -> None:
    """Item outcomes are recorded in one batch and counted in the job JSON."""
    job, _ = repo.submit(
        JobKind.PUSH,
        "pacs",
        {},
        [NewItem("1.2", f"1.2.{i}", "1.2.840.10008.1.2", "/x") for i in range(4)],
        policy=POLICY,
    )
    assert repo.claim("a", "node") is not None
    items = repo.items(job.id)
    assert repo.record_items(
        job.id,
        "a",
        [
            ItemOutcome(items[0].id, ItemState.SUCCEEDED, 0),
            ItemOutcome(items[1].id, ItemState.WARNING, 0xB000),
            ItemOutcome(items[2].id, ItemState.FAILED, 0xA900, "does not match"),
        ],
    )
    counts = repo.get(job.id).to_json()["items"]
    assert counts == {"total": 4, "succeeded": 1, "warning": 1, "failed": 1, "pending": 1}
    assert [i.attempts for i in repo.items(job.id)] == [1, 1, 1, 0]


def test_retry_failed_job_resets_failed_items(repo: JobRepository) -> None:
    """`jobs retry`: a failed job is queued again with its failed items pending."""
    job, _ = repo.submit(
        JobKind.PUSH,
        "pacs",
        {},
        [NewItem("1.2", "1.2.3", "1.2.840.10008.1.2", "/x")],
        policy=POLICY,
    )
    assert repo.claim("a", "node") is not None
    item = repo.items(job.id)[0]
    repo.record_items(job.id, "a", [ItemOutcome(item.id, ItemState.FAILED, 0x0122, "no")])
    repo.finish(job.id, "a", JobState.FAILED, error="1 failed")
    again = repo.retry(job.id)
    assert again.state is JobState.QUEUED and again.attempts == 0
    assert again.items.pending == 1


def test_release_does_not_count_the_attempt(repo: JobRepository) -> None:
    """A job given back at shutdown is runnable at once and keeps its attempt count."""
    (job_id,) = _submit(repo)
    assert repo.claim("a", "node") is not None
    assert repo.release(job_id, "a", "shutdown")
    job = repo.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0


def test_waiting_job_becomes_claimable_at_its_deadline(repo: JobRepository, clock: Clock) -> None:
    """`waiting` holds no lease; the job is claimed again once its deadline passes."""
    (job_id,) = _submit(repo)
    assert repo.claim("a", "node") is not None
    assert repo.wait_until(job_id, "a", 1.0, message="waiting for report")
    job = repo.get(job_id)
    assert job.state is JobState.WAITING and job.lease_owner is None
    assert repo.claim("b", "node") is None
    clock.advance(1.2)
    assert repo.claim("b", "node") is not None


def test_summary_counts(repo: JobRepository) -> None:
    """The queue summary counts states and the oldest runnable queued job's age."""
    _submit(repo, 2)
    summary = repo.summary()
    assert summary.by_state == {"queued": 2}
    assert summary.oldest_queued_age is not None and summary.oldest_queued_age >= 0
    assert summary.by_kind_state[("push", "queued")] == 2


def test_times_are_utc_and_ordered(repo: JobRepository) -> None:
    """Created/started/finished times are timezone-aware and consistent."""
    (job_id,) = _submit(repo)
    assert repo.claim("a", "node") is not None
    assert repo.finish(job_id, "a", JobState.SUCCEEDED)
    job = repo.get(job_id)
    assert job.started_at is not None and job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at
    assert job.finished_at.utcoffset() == timedelta(0)


def test_reads_do_not_wait_for_the_sqlite_write_lock(tmp_path: Path) -> None:
    """While another connection holds SQLite's write lock (an ingest committing), what only
    reads jobs (a job, its items and events, the list, the summary, a submission found again by
    its idempotency key) is answered at once instead of waiting for the lock."""
    db = tmp_path / "ctnode.db"
    engine = create_db_engine(f"sqlite:///{db}", busy_timeout=0.2)
    migrate.upgrade(engine)
    try:
        repo = JobRepository(engine)
        (job_id,) = _submit(repo, idempotency_key="once")
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            assert repo.get(job_id).id == job_id
            assert [j.id for j in repo.list_jobs()] == [job_id]
            assert len(repo.items(job_id)) == 1 and repo.events(job_id)
            assert repo.summary().by_state == {"queued": 1}
            again, created = repo.submit(
                JobKind.PUSH, "pacs", {}, policy=POLICY, idempotency_key="once"
            )
            assert (again.id, created) == (job_id, False)
            assert time.monotonic() - started < 0.2
        finally:
            writer.rollback()
            writer.close()
    finally:
        engine.dispose()
