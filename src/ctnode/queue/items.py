"""The statements that write a job's item rows, run inside ``JobRepository``'s transactions (which
fence them on the lease first): items created with their job, outcomes recorded after sending,
items created or updated by SOP Instance UID as a move's instances arrive. None commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from ctnode.db.models import JobItem
from ctnode.queue.jobs import ItemOutcome, ItemState, ItemUpsert, NewItem
from ctnode.queue.rows import chunks

_ITEMS: Table = JobItem.__table__  # type: ignore[assignment]
#: An item's outcome, and one more attempt on it (executemany, one row per item).
_RECORD_OUTCOME = (
    update(_ITEMS)
    .where(_ITEMS.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        updated_at=bindparam("b_at"),
        attempts=_ITEMS.c.attempts + 1,
    )
)

#: Item states that mean the instance arrived (a later failure never overwrites them).
_DELIVERED = (ItemState.SUCCEEDED.value, ItemState.WARNING.value)


def insert_items(session: Session, job_id: int, items: Sequence[NewItem], now: datetime) -> int:
    """Create *items* as job *job_id*'s pending items, numbered in order; returns how many."""
    rows = [
        {
            "job_id": job_id,
            "seq": seq,
            "state": ItemState.PENDING.value,
            "sop_class_uid": it.sop_class_uid,
            "sop_instance_uid": it.sop_instance_uid,
            "transfer_syntax_uid": it.transfer_syntax_uid,
            "path": it.path,
            "attempts": 0,
            "updated_at": now,
        }
        for seq, it in enumerate(items)
    ]
    for chunk in chunks(rows):
        session.execute(insert(JobItem), list(chunk))
    return len(rows)


def record_outcomes(session: Session, outcomes: Sequence[ItemOutcome], now: datetime) -> None:
    """Write each item's outcome and count one more attempt on it."""
    if not outcomes:
        return
    # One plain executemany (not the ORM's bulk update): this runs every BATCH_ITEMS
    # instances of a push, on the sending thread.
    session.execute(
        _RECORD_OUTCOME,
        [
            {
                "b_id": o.item_id,
                "b_state": o.state.value,
                "b_status": o.status,
                "b_error": o.error,
                "b_at": now,
            }
            for o in outcomes
        ],
    )


def upsert_arrivals(
    session: Session, job_id: int, items: Sequence[ItemUpsert], now: datetime
) -> None:
    """Create or update job *job_id*'s items by SOP Instance UID (the last of *items* for a UID
    wins); a failure never overwrites an item that already arrived (succeeded or warning)."""
    latest = {item.sop_instance_uid: item for item in items}
    uids = list(latest)
    existing: dict[str, tuple[int, str]] = {}
    for uid_chunk in chunks(uids):
        for item_id, uid, state in session.execute(
            select(JobItem.id, JobItem.sop_instance_uid, JobItem.state).where(
                JobItem.job_id == job_id, JobItem.sop_instance_uid.in_(uid_chunk)
            )
        ):
            if uid is not None:
                existing[uid] = (item_id, state)
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    max_seq = session.scalar(select(func.max(JobItem.seq)).where(JobItem.job_id == job_id))
    next_seq = 0 if max_seq is None else int(max_seq) + 1
    for uid, item in latest.items():
        row = {
            "state": item.state.value,
            "status": item.status,
            "error": item.error,
            "updated_at": now,
        }
        if uid in existing:
            item_id, state = existing[uid]
            if item.state is ItemState.FAILED and state in _DELIVERED:
                continue
            updates.append({"id": item_id, **row})
        else:
            inserts.append(
                {
                    "job_id": job_id,
                    "seq": next_seq,
                    "sop_class_uid": item.sop_class_uid,
                    "sop_instance_uid": uid,
                    "attempts": 1,
                    **row,
                }
            )
            next_seq += 1
    for chunk in chunks(updates):
        session.execute(update(JobItem), list(chunk))
        session.execute(
            update(JobItem)
            .where(JobItem.id.in_([u["id"] for u in chunk]))
            .values(attempts=JobItem.attempts + 1)
        )
    for chunk in chunks(inserts):
        session.execute(insert(JobItem), list(chunk))
