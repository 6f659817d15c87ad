"""Submitting commit jobs from a push: the retry policy of a commit job, the instances a push
job delivered, and the push operation's ``after_success`` hook behind ``push --commit``."""

from __future__ import annotations

from collections.abc import Callable

from ctnode.config import Settings
from ctnode.errors import UsageError
from ctnode.queue.attempt import Attempt
from ctnode.queue.jobs import Job, JobKind, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.scu.commit_round import DONE_STATES


def items_from_push_job(repo: JobRepository, job_id: int, peer: str) -> tuple[Job, list[NewItem]]:
    """Exactly the instances push job *job_id* delivered to *peer* (UsageError otherwise)."""
    job = repo.get(job_id)
    if job.kind is not JobKind.PUSH:
        raise UsageError(f"job {job_id} is a {job.kind.value} job, not a push")
    if job.peer != peer:
        raise UsageError(f"job {job_id} pushed to {job.peer!r}, not {peer!r}")
    items = [
        NewItem(i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.path)
        for i in repo.items(job_id, list(DONE_STATES))
    ]
    return job, items


def commit_after_push(settings: Settings, repo: JobRepository) -> Callable[[Attempt], int | None]:
    """The push operation's ``after_success`` hook: submit the commit job of ``push --commit``
    for exactly the instances the push delivered (once: keyed on the push job)."""

    def submit(attempt: Attempt) -> int | None:
        push_job = attempt.job
        peer = attempt.peer
        _, items = items_from_push_job(repo, push_job.id, peer.name)
        if not items:
            return None
        job, created = repo.submit(
            JobKind.COMMIT,
            peer.name,
            {
                "source": "push",
                "push_job": push_job.id,
                # a forward's commitment belongs to its route (jobs show --json)
                **({"route": push_job.payload["route"]} if "route" in push_job.payload else {}),
            },
            items,
            policy=RetryPolicy.for_peer(settings, peer),
            priority=push_job.priority,
            node_name=push_job.node_name,
            idempotency_key=f"commit-after-push-{push_job.id}",
        )
        if created:
            attempt.log.info("commit.submitted", commit_job=job.id, instances=len(items))
        return job.id

    return submit
