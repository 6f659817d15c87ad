"""The full JSON report of a job (``ctnode jobs show --json``)."""

from __future__ import annotations

from typing import Any

from ctnode.dicom.status import hex_status
from ctnode.queue.commit_rounds import CommitmentRepository
from ctnode.queue.jobs import ItemState, JobKind
from ctnode.queue.repository import JobRepository


def job_report(repo: JobRepository, job_id: int) -> dict[str, Any]:
    """Job JSON plus its failed items (with reasons) and its event trail."""
    job = repo.get(job_id)
    failed = [
        {
            "sop_instance_uid": i.sop_instance_uid,
            "path": i.path,
            "status": hex_status(i.status),
            "error": i.error,
        }
        for i in repo.items(job_id, [ItemState.FAILED])
    ]
    report = {
        **job.to_json(),
        "failed_items": failed,
        "events": [e.to_json() for e in repo.events(job_id)],
    }
    if job.kind is JobKind.COMMIT:
        report["commitment"] = commitment_report(repo, job_id)
    if "route" in job.payload:  # a forward of a route (routing), or its commitment
        report["route"] = job.payload["route"]
    return report


def commitment_report(repo: JobRepository, job_id: int) -> dict[str, Any]:
    """A commit job's transactions and the commitment state of each instance."""
    commits = CommitmentRepository(repo)
    return {
        "transactions": [t.to_json() for t in commits.transactions(job_id)],
        "instances": [i.to_json() for i in commits.instance_states(job_id)],
    }
