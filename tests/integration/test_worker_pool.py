"""The worker pool when the database stops answering (real SQLite; failures injected into the
repository's writes): no worker dies, no job is left running under a live lease."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from ctnode.config import QueueSettings
from ctnode.db import migrate
from ctnode.db.engine import create_db_engine
from ctnode.peers import load_peers
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome
from ctnode.queue.jobs import JobKind, JobState
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.queue.worker import WorkerPool
from tests.helpers.procs import write_yaml

LOCKED = OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))


class FlakyRepository(JobRepository):
    """Raises "database is locked" from the named methods while ``failing`` is set."""

    def __init__(self, *args: Any, methods: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.methods = methods
        self.failing = True
        self.failures: dict[str, int] = {}

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in super().__getattribute__("methods") and callable(value):

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if self.failing:
                    self.failures[name] = self.failures.get(name, 0) + 1
                    raise LOCKED
                return value(*args, **kwargs)

            return wrapper
        return value


class Quick:
    """An operation whose attempts end at once: transient failure first, then done."""

    def __init__(self) -> None:
        self.attempts = 0

    def run(self, attempt: Attempt) -> AttemptResult:
        self.attempts += 1
        if self.attempts == 1:
            return AttemptResult(Outcome.TRANSIENT, error="peer busy")
        return AttemptResult(Outcome.DONE)


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[set[str]], FlakyRepository]:
    def make(methods: set[str]) -> FlakyRepository:
        engine = create_db_engine(f"sqlite:///{tmp_path / 'q.db'}", busy_timeout=1)
        migrate.upgrade(engine)
        return FlakyRepository(engine, lease_seconds=60, methods=methods)

    return make


def _pool(tmp_path: Path, repo: JobRepository, operation: Any) -> WorkerPool:
    write_yaml(
        tmp_path / "peers" / "peer.yaml", {"ae_title": "PEER", "host": "127.0.0.1", "port": 1}
    )
    registry = load_peers(tmp_path / "peers")
    settings = QueueSettings(workers=2, poll_interval=0.05, lease_seconds=60)
    return WorkerPool(repo, settings, lambda: registry, {JobKind.PUSH: operation}, node_name="n")


async def _until(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def _submit(repo: JobRepository) -> int:
    policy = RetryPolicy(max_attempts=5, initial_delay=0, jitter=0)
    job, _ = repo.submit(JobKind.PUSH, "peer", {}, policy=policy, node_name="n")
    return job.id


def test_outcome_recorded_once_the_database_answers_again(
    tmp_path: Path, make_repo: Callable[[set[str]], FlakyRepository]
) -> None:
    """An attempt ends while the database is locked: recording its retry is retried (the job
    does not stay `running` under the pool's own lease, which the pool never reclaims), and
    both workers are still there for the next job."""
    repo = make_repo({"schedule_retry"})
    operation = Quick()
    pool = _pool(tmp_path, repo, operation)
    first = _submit(repo)

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(pool.run(stop))
        await _until(lambda: repo.failures.get("schedule_retry", 0) >= 2)
        assert repo.get(first).state is JobState.RUNNING
        repo.failing = False
        await _until(lambda: repo.get(first).state is JobState.SUCCEEDED)
        second = _submit(repo)
        await _until(lambda: repo.get(second).state in (JobState.SUCCEEDED, JobState.QUEUED))
        stop.set()
        await asyncio.wait_for(runner, 10)

    asyncio.run(scenario())
    events = [e.event for e in repo.events(first)]
    assert events.count("claimed") == 2 and "retry_scheduled" in events


def test_workers_start_while_the_database_is_unavailable(
    tmp_path: Path, make_repo: Callable[[set[str]], FlakyRepository]
) -> None:
    """The database fails when the pool starts (registration, dead-lease recovery): the
    workers run anyway and the start-up work is done once the database answers."""
    repo = make_repo({"node_started", "lease_owners"})
    pool = _pool(tmp_path, repo, Quick())
    job_id = _submit(repo)

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(pool.run(stop))
        await _until(lambda: repo.get(job_id).state is JobState.SUCCEEDED)
        assert repo.failures["node_started"] >= 1
        repo.failing = False
        await _until(lambda: pool.owner in repo.live_nodes())
        stop.set()
        await asyncio.wait_for(runner, 10)

    asyncio.run(scenario())


def test_a_worker_survives_an_unexpected_error(
    tmp_path: Path, make_repo: Callable[[set[str]], FlakyRepository]
) -> None:
    """A bug while recording an outcome (not a database outage) is logged; the worker goes
    on to the next job."""
    repo = make_repo(set())
    calls = {"n": 0}
    original = repo.finish

    def broken_once(*args: Any, **kwargs: Any) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug")
        return original(*args, **kwargs)

    repo.finish = broken_once  # type: ignore[method-assign]
    done = AttemptResult(Outcome.DONE)

    class Done:
        def run(self, attempt: Attempt) -> AttemptResult:
            return done

    settings = QueueSettings(workers=1, poll_interval=0.05, lease_seconds=60)
    write_yaml(
        tmp_path / "peers" / "peer.yaml", {"ae_title": "PEER", "host": "127.0.0.1", "port": 1}
    )
    registry = load_peers(tmp_path / "peers")
    pool = WorkerPool(repo, settings, lambda: registry, {JobKind.PUSH: Done()}, node_name="n")
    first, second = _submit(repo), _submit(repo)

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(pool.run(stop))
        await _until(lambda: repo.get(second).state is JobState.SUCCEEDED)
        stop.set()
        await asyncio.wait_for(runner, 10)

    asyncio.run(scenario())
    assert repo.get(first).state is JobState.RUNNING  # the bug left it; the worker went on


class CountingRepository(JobRepository):
    """Counts claims."""

    claims = 0

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.claims += 1
        return super().claim(*args, **kwargs)


@pytest.mark.slow
def test_idle_workers_share_polling_and_wake_at_once(tmp_path: Path) -> None:
    """Four idle workers claim about once per poll interval between them (not four times),
    and a wake makes a job submitted meanwhile start at once, well before the next poll."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'q.db'}", busy_timeout=1)
    migrate.upgrade(engine)
    repo = CountingRepository(engine, lease_seconds=60)
    write_yaml(
        tmp_path / "peers" / "peer.yaml", {"ae_title": "PEER", "host": "127.0.0.1", "port": 1}
    )
    registry = load_peers(tmp_path / "peers")
    operation = Quick()
    operation.attempts = 1  # the next attempt succeeds
    settings = QueueSettings(workers=4, poll_interval=0.2, lease_seconds=60)
    pool = WorkerPool(repo, settings, lambda: registry, {JobKind.PUSH: operation}, node_name="n")

    async def scenario() -> tuple[int, float]:
        stop = asyncio.Event()
        runner = asyncio.create_task(pool.run(stop))
        await asyncio.sleep(0.3)  # start-up claims
        before = repo.claims
        await asyncio.sleep(2.0)
        idle_claims = repo.claims - before
        settings_long = QueueSettings(workers=4, poll_interval=30, lease_seconds=60)
        pool.settings = settings_long  # from now on only a wake can start a job quickly
        await asyncio.sleep(0.5)
        job, _ = repo.submit(JobKind.PUSH, "peer", {}, policy=RetryPolicy(max_attempts=3))
        started = asyncio.get_running_loop().time()
        pool.wake()
        while repo.get(job.id).state is not JobState.SUCCEEDED:
            await asyncio.sleep(0.02)
            assert asyncio.get_running_loop().time() - started < 5
        elapsed = asyncio.get_running_loop().time() - started
        stop.set()
        await runner
        return idle_claims, elapsed

    try:
        idle_claims, elapsed = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert idle_claims <= 16  # ~10 expected at one claim per 0.2 s; 40 if each worker polled
    assert elapsed < 2
