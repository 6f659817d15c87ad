"""A move attempt's bookkeeping (pure): the counts of its finished C-MOVEs and of the one in
flight, the instances that arrived (as job items: succeeded, or warning when quarantined), the
ones the PACS reported failed or that are still missing (failed items), and the ``progress``
and ``result`` the job shows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ctnode.dicom import status as st
from ctnode.move_registry import Arrival
from ctnode.queue.jobs import ItemState, ItemUpsert
from ctnode.scu.move_outcome import Counts, MoveFinal
from ctnode.scu.move_request import MoveRequest


class MoveTally:
    """What one move attempt has counted so far."""

    def __init__(self, request: MoveRequest, destination: str, *, to_self: bool) -> None:
        self.request = request
        self.destination = destination
        self.to_self = to_self
        #: "request" (the request as submitted) or "missing" (only the missing instances).
        self.mode = "request"
        #: Retrying: the instances moved again, per series.
        self.missing: dict[str, list[str]] = {}
        self.done_counts = Counts()
        #: The counts of the C-MOVE in flight (its latest pending response).
        self.current = Counts()
        self.arrived: dict[str, Arrival] = {}
        self.failed_uids: set[str] = set()

    def resume(self, missing: Mapping[str, Sequence[str]]) -> None:
        """This attempt moves only the *missing* instances."""
        self.mode = "missing"
        self.missing = {series: list(uids) for series, uids in missing.items()}

    def missing_count(self) -> int:
        """How many instances this attempt moves again."""
        return sum(len(u) for u in self.missing.values())

    def note_arrivals(self, arrivals: Iterable[Arrival]) -> list[ItemUpsert]:
        """Count *arrivals*; the job items they become."""
        upserts: list[ItemUpsert] = []
        for arrival in arrivals:
            self.arrived[arrival.sop_instance_uid] = arrival
            quarantined = arrival.outcome == "quarantined"
            upserts.append(
                ItemUpsert(
                    arrival.sop_instance_uid,
                    ItemState.WARNING if quarantined else ItemState.SUCCEEDED,
                    sop_class_uid=arrival.sop_class_uid,
                    status=st.SUCCESS,
                    error="a different copy was already stored; this one was quarantined"
                    if quarantined
                    else None,
                )
            )
        return upserts

    def begin_move(self) -> None:
        """A C-MOVE starts: nothing in flight counted yet."""
        self.current = Counts()

    def end_move(self, final: MoveFinal) -> None:
        """A C-MOVE ended with *final*: its counts join the finished ones (what a cancel left
        remaining stays in flight), its failed instances are noted."""
        self.current = Counts()
        self.done_counts = self.done_counts + Counts(
            0, final.counts.completed, final.counts.failed, final.counts.warning
        )
        if final.cancelled or final.status == st.CANCEL:
            self.current.remaining = final.counts.remaining
        self.failed_uids.update(final.failed_uids)

    def failed_items(self, status: int | None) -> list[ItemUpsert]:
        """Towards ctnode: what the PACS reported failed and what is still missing, and did not
        arrive, as failed items."""
        if not self.to_self:
            return []
        still_missing = {u for uids in self.missing.values() for u in uids} - set(self.arrived)
        return [
            ItemUpsert(
                uid,
                ItemState.FAILED,
                status=status,
                error="not received: the PACS reported this sub-operation as failed"
                if uid in self.failed_uids
                else "not received",
            )
            for uid in sorted((self.failed_uids | still_missing) - set(self.arrived))
        ]

    def _totals(self) -> dict[str, int]:
        """Completed, failed and warning sub-operations so far (the one in flight included)."""
        total = self.done_counts + self.current
        return {"completed": total.completed, "failed": total.failed, "warning": total.warning}

    def progress(self) -> dict[str, Any]:
        """The job's ``progress``: counts so far (and arrivals towards ctnode)."""
        out: dict[str, Any] = {"remaining": self.current.remaining, **self._totals()}
        if self.to_self:
            out["arrived"] = len(self.arrived)
        return out

    def result(self, code: int | None) -> dict[str, Any]:
        """The job's ``result``: counts of this attempt and where things went."""
        out: dict[str, Any] = {
            "level": self.request.level,
            "destination": self.destination,
            "to_self": self.to_self,
            "mode": self.mode,
            "status": st.hex_status(code),
            **self._totals(),
            "remaining": self.current.remaining,
        }
        if self.to_self:
            out["arrived"] = len(self.arrived)
        if self.mode == "missing":
            out["missing"] = self.missing_count()
        return out
