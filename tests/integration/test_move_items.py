"""C-MOVE arrivals as job items (``JobRepository.record_arrivals``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from ctnode.queue.jobs import ItemState, ItemUpsert, JobKind, JobState
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, initial_delay=5, multiplier=2, max_delay=60, jitter=0.1)


@pytest.fixture
def repo(engine: Engine) -> JobRepository:
    """A repository with a 30 s lease on a migrated database."""
    return JobRepository(engine, lease_seconds=30)


def _running_move(repo: JobRepository) -> int:
    job, _ = repo.submit(JobKind.MOVE, "pacs", {"study": "1.2.3"}, policy=POLICY)
    claimed = repo.claim("me", "node")
    assert claimed is not None and claimed.id == job.id
    return job.id


def test_arrivals_create_items_and_progress(repo: JobRepository) -> None:
    """New SOP Instance UIDs become items in order, with the progress, in one transaction; the
    same UID again updates its item instead of adding one."""
    job_id = _running_move(repo)
    ok = repo.record_arrivals(
        job_id,
        "me",
        [
            ItemUpsert("1.2.3.1", ItemState.SUCCEEDED, sop_class_uid="1.2.840.10008.5.1.4.1.1.2"),
            ItemUpsert("1.2.3.2", ItemState.SUCCEEDED),
        ],
        progress={"remaining": 1, "completed": 2, "failed": 0, "warning": 0, "arrived": 2},
    )
    assert ok
    assert repo.record_arrivals(
        job_id, "me", [ItemUpsert("1.2.3.2", ItemState.WARNING, error="quarantined")]
    )
    job = repo.get(job_id)
    assert job.items.total == 2 and job.items.succeeded == 1 and job.items.warning == 1
    assert job.progress == {"remaining": 1, "completed": 2, "failed": 0, "warning": 0, "arrived": 2}
    items = repo.items(job_id)
    assert [(i.seq, i.sop_instance_uid) for i in items] == [(0, "1.2.3.1"), (1, "1.2.3.2")]
    assert items[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert items[1].attempts == 2


def test_failure_never_overwrites_an_arrival(repo: JobRepository) -> None:
    """A failed sub-operation reported for an instance that already arrived leaves it
    delivered; a failed item that arrives later becomes succeeded."""
    job_id = _running_move(repo)
    assert repo.record_arrivals(job_id, "me", [ItemUpsert("1.2.3.1", ItemState.SUCCEEDED)])
    assert repo.record_arrivals(
        job_id,
        "me",
        [
            ItemUpsert("1.2.3.1", ItemState.FAILED, status=0xB000, error="not received"),
            ItemUpsert("1.2.3.2", ItemState.FAILED, status=0xB000, error="not received"),
        ],
    )
    assert repo.get(job_id).items.failed == 1
    assert repo.record_arrivals(job_id, "me", [ItemUpsert("1.2.3.2", ItemState.SUCCEEDED)])
    counts = repo.get(job_id).items
    assert counts.succeeded == 2 and counts.failed == 0


def test_arrivals_are_fenced(repo: JobRepository) -> None:
    """Another owner, or a job no longer running, cannot record arrivals."""
    job_id = _running_move(repo)
    assert not repo.record_arrivals(
        job_id, "someone-else", [ItemUpsert("1.2", ItemState.SUCCEEDED)]
    )
    assert repo.finish(job_id, "me", JobState.SUCCEEDED)
    assert not repo.record_arrivals(job_id, "me", [ItemUpsert("1.2", ItemState.SUCCEEDED)])
    assert repo.get(job_id).items.total == 0


def test_many_arrivals_in_one_batch(repo: JobRepository) -> None:
    """More UIDs than one IN list / insert chunk are handled in chunks."""
    job_id = _running_move(repo)
    uids = [f"1.2.3.{n}" for n in range(1200)]
    assert repo.record_arrivals(job_id, "me", [ItemUpsert(u, ItemState.SUCCEEDED) for u in uids])
    assert repo.record_arrivals(job_id, "me", [ItemUpsert(u, ItemState.WARNING) for u in uids])
    counts = repo.get(job_id).items
    assert counts.total == 1200 and counts.warning == 1200
