"""Read (and submit) a node's jobs in-process (faster than a CLI process per call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctnode import submit
from ctnode.config import load_settings
from ctnode.db.engine import create_db_engine
from ctnode.queue.report import job_report
from ctnode.queue.repository import JobRepository
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
    cost, the node not poked); returns the job id."""
    settings = load_settings(node.config_path)
    return _job_id(submit.submit_push(settings, peer=peer, paths=paths, wake=False))


def submit_move(node: CtnodeProcess, peer: str, study: str) -> int:
    """Queue a C-MOVE of *study* from *peer* to the node itself as ``ctnode move --study``
    does, in-process; returns the job id."""
    from ctnode.scu.move_request import make_request

    settings = load_settings(node.config_path)
    request = make_request(study)
    return _job_id(submit.submit_move(settings, peer=peer, request=request, wake=False))


def submit_commit(node: CtnodeProcess, peer: str, *paths: Path) -> int:
    """Queue a storage commitment request for the files *paths* to *peer* as ``ctnode commit
    PEER PATH...`` does, in-process; returns the job id."""
    settings = load_settings(node.config_path)
    return _job_id(submit.submit_commit(settings, peer=peer, paths=paths, wake=False))


def _job_id(submission: submit.Submission) -> int:
    """The id of the job just submitted (every file under the paths is in it)."""
    submission.repository.engine.dispose()
    assert not submission.skipped, submission.skipped
    return submission.job.id
