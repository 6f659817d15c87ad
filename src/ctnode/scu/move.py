"""Retrieve (Study Root C-MOVE): the ``move`` job operation.

One attempt = one association to the PACS carrying one or more C-MOVE requests:

* **First try** (or nothing has arrived yet): the request as submitted (a study, a series, or
  instances of a series, ``scu.move_request``), with ``MoveDestination`` = ctnode's AE title or
  the ``--dest`` AE.
* **Retry after a partial move** (something arrived before, the destination is ctnode): list
  what the request covers with C-FIND (SERIES, then IMAGE level), subtract what already arrived
  and what the local index holds, and C-MOVE only the missing instances at IMAGE level, per
  series (``scu.move_plan``). If the PACS cannot list instances, the whole request is moved
  again (ctnode stores identical copies once). With a third-party destination, the whole request
  is moved again.

Pending responses become the job's ``progress`` (remaining, completed, failed, warning, plus
``arrived`` when the destination is ctnode). Sub-operations towards ctnode are matched to the job
by ``ctnode.move_registry.MoveRegistry`` and written as job items (one per SOP Instance UID
that arrived; instances the PACS reports as failed become failed items until they arrive;
``scu.move_tally``).

Final statuses (``scu.move_outcome.classify_move``):

* 0x0000 with no failed sub-operations → done. The PACS's completed count is compared with what
  arrived; a difference is reported (``result.arrival_mismatch``, event and log
  ``move.arrival_mismatch``) but does not fail the job.
* 0xB000 or 0xA702 (some or all sub-operations failed), or failed sub-operations → transient:
  the retry policy retries what is missing, then fails with the counts.
* 0xA801 (move destination unknown) → permanent, with what to configure on the PACS.
* 0xFE00 after our C-CANCEL because pending responses went on past ``timeouts.move_total`` →
  transient (retried); 0xA7xx → transient; other refusals (0xA900, 0xCxxx, 0x0122, 0x0124) →
  permanent.
* Success with nothing matched (0 sub-operations) on the first try → permanent ("no such
  study/series on the PACS").
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.contexts import BASIC_SYNTAXES, STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from ctnode.errors import PermanentError, TransientError, UsageError
from ctnode.index import IndexReader
from ctnode.move_registry import MoveRegistry, MoveTracker
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome, StopReason, outcome_of
from ctnode.queue.jobs import ItemState, ItemUpsert
from ctnode.scu.association import params_for
from ctnode.scu.c_find import c_find
from ctnode.scu.c_move import c_move
from ctnode.scu.move_outcome import (
    Counts,
    MoveFinal,
    MovePeer,
    arrival_mismatch_note,
    classify_move,
    node_host,
    nothing_matched_message,
)
from ctnode.scu.move_plan import image_moves, listed_uids, listing_identifier, missing_instances
from ctnode.scu.move_request import MoveRequest
from ctnode.scu.move_tally import MoveTally
from ctnode.scu.services import service_refused
from ctnode.ul.requestor import ContextRequest, Requestor

MOVE_CONTEXTS = (
    ContextRequest(STUDY_ROOT_MOVE, BASIC_SYNTAXES),
    ContextRequest(STUDY_ROOT_FIND, BASIC_SYNTAXES),
)
#: Progress and arrivals are written at most this often while pending responses come in.
FLUSH_SECONDS = 0.5
#: After a C-MOVE's final response, how long to wait for arrivals the PACS counted as completed
#: but the SCP has not noted yet.
ARRIVAL_GRACE = 2.0


class MoveOperation:
    """Runs ``move`` jobs (see the module docstring)."""

    def __init__(
        self,
        node: NodeSettings,
        registry: MoveRegistry,
        index: IndexReader,
        *,
        shared_storage: bool = False,
    ) -> None:
        self.node = node
        self.registry = registry
        #: Which instances are already here (a retry moves only the missing ones).
        self.index = index
        self.shared_storage = shared_storage

    def run(self, attempt: Attempt) -> AttemptResult:
        """One association; one or more C-MOVEs; arrivals recorded as they come."""
        refused = service_refused(attempt.peer, "move", name_file=True)
        if refused is not None:
            return refused
        try:
            request = MoveRequest.from_payload(attempt.job.payload)
        except UsageError as exc:
            return AttemptResult(Outcome.PERMANENT, error=f"invalid move job payload: {exc}")
        return _MoveAttempt(self, attempt, request).execute()


class _MoveAttempt:
    """One attempt: the association, its C-MOVEs, the trackers of their arrivals, and the
    writes of the tally (fenced by the lease)."""

    def __init__(self, op: MoveOperation, attempt: Attempt, request: MoveRequest) -> None:
        self.op = op
        self.attempt = attempt
        self.job = attempt.job
        self.peer = attempt.peer
        self.request = request
        destination = request.destination or op.node.ae_title
        self.p = MovePeer(
            peer_name=self.peer.name,
            peer_ae=self.peer.ae_title,
            destination=destination,
            to_self=destination == op.node.ae_title,
            node_ae=op.node.ae_title,
            node_host=node_host(op.node),
            node_port=op.node.port,
            move_total=self.peer.config.timeouts.move_total,
        )
        self.started = time.monotonic()
        self.deadline = self.started + self.p.move_total
        self.tally = MoveTally(request, destination, to_self=self.p.to_self)
        self.trackers: list[MoveTracker] = []
        self.last_flush = 0.0
        self.lost = False

    # -- writes -------------------------------------------------------------------------------

    def flush(self, extra: Sequence[ItemUpsert] = ()) -> None:
        """Write new arrivals and the progress (fenced); a lost lease stops the attempt."""
        upserts: list[ItemUpsert] = []
        for tracker in self.trackers:
            upserts.extend(self.tally.note_arrivals(tracker.drain()))
        upserts.extend(extra)
        self.last_flush = time.monotonic()
        if self.lost:
            return
        if not self.attempt.repo.record_arrivals(
            self.job.id, self.attempt.owner, upserts, progress=self.tally.progress()
        ):
            self.lost = True
            self.attempt.stop.set(StopReason.LEASE_LOST)

    def on_pending(self, counts: Counts) -> None:
        self.tally.current = counts
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    # -- plan -------------------------------------------------------------------------------

    def plan(self, assoc: Requestor) -> list[MoveRequest] | AttemptResult:
        """The C-MOVEs of this attempt (or a result when nothing is missing)."""
        if not self.p.to_self or self.job.items.delivered == 0:
            return [self.request]
        try:
            expected = self.list_instances(assoc)
            if not any(expected.values()):
                raise PermanentError("C-FIND found no instances")
        except PermanentError as exc:
            self.attempt.repo.event(
                self.job.id,
                "listing_failed",
                attempt=self.job.attempts,
                message=f"cannot list the instances ({exc}); moving the whole request again",
            )
            return [self.request]
        have = {
            i.sop_instance_uid
            for i in self.attempt.repo.items(self.job.id, [ItemState.SUCCEEDED, ItemState.WARNING])
            if i.sop_instance_uid
        }
        everything = [uid for uids in expected.values() for uid in uids]
        here = self.op.index.present(
            [u for u in everything if u not in have],
            node_name=None if self.op.shared_storage else self.op.node.name,
        )
        self.tally.resume(missing_instances(expected, have, here))
        count = self.tally.missing_count()
        self.attempt.repo.event(
            self.job.id,
            "resumed",
            attempt=self.job.attempts,
            message=f"{count} of {len(everything)} instance(s) missing; moving only those",
        )
        if not count:
            return AttemptResult(
                Outcome.DONE,
                result=self.tally.result(None),
                message=f"all {len(everything)} instance(s) are here",
            )
        return image_moves(self.request, self.tally.missing)

    def list_instances(self, assoc: Requestor) -> dict[str, list[str]]:
        """SOP Instance UIDs per series the request covers (C-FIND; PermanentError if not)."""
        request = self.request
        if request.instances:
            assert request.series is not None
            return {request.series: list(request.instances)}
        series = [request.series] if request.series else self._find_uids(assoc, "SERIES", None)
        return {s: self._find_uids(assoc, "IMAGE", s) for s in series}

    def _find_uids(self, assoc: Requestor, level: str, series: str | None) -> list[str]:
        found = c_find(assoc, listing_identifier(self.request.study, level, series))
        if found.status is None or st.category(found.status) not in (
            st.Category.SUCCESS,
            st.Category.WARNING,
        ):
            raise PermanentError(
                f"C-FIND at {level} level answered "
                + (st.describe(found.status) if found.status is not None else "nothing")
            )
        return listed_uids(found.matches, level)

    # -- run ----------------------------------------------------------------------------------

    def execute(self) -> AttemptResult:
        attempt, peer = self.attempt, self.peer
        finals: list[MoveFinal] = []
        try:
            with Requestor(params_for(peer, self.op.node, MOVE_CONTEXTS)) as assoc:
                if assoc.context_for(STUDY_ROOT_MOVE) is None:
                    return AttemptResult(
                        Outcome.PERMANENT,
                        error=f"{assoc.peer_label} does not accept Study Root Query/Retrieve "
                        "MOVE (presentation context rejected)",
                    )
                plan = self.plan(assoc)
                if isinstance(plan, AttemptResult):
                    return plan
                for sub in plan:
                    if attempt.stop:
                        break
                    final = self.move_one(assoc, sub)
                    finals.append(final)
                    outcome, _ = classify_move(
                        final.status, final.counts, cancelled=final.cancelled, p=self.p
                    )
                    if outcome is not Outcome.DONE:
                        break
        except (TransientError, PermanentError) as exc:
            self.flush()
            return outcome_of(exc, result=self.tally.result(None))
        return self.conclude(finals)

    def move_one(self, assoc: Requestor, sub: MoveRequest) -> MoveFinal:
        tracker: MoveTracker | None = None
        if self.p.to_self:
            tracker = self.op.registry.begin(
                self.job.id, calling_ae=assoc.params.calling_ae, peer_ae=self.peer.ae_title
            )
            self.trackers.append(tracker)
            message_id = tracker.message_id
        else:
            message_id = assoc.next_message_id()
        self.tally.begin_move()
        try:
            final = c_move(
                assoc,
                sub.identifier(),
                self.p.destination,
                message_id,
                deadline=self.deadline,
                stop=self.attempt.stop,
                on_pending=self.on_pending,
            )
        except BaseException:
            if tracker is not None:
                self.op.registry.end(tracker)
            raise
        if tracker is not None:
            # The SCP may note the last C-STORE just after its response went out, so after
            # the PACS's final C-MOVE-RSP: give such stragglers a moment before ending.
            delivered = final.counts.completed + final.counts.warning
            grace_end = time.monotonic() + ARRIVAL_GRACE
            while tracker.total < delivered and time.monotonic() < grace_end:
                if self.attempt.stop.wait(0.02):
                    break
            self.op.registry.end(tracker)
        self.tally.end_move(final)
        return final

    def conclude(self, finals: list[MoveFinal]) -> AttemptResult:
        attempt, p, tally = self.attempt, self.p, self.tally
        # Failed items: what the PACS reported failed, and (retrying) what is still missing.
        self.flush()
        failed_items = tally.failed_items(finals[-1].status if finals else None)
        if failed_items:
            self.flush(failed_items)
        if self.lost:
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        if not finals:  # stopped before the first C-MOVE
            return AttemptResult(Outcome.STOPPED, result=tally.result(None))
        last = finals[-1]
        totals = tally.done_counts
        outcome, message = classify_move(
            last.status, totals, cancelled=last.cancelled, p=p, comment=last.comment
        )
        result = tally.result(last.status)
        arrived = len(tally.arrived)
        fields = {
            "qr_level": self.request.level,
            "mode": tally.mode,
            "destination": p.destination,
            "status": st.hex_status(last.status),
            "completed": totals.completed,
            "failed": totals.failed,
            "warning": totals.warning,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
        }
        if p.to_self:
            fields["arrived"] = arrived
        if outcome is Outcome.STOPPED:
            attempt.log.info("move.stopped", **fields)
            return AttemptResult(Outcome.STOPPED, status=last.status, result=result)
        if outcome is Outcome.DONE and tally.mode == "request" and totals.total == 0:
            outcome = Outcome.PERMANENT
            message = nothing_matched_message(p, self.request)
        if outcome is not Outcome.DONE:
            assert message is not None
            if p.to_self and self.job.items.total + arrived:
                counts = attempt.repo.get(self.job.id).items
                message += f"; {counts.delivered} instance(s) arrived so far"
            attempt.log.warning("move.failed", **fields, outcome=outcome.value)
            return AttemptResult(outcome, status=last.status, error=message, result=result)
        delivered = totals.completed + totals.warning
        text = f"{delivered} sub-operation(s) completed"
        if p.to_self:
            text += f", {arrived} instance(s) arrived"
            if arrived != delivered:
                note = arrival_mismatch_note(p, delivered, arrived)
                result["arrival_mismatch"] = {
                    "completed": delivered,
                    "arrived": arrived,
                    "message": note,
                }
                attempt.repo.event(
                    self.job.id, "arrival_mismatch", attempt=self.job.attempts, message=note
                )
                attempt.log.warning("move.arrival_mismatch", **fields)
                text += " (" + note + ")"
        attempt.log.info("move.finished", **fields)
        return AttemptResult(Outcome.DONE, status=last.status, result=result, message=text)
