"""Who committed what: the ``instance_commitments`` table, one row per instance and peer that
committed it (with the transaction that said so and when).

A report's "committed" verdict records the instance for its peer (a later report of the same
peer replaces the row); a "failed" verdict withdraws it: a peer that now says it does not hold
an instance no longer vouches for it. Read by ``ctnode instances`` (``ctnode.index``) and by the
commitment SCP (whether its upstream peers committed what it was asked about). Every function
works inside the caller's transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ctnode.db.models import InstanceCommitment
from ctnode.queue.rows import chunks


def record_commitments(
    session: Session,
    postgres: bool,
    peer: str,
    transaction_uid: str,
    sop_instance_uids: Sequence[str],
    now: datetime,
) -> None:
    """*peer* committed *sop_instance_uids* in *transaction_uid* (now): insert or replace."""
    rows = [
        {
            "sop_instance_uid": uid,
            "peer": peer,
            "transaction_uid": transaction_uid,
            "committed_at": now,
        }
        for uid in sop_instance_uids
    ]
    insert_fn = pg_insert if postgres else sqlite_insert
    for row_chunk in chunks(rows):
        stmt = insert_fn(InstanceCommitment).values(list(row_chunk))
        stmt = stmt.on_conflict_do_update(
            index_elements=["sop_instance_uid", "peer"],
            set_={
                "transaction_uid": stmt.excluded.transaction_uid,
                "committed_at": stmt.excluded.committed_at,
            },
        )
        session.execute(stmt)


def withdraw_commitments(session: Session, peer: str, sop_instance_uids: Sequence[str]) -> None:
    """*peer* no longer vouches for *sop_instance_uids* (it reported them failed)."""
    for uid_chunk in chunks(sop_instance_uids):
        session.execute(
            delete(InstanceCommitment).where(
                InstanceCommitment.peer == peer,
                InstanceCommitment.sop_instance_uid.in_(uid_chunk),
            )
        )


def committed_by(session: Session, peer: str, sop_instance_uids: Iterable[str]) -> set[str]:
    """Which of *sop_instance_uids* *peer* has committed."""
    uids = list(dict.fromkeys(sop_instance_uids))
    out: set[str] = set()
    for chunk in chunks(uids):
        out.update(
            session.scalars(
                select(InstanceCommitment.sop_instance_uid).where(
                    InstanceCommitment.peer == peer,
                    InstanceCommitment.sop_instance_uid.in_(chunk),
                )
            )
        )
    return out
