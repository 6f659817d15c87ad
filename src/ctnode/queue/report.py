"""The full JSON report of a job (``ctnode jobs show --json``)."""

from __future__ import annotations

from typing import Any

from ctnode.dicom.status import hex_status
from ctnode.queue.jobs import ItemState
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
    return {
        **job.to_json(),
        "failed_items": failed,
        "events": [e.to_json() for e in repo.events(job_id)],
    }
