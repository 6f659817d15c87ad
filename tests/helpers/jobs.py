"""Read (and submit) a node's jobs in-process (faster than a CLI process per call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctnode.config import load_settings
from ctnode.daemon import open_database
from ctnode.db.engine import create_db_engine
from ctnode.peers import load_peers
from ctnode.queue.jobs import JobKind
from ctnode.queue.report import job_report
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.scu.push import collect_files
from tests.helpers.procs import CtnodeProcess
from tests.helpers.waiting import wait_until


def repo_of(node: CtnodeProcess) -> JobRepository:
    """A repository on the node's database (its configured URL or SQLite in its data dir)."""
    url = node.config.get("database", {}).get("url") or f"sqlite:///{node.data_dir / 'ctnode.db'}"
    return JobRepository(create_db_engine(url, busy_timeout=30))


def job_json(node: CtnodeProcess, job_id: int) -> dict[str, Any]:
    """The `jobs show --json` report of a job."""
    repo = repo_of(node)
    try:
        return job_report(repo, job_id)
    finally:
        repo.engine.dispose()


def wait_job(
    node: CtnodeProcess, job_id: int, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    """Poll until the job is in one of *states*; returns its report."""
    repo = repo_of(node)
    try:

        def reached() -> dict[str, Any] | None:
            report = job_report(repo, job_id)
            return report if report["state"] in states else None

        return wait_until(
            reached,
            timeout,
            interval=0.1,
            message=lambda: f"job {job_id} in {states}: {job_report(repo, job_id)}",
        )
    finally:
        repo.engine.dispose()


def submit_push(node: CtnodeProcess, peer: str, *paths: Path) -> int:
    """Queue a push of *paths* to *peer* as ``ctnode push`` does, in-process (no CLI start-up
    cost); returns the job id."""
    settings = load_settings(node.config_path)
    target = load_peers(settings.peers_dir).get(peer)
    items, skipped = collect_files(paths)
    assert items and not skipped, skipped
    policy = RetryPolicy.from_settings(target.config.retry or settings.queue.retry)
    repo = JobRepository(open_database(settings, migrate_sqlite=True))
    try:
        job, _ = repo.submit(
            JobKind.PUSH,
            peer,
            {"source": "files", "paths": [str(p) for p in paths]},
            items,
            policy=policy,
            node_name=settings.node.name,
        )
    finally:
        repo.engine.dispose()
    return job.id


def submit_move(node: CtnodeProcess, peer: str, study: str) -> int:
    """Queue a C-MOVE of *study* from *peer* to the node itself as ``ctnode move --study``
    does, in-process; returns the job id."""
    from ctnode.scu.move_request import make_request

    settings = load_settings(node.config_path)
    target = load_peers(settings.peers_dir).get(peer)
    policy = RetryPolicy.from_settings(target.config.retry or settings.queue.retry)
    repo = JobRepository(open_database(settings, migrate_sqlite=True))
    try:
        job, _ = repo.submit(
            JobKind.MOVE,
            peer,
            make_request(study).to_payload(),
            policy=policy,
            node_name=settings.node.name,
        )
    finally:
        repo.engine.dispose()
    return job.id


def submit_commit(node: CtnodeProcess, peer: str, *paths: Path) -> int:
    """Queue a storage commitment request for the files *paths* to *peer* as ``ctnode commit
    PEER PATH...`` does, in-process; returns the job id."""
    from ctnode.scu.commit_submit import commit_policy

    settings = load_settings(node.config_path)
    target = load_peers(settings.peers_dir).get(peer)
    items, skipped = collect_files(paths)
    assert items and not skipped, skipped
    repo = JobRepository(open_database(settings, migrate_sqlite=True))
    try:
        job, _ = repo.submit(
            JobKind.COMMIT,
            peer,
            {"source": "files", "paths": [str(p) for p in paths]},
            items,
            policy=commit_policy(settings, target),
            node_name=settings.node.name,
        )
    finally:
        repo.engine.dispose()
    return job.id
