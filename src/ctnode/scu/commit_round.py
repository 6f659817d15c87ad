"""A commitment round's items (pure): which items count as committed, which are asked about,
the Referenced SOP Sequence of a request, the job's summary counts, and the message of a round
that left instances not committed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ctnode.dicom import status as st
from ctnode.dicom.commitment_messages import SopReference
from ctnode.queue.jobs import ItemRow, ItemState

#: Item states of an instance the peer committed.
DONE_STATES = (ItemState.SUCCEEDED, ItemState.WARNING)


def in_states(items: Iterable[ItemRow], *states: ItemState) -> list[ItemRow]:
    """The *items* in one of *states*, in order."""
    return [i for i in items if i.state in states]


def outstanding(items: Iterable[ItemRow]) -> list[ItemRow]:
    """The *items* not committed (yet), in order."""
    return [i for i in items if i.state not in DONE_STATES]


def references(items: Iterable[ItemRow]) -> list[SopReference]:
    """The Referenced SOP Sequence asking about *items*."""
    return [SopReference(str(i.sop_class_uid), str(i.sop_instance_uid)) for i in items]


def summary(items: Sequence[ItemRow], requests: int) -> dict[str, Any]:
    """The commit job's ``result``: counts of its items and of the requests made."""
    committed = sum(1 for i in items if i.state in DONE_STATES)
    failed = sum(1 for i in items if i.state is ItemState.FAILED)
    return {
        "total": len(items),
        "committed": committed,
        "failed": failed,
        "pending": len(items) - committed - failed,
        "requests": requests,
    }


def unreported_reason(*, expired: bool, commit_timeout: float) -> str:
    """Why an instance still pending after a round was not committed."""
    if expired:
        return f"no report within commit_timeout ({commit_timeout:g} s)"
    return "not in the report"


@dataclass(frozen=True, slots=True)
class Shortfall:
    """What a round left not committed: failed items, items the report left out, and the
    message that says so."""

    failed: list[ItemRow]
    unreported: list[ItemRow]
    message: str

    @property
    def status(self) -> int | None:
        """The status of the first failed item (None when none failed)."""
        return self.failed[0].status if self.failed else None


def shortfall(items: Sequence[ItemRow], peer_name: str, why: str) -> Shortfall:
    """``N of M instance(s) not committed by peer: F failed (first: …), U <why>``."""
    left = outstanding(items)
    failed = in_states(left, ItemState.FAILED)
    unreported = in_states(left, ItemState.PENDING)
    parts = []
    if failed:
        first = failed[0]
        parts.append(
            f"{len(failed)} failed (first: {first.sop_instance_uid} "
            f"{st.describe(first.status) if first.status is not None else first.error})"
        )
    if unreported:
        parts.append(f"{len(unreported)} {why}")
    message = f"{len(left)} of {len(items)} instance(s) not committed by {peer_name}: " + ", ".join(
        parts
    )
    return Shortfall(failed, unreported, message)
