"""Push (C-STORE SCU): send a job's pending instances over one association per attempt.

Presentation contexts: for each SOP class, one context with the file's own (compressed) transfer
syntax and one with explicit and implicit little endian (or the peer's ``transfer_syntaxes``).
A file goes as stored when the peer accepted its syntax; otherwise it is decompressed and/or
re-encoded to an accepted uncompressed syntax (``codecs`` extra), or it fails with a reason.

Item outcomes are written in batches (a commit per batch, not per instance); after a crash the
instances of the last unwritten batch are sent again, so duplicates at the peer are bounded by
``BATCH_ITEMS`` and the job's event trail says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.contexts import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    UNCOMPRESSED_SYNTAXES,
)
from ctnode.dicom.filemeta import read_meta_length
from ctnode.errors import TransientError
from ctnode.queue.attempt import Attempt, AttemptResult, Outcome, outcome_of
from ctnode.queue.jobs import ItemOutcome, ItemRow, ItemState
from ctnode.scu.association import params_for
from ctnode.scu.files import Skipped, collect_files, probe_file
from ctnode.scu.services import service_refused
from ctnode.ul.dimse import C_STORE_RQ
from ctnode.ul.requestor import (
    AssociationObserver,
    ContextRequest,
    FileSegment,
    Negotiated,
    Requestor,
)

#: Item outcomes are committed at least this often (items / seconds).
BATCH_ITEMS = 32
BATCH_SECONDS = 0.25
MAX_CONTEXTS = 128

__all__ = ["BATCH_ITEMS", "PushOperation", "Skipped", "collect_files", "probe_file"]


# ------------------------------------------------------------------ contexts


def plan_contexts(
    items: Iterable[ItemRow], preferred: tuple[str, ...] = ()
) -> list[ContextRequest]:
    """Contexts to propose: per SOP class, its files' own syntaxes plus uncompressed ones."""
    fallback = tuple(ts for ts in preferred if ts in UNCOMPRESSED_SYNTAXES) or (
        EXPLICIT_VR_LE,
        IMPLICIT_VR_LE,
    )
    seen: set[tuple[str, tuple[str, ...]]] = set()
    contexts: list[ContextRequest] = []
    for item in items:
        assert item.sop_class_uid is not None
        assert item.transfer_syntax_uid is not None
        wanted = [(item.sop_class_uid, fallback)]
        if item.transfer_syntax_uid not in fallback:
            wanted.insert(0, (item.sop_class_uid, (item.transfer_syntax_uid,)))
        for abstract, syntaxes in wanted:
            if (abstract, syntaxes) not in seen:
                seen.add((abstract, syntaxes))
                contexts.append(ContextRequest(abstract, syntaxes))
    return contexts


def choose_context(assoc: Requestor, item: ItemRow) -> Negotiated | None:
    """The accepted context for *item*: its own syntax first, else an uncompressed one."""
    assert item.sop_class_uid is not None
    assert item.transfer_syntax_uid is not None
    own = assoc.context_for(item.sop_class_uid, (item.transfer_syntax_uid,))
    if own is not None:
        return own
    return assoc.context_for(item.sop_class_uid, UNCOMPRESSED_SYNTAXES)


# ------------------------------------------------------------------ the operation


class OutcomeSink(Protocol):
    """Where sending reports item outcomes (``_Batch`` records them; a commit job's re-push
    collects them)."""

    lost: bool

    def add(self, outcome: ItemOutcome) -> None:
        """One item's outcome."""


class _Batch:
    """Buffers item outcomes and commits them at most every BATCH_ITEMS/BATCH_SECONDS."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.pending: list[ItemOutcome] = []
        self.last = time.monotonic()
        self.lost = False
        self.counts: dict[str, int] = {}

    def add(self, outcome: ItemOutcome) -> None:
        self.pending.append(outcome)
        self.counts[outcome.state.value] = self.counts.get(outcome.state.value, 0) + 1
        if len(self.pending) >= BATCH_ITEMS or time.monotonic() - self.last >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> bool:
        if self.pending and not self.lost:
            ok = self.attempt.repo.record_items(
                self.attempt.job.id, self.attempt.owner, self.pending
            )
            if not ok:
                self.lost = True
            self.pending = []
        self.last = time.monotonic()
        return not self.lost


class SendObserver(AssociationObserver, Protocol):
    """Metrics for outbound associations and delivered instances."""

    def instance_sent(self, peer: str, size: int, code: int) -> None:
        """A C-STORE we sent was answered with *code*."""


class PushOperation:
    """Runs ``push`` jobs.

    *after_success* is called once a job whose payload asks for it (``push --commit``) has
    delivered everything; it returns the id of the follow-up job (storage commitment).
    """

    def __init__(
        self,
        node: NodeSettings,
        observer: SendObserver | None = None,
        after_success: Callable[[Attempt], int | None] | None = None,
    ) -> None:
        self.node = node
        self.observer = observer
        self.after_success = after_success

    def send(
        self, attempt: Attempt, items: list[ItemRow], sink: OutcomeSink
    ) -> AttemptResult | None:
        """Send *items* to the attempt's peer, reporting each outcome to *sink*; an
        AttemptResult for an association-level failure, else None (the one sending path, also
        used by a commit job to push failed instances again)."""
        return self._send_all(attempt, items, sink)

    def run(self, attempt: Attempt) -> AttemptResult:
        """Send every pending item; one association per attempt."""
        job = attempt.job
        refused = service_refused(attempt.peer, "store")
        if refused is not None:
            return refused
        items = attempt.repo.items(job.id, [ItemState.PENDING])
        if job.attempts > 1 and items:
            attempt.repo.event(
                job.id,
                "resumed",
                attempt=job.attempts,
                message=f"{len(items)} instance(s) not yet confirmed; up to {BATCH_ITEMS} of "
                "them may already be at the peer (outcomes are recorded in batches)",
            )
        batch = _Batch(attempt)
        transient: AttemptResult | None = None
        try:
            transient = self._send_all(attempt, items, batch)
        finally:
            batch.flush()
        if batch.lost:
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        if attempt.stop and transient is None:
            return AttemptResult(Outcome.STOPPED, result=self._summary(attempt))
        summary = self._summary(attempt)
        if transient is not None:
            return AttemptResult(transient.outcome, transient.status, transient.error, summary)
        counts = attempt.repo.get(job.id).items
        if counts.failed:
            first: ItemRow = attempt.repo.items(job.id, [ItemState.FAILED])[0]
            return AttemptResult(
                Outcome.PERMANENT,
                status=first.status,
                error=f"{counts.failed} of {counts.total} instance(s) failed; first: {first.error}",
                result=summary,
            )
        message = f"{counts.delivered} instance(s) delivered"
        if self.after_success is not None and job.payload.get("commit"):
            follow_up = self.after_success(attempt)
            if follow_up is not None:
                summary = {**summary, "commit_job": follow_up}
                message += f"; storage commitment job {follow_up} submitted"
        return AttemptResult(Outcome.DONE, result=summary, message=message)

    @staticmethod
    def _summary(attempt: Attempt) -> dict[str, int]:
        return attempt.repo.get(attempt.job.id).items.to_json()

    def _send_all(
        self, attempt: Attempt, items: list[ItemRow], batch: OutcomeSink
    ) -> AttemptResult | None:
        """Returns an AttemptResult for an association-level failure, else None."""
        # Unreadable files fail at once; the rest are grouped into <= 128 contexts.
        sendable: list[tuple[ItemRow, int, int]] = []
        for item in items:
            try:
                assert item.path is not None
                with open(item.path, "rb") as fh:
                    offset = read_meta_length(fh.read(8192))
                size = os.path.getsize(item.path) - offset
            except (OSError, ValueError, AssertionError) as exc:
                batch.add(
                    ItemOutcome(
                        item.id, ItemState.FAILED, error=f"unreadable file {item.path}: {exc}"
                    )
                )
                continue
            sendable.append((item, offset, size))
        for group in self._groups(sendable, attempt.peer.config.transfer_syntaxes):
            failure = self._send_group(attempt, group, batch)
            if failure is not None or attempt.stop or batch.lost:
                return failure
        return None

    @staticmethod
    def _groups(
        sendable: list[tuple[ItemRow, int, int]], preferred: tuple[str, ...]
    ) -> Iterator[list[tuple[ItemRow, int, int]]]:
        group: list[tuple[ItemRow, int, int]] = []
        keys: set[tuple[str, tuple[str, ...]]] = set()
        for entry in sendable:
            wanted = {
                (c.abstract_syntax, c.transfer_syntaxes)
                for c in plan_contexts([entry[0]], preferred)
            }
            if len(keys | wanted) > MAX_CONTEXTS:
                yield group
                group, keys = [], set()
            group.append(entry)
            keys |= wanted
        if group:
            yield group

    def _send_group(
        self, attempt: Attempt, group: list[tuple[ItemRow, int, int]], batch: OutcomeSink
    ) -> AttemptResult | None:
        peer = attempt.peer
        contexts = plan_contexts([g[0] for g in group], peer.config.transfer_syntaxes)
        params = params_for(peer, self.node, contexts, observer=self.observer)
        try:
            with Requestor(params) as assoc:
                for item, offset, size in group:
                    if attempt.stop or batch.lost:
                        return None
                    failure = self._send_one(attempt, assoc, item, offset, size, batch)
                    if failure is not None:
                        return failure
        except TransientError as exc:  # unreachable, rejected, aborted
            failure = outcome_of(exc)
            if failure.outcome is Outcome.PERMANENT:  # rejected for good: so is every item
                for item, _, _ in group:
                    batch.add(ItemOutcome(item.id, ItemState.FAILED, error=failure.error))
            return failure
        return None

    def _send_one(
        self,
        attempt: Attempt,
        assoc: Requestor,
        item: ItemRow,
        offset: int,
        size: int,
        batch: OutcomeSink,
    ) -> AttemptResult | None:
        ctx = choose_context(assoc, item)
        if ctx is None:
            batch.add(
                ItemOutcome(
                    item.id,
                    ItemState.FAILED,
                    error=f"{assoc.peer_label} accepted no presentation context for SOP class "
                    f"{item.sop_class_uid} (offered {item.transfer_syntax_uid} and uncompressed)",
                )
            )
            return None
        assert item.path is not None
        assert ctx.transfer_syntax is not None
        dataset: bytes | FileSegment
        if ctx.transfer_syntax == item.transfer_syntax_uid:
            dataset = FileSegment(item.path, offset, size)
        else:
            from ctnode.dicom.convert import convert  # imports pydicom: only when converting

            try:
                dataset = convert(item.path, ctx.transfer_syntax)
            except (ValueError, OSError) as exc:
                batch.add(
                    ItemOutcome(
                        item.id,
                        ItemState.FAILED,
                        error=f"{assoc.peer_label} accepts only uncompressed syntaxes for this "
                        f"class and the file could not be converted: {exc}",
                    )
                )
                return None
        fields = {
            "AffectedSOPClassUID": item.sop_class_uid,
            "CommandField": C_STORE_RQ,
            "Priority": 0,
            "AffectedSOPInstanceUID": item.sop_instance_uid,
        }
        try:
            rsp = assoc.request(ctx.context_id, fields, dataset)
        except OSError as exc:  # the file went away mid-send; the association is gone too
            batch.add(
                ItemOutcome(item.id, ItemState.FAILED, error=f"unreadable file {item.path}: {exc}")
            )
            return AttemptResult(Outcome.TRANSIENT, error=f"aborted after a read error: {exc}")
        code = rsp.command.get("Status")
        if not isinstance(code, int):
            return AttemptResult(
                Outcome.TRANSIENT, error=f"{assoc.peer_label} sent a C-STORE-RSP without Status"
            )
        if self.observer is not None:
            sent = size if isinstance(dataset, FileSegment) else len(dataset)
            self.observer.instance_sent(attempt.peer.name, sent, code)
        meaning = st.meaning(code)
        if meaning is st.StatusMeaning.SUCCESS:
            batch.add(ItemOutcome(item.id, ItemState.SUCCEEDED, status=code))
        elif meaning is st.StatusMeaning.WARNING:
            batch.add(ItemOutcome(item.id, ItemState.WARNING, status=code))
        elif meaning is st.StatusMeaning.PERMANENT_FAILURE:
            batch.add(
                ItemOutcome(
                    item.id,
                    ItemState.FAILED,
                    status=code,
                    error=f"{assoc.peer_label} answered {st.describe(code)}",
                )
            )
        else:
            batch.add(
                ItemOutcome(
                    item.id,
                    ItemState.PENDING,
                    status=code,
                    error=f"{assoc.peer_label} answered {st.describe(code)}",
                )
            )
            return AttemptResult(
                Outcome.TRANSIENT,
                status=code,
                error=f"{assoc.peer_label} answered {st.describe(code)}",
            )
        return None
