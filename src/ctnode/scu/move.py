"""Retrieve (Study Root C-MOVE): the ``move`` job operation.

One attempt = one association to the PACS carrying one or more C-MOVE requests:

* **First try** (or nothing has arrived yet): the request as submitted (a study, a series, or
  instances of a series), with ``MoveDestination`` = ctnode's AE title or the ``--dest`` AE.
* **Retry after a partial move** (something arrived before, the destination is ctnode): list
  what the request covers with C-FIND (SERIES, then IMAGE level), subtract what already arrived
  and what the local index holds, and C-MOVE only the missing instances at IMAGE level, per
  series. If the PACS cannot list instances, the whole request is moved again (ctnode stores
  identical copies once). With a third-party destination, the whole request is moved again.

Pending responses become the job's ``progress`` (remaining, completed, failed, warning, plus
``arrived`` when the destination is ctnode). Sub-operations towards ctnode are matched to the job
by ``ctnode.moves.MoveRegistry`` and written as job items (one per SOP Instance UID that arrived;
instances the PACS reports as failed become failed items until they arrive).

Final statuses (``classify_move``):

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

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.dicom.contexts import BASIC_SYNTAXES, STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from ctnode.dicom.uids import ae_title_problem, is_valid_uid
from ctnode.errors import AssociationAborted, PermanentError, TransientError, UsageError
from ctnode.index import present_instances
from ctnode.logs import get_logger
from ctnode.moves import Arrival, MoveRegistry, MoveTracker
from ctnode.queue.attempt import (
    Attempt,
    AttemptResult,
    Outcome,
    StopFlag,
    StopReason,
    outcome_of,
)
from ctnode.queue.jobs import ItemState, ItemUpsert
from ctnode.scu.association import params_for
from ctnode.scu.query import c_find, decode_identifier, encode_identifier
from ctnode.ul.dimse import C_CANCEL_RQ, C_MOVE_RQ, Command
from ctnode.ul.requestor import ContextRequest, Requestor

log = get_logger("ctnode.move")

MOVE_CONTEXTS = (
    ContextRequest(STUDY_ROOT_MOVE, BASIC_SYNTAXES),
    ContextRequest(STUDY_ROOT_FIND, BASIC_SYNTAXES),
)
#: Progress and arrivals are written at most this often while pending responses come in.
FLUSH_SECONDS = 0.5
#: SOP Instance UIDs per IMAGE-level C-MOVE when only the missing instances are moved again.
UIDS_PER_MOVE = 200
#: After a C-MOVE's final response, how long to wait for arrivals the PACS counted as completed
#: but the SCP has not noted yet.
ARRIVAL_GRACE = 2.0
#: At most this many failed SOP Instance UIDs are kept from one response.
MAX_FAILED_UIDS = 10000


# ------------------------------------------------------------------ the request (pure)


@dataclass(frozen=True, slots=True)
class MoveRequest:
    """What to move (Study Root: a study, a series, or instances of one series) and where."""

    study: str
    series: str | None = None
    instances: tuple[str, ...] = ()
    #: Move destination AE title; None = this node.
    destination: str | None = None

    @property
    def level(self) -> str:
        """QueryRetrieveLevel of the request."""
        if self.instances:
            return "IMAGE"
        return "SERIES" if self.series else "STUDY"

    def describe(self) -> str:
        """``study 1.2.3`` / ``series 1.2.3.4`` / ``3 instance(s) of series 1.2.3.4``."""
        if self.instances:
            return f"{len(self.instances)} instance(s) of series {self.series}"
        if self.series:
            return f"series {self.series}"
        return f"study {self.study}"

    def identifier(self) -> Dataset:
        """The C-MOVE identifier (unique keys down to the request's level)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        ds.StudyInstanceUID = self.study
        if self.series:
            ds.SeriesInstanceUID = self.series
        if self.instances:
            ds.SOPInstanceUID = list(self.instances)
        return ds

    def to_payload(self) -> dict[str, Any]:
        """The ``move`` job payload."""
        return {
            "level": self.level,
            "study": self.study,
            "series": self.series,
            "instances": list(self.instances),
            "destination": self.destination,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> MoveRequest:
        """Inverse of ``to_payload`` (validated again: payloads may be written by integrators)."""
        return make_request(
            payload.get("study"),
            payload.get("series"),
            payload.get("instances") or (),
            payload.get("destination"),
        )


def make_request(
    study: Any, series: Any = None, instances: Sequence[Any] = (), destination: Any = None
) -> MoveRequest:
    """A validated MoveRequest; UsageError names what is wrong."""
    if not isinstance(study, str) or not is_valid_uid(study):
        raise UsageError(f"StudyInstanceUID {study!r} is missing or not a valid UID")
    if series is not None and (not isinstance(series, str) or not is_valid_uid(series)):
        raise UsageError(f"SeriesInstanceUID {series!r} is not a valid UID")
    uids = tuple(str(u) for u in instances)
    bad = [u for u in uids if not is_valid_uid(u)]
    if bad:
        raise UsageError(f"SOPInstanceUID {bad[0]!r} is not a valid UID")
    if uids and not series:
        raise UsageError("moving instances (SOPInstanceUID) needs their SeriesInstanceUID")
    if destination is not None:
        if not isinstance(destination, str):
            raise UsageError("the move destination must be an AE title")
        problem = ae_title_problem(destination)
        if problem:
            raise UsageError(f"move destination {destination!r} {problem}")
        destination = destination.strip()
    return MoveRequest(study, series, uids, destination)


_MOVE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def request_from_cli(
    keys: Sequence[str], study: str | None, series: str | None, destination: str | None
) -> MoveRequest:
    """``-k StudyInstanceUID=…`` / ``--study`` … as a MoveRequest (UsageError if inconsistent)."""
    aliases = {"0020,000D": _MOVE_KEYS[0], "0020,000E": _MOVE_KEYS[1], "0008,0018": _MOVE_KEYS[2]}
    given: dict[str, str] = {}
    for key in keys:
        name, sep, value = key.partition("=")
        name = name.strip()
        name = aliases.get(name.upper().strip("()"), name)
        if name == "QueryRetrieveLevel":
            continue  # implied by the keys given
        if name not in _MOVE_KEYS:
            raise UsageError(
                f"-k {name}: a C-MOVE names what to move by UID only "
                "(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID); find it first with "
                "`ctnode query`"
            )
        if not sep or not value:
            raise UsageError(f"-k {name} needs a value (-k {name}=UID)")
        given[name] = value.strip()
    for name, option, uid in (
        (_MOVE_KEYS[0], "--study", study),
        (_MOVE_KEYS[1], "--series", series),
    ):
        if uid is not None:
            if name in given and given[name] != uid:
                raise UsageError(f"-k {name} and {option} disagree")
            given[name] = uid
    if _MOVE_KEYS[0] not in given:
        raise UsageError("give the study to move: --study UID or -k StudyInstanceUID=UID")
    instances = given[_MOVE_KEYS[2]].split("\\") if _MOVE_KEYS[2] in given else []
    return make_request(given[_MOVE_KEYS[0]], given.get(_MOVE_KEYS[1]), instances, destination)


# ------------------------------------------------------------------ outcome (pure)


@dataclass(slots=True)
class Counts:
    """Sub-operation counts of a C-MOVE response."""

    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @classmethod
    def from_command(cls, cmd: Command) -> Counts:
        """The Number of … Suboperations elements (absent ones are 0)."""

        def get(keyword: str) -> int:
            value = cmd.get(keyword)
            return value if isinstance(value, int) else 0

        return cls(
            get("NumberOfRemainingSuboperations"),
            get("NumberOfCompletedSuboperations"),
            get("NumberOfFailedSuboperations"),
            get("NumberOfWarningSuboperations"),
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.remaining + other.remaining,
            self.completed + other.completed,
            self.failed + other.failed,
            self.warning + other.warning,
        )

    @property
    def total(self) -> int:
        """Sub-operations accounted for (remaining excluded)."""
        return self.completed + self.failed + self.warning


@dataclass(frozen=True, slots=True)
class MovePeer:
    """What the outcome messages need to name: the PACS, the destination, this node."""

    peer_name: str
    peer_ae: str
    destination: str
    to_self: bool
    node_ae: str
    node_host: str
    node_port: int
    move_total: float


def destination_unknown_message(p: MovePeer) -> str:
    """The 0xA801 message: what the PACS admin must configure."""
    lists = "(Orthanc: DicomModalities; dcmqrscp: HostTable)"
    head = f"PACS {p.peer_name!r} ({p.peer_ae}) does not know move destination {p.destination!r}"
    if p.to_self:
        return (
            f"{head}: add AE {p.node_ae}, host {p.node_host}, port {p.node_port} to the PACS's "
            f"list of DICOM nodes {lists}"
        )
    return (
        f"{head}: add {p.destination} with its host and port to the PACS's list of DICOM nodes "
        f"{lists}, or check the spelling of --dest"
    )


def classify_move(
    code: int, counts: Counts, *, cancelled: str | None, p: MovePeer, comment: str | None = None
) -> tuple[Outcome, str | None]:
    """What a C-MOVE's final status (and totals) mean for the job; message for failures."""
    detail = f": {comment}" if comment else ""
    if code == st.CANCEL:
        if cancelled == "stopped":
            return Outcome.STOPPED, None
        if cancelled == "move_total":
            return Outcome.TRANSIENT, (
                f"PACS {p.peer_name!r} was still sending pending responses after "
                f"timeouts.move_total ({p.move_total:g} s); the move was cancelled "
                f"({counts.completed} completed, {counts.failed} failed, {counts.remaining} "
                "remaining)"
            )
        return Outcome.TRANSIENT, f"PACS {p.peer_name!r} cancelled the move{detail}"
    if code == st.MOVE_DESTINATION_UNKNOWN:
        return Outcome.PERMANENT, destination_unknown_message(p)
    category = st.category(code)
    if category in (st.Category.SUCCESS, st.Category.WARNING):
        if counts.failed:
            return Outcome.TRANSIENT, (
                f"PACS {p.peer_name!r} reported {counts.failed} of {counts.total} "
                f"sub-operation(s) failed ({st.describe(code)}){detail}"
            )
        return Outcome.DONE, None
    if (code & 0xFF00) == 0xA700 or code in (0x0210, 0x0213):
        if counts.failed:  # 0xA702: every sub-operation failed
            return Outcome.TRANSIENT, (
                f"PACS {p.peer_name!r} reported {counts.failed} of {counts.total} "
                f"sub-operation(s) failed ({st.describe(code)}){detail}"
            )
        return Outcome.TRANSIENT, (
            f"PACS {p.peer_name!r} answered C-MOVE with {st.describe(code)}{detail}"
        )
    hint = ""
    if code == st.NOT_AUTHORIZED:
        hint = f" (allow C-MOVE from AE {p.node_ae} on the PACS)"
    elif code == st.SOP_CLASS_NOT_SUPPORTED:
        hint = " (the PACS does not offer Study Root retrieve)"
    return Outcome.PERMANENT, (
        f"PACS {p.peer_name!r} refused the C-MOVE with {st.describe(code)}{detail}{hint}"
    )


def node_host(node: NodeSettings) -> str:
    """The address a PACS should use for this node (the bind address, or the host name)."""
    if node.bind in ("0.0.0.0", "::", ""):  # noqa: S104 - not binding, naming
        return socket.gethostname()
    return node.bind


# ------------------------------------------------------------------ the exchange


@dataclass(slots=True)
class MoveFinal:
    """The final response of one C-MOVE."""

    status: int
    counts: Counts
    failed_uids: list[str] = field(default_factory=list)
    #: Why we sent C-CANCEL: "move_total", "stopped", or None.
    cancelled: str | None = None
    comment: str | None = None


def c_move(
    assoc: Requestor,
    identifier: Dataset,
    destination: str,
    message_id: int,
    *,
    deadline: float,
    stop: StopFlag | None = None,
    on_pending: Callable[[Counts], None] = lambda _counts: None,
) -> MoveFinal:
    """Send a Study Root C-MOVE with *message_id* and read responses until the final one.

    Once pending responses are still coming after *deadline* (monotonic), or *stop* is set, a
    C-CANCEL-RQ goes out and the remaining responses are read within the DIMSE timeout.
    """
    ctx = assoc.context_for(STUDY_ROOT_MOVE)
    if ctx is None or ctx.transfer_syntax is None:
        raise PermanentError(
            f"{assoc.peer_label} does not accept Study Root Query/Retrieve MOVE "
            "(presentation context rejected)"
        )
    assoc.send(
        ctx.context_id,
        {
            "AffectedSOPClassUID": STUDY_ROOT_MOVE,
            "CommandField": C_MOVE_RQ,
            "MessageID": message_id,
            "Priority": 0,
            "MoveDestination": destination,
        },
        encode_identifier(identifier, ctx.transfer_syntax),
    )
    cancelled: str | None = None
    drain_deadline = 0.0
    while True:
        timeout = max(0.1, drain_deadline - time.monotonic()) if cancelled else None
        message = assoc.receive_response(message_id, timeout)
        code = message.command.get("Status")
        if not isinstance(code, int):
            raise AssociationAborted(f"{assoc.peer_label} sent a C-MOVE-RSP without Status")
        counts = Counts.from_command(message.command)
        if code in (st.PENDING, st.PENDING_WARNING):
            on_pending(counts)
            if cancelled is None:
                if stop is not None and stop:
                    cancelled = "stopped"
                elif time.monotonic() > deadline:
                    cancelled = "move_total"
                if cancelled is not None:
                    assoc.send(
                        ctx.context_id,
                        {"CommandField": C_CANCEL_RQ, "MessageIDBeingRespondedTo": message_id},
                    )
                    drain_deadline = time.monotonic() + assoc.params.timeouts.dimse
            continue
        failed_uids: list[str] = []
        if message.dataset:
            try:
                ds = decode_identifier(message.dataset, ctx.transfer_syntax)
                value = ds.get("FailedSOPInstanceUIDList")
                if value:
                    values = [value] if isinstance(value, str) else list(value)
                    failed_uids = [str(v) for v in values if is_valid_uid(str(v))]
            except ValueError:
                pass
        comment = message.command.get("ErrorComment")
        return MoveFinal(
            code,
            counts,
            failed_uids[:MAX_FAILED_UIDS],
            cancelled,
            comment if isinstance(comment, str) and comment else None,
        )


# ------------------------------------------------------------------ the operation


class MoveOperation:
    """Runs ``move`` jobs (see the module docstring)."""

    def __init__(
        self, node: NodeSettings, registry: MoveRegistry, *, shared_storage: bool = False
    ) -> None:
        self.node = node
        self.registry = registry
        self.shared_storage = shared_storage

    def run(self, attempt: Attempt) -> AttemptResult:
        """One association; one or more C-MOVEs; arrivals recorded as they come."""
        peer = attempt.peer
        if "move" not in peer.config.services:
            return AttemptResult(
                Outcome.PERMANENT,
                error=f"peer {peer.name!r} does not list 'move' in its services ({peer.path})",
            )
        try:
            request = MoveRequest.from_payload(attempt.job.payload)
        except UsageError as exc:
            return AttemptResult(Outcome.PERMANENT, error=f"invalid move job payload: {exc}")
        return _MoveAttempt(self, attempt, request).execute()


class _MoveAttempt:
    """State of one attempt: trackers, counts, arrivals."""

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
        self.mode = "request"
        self.missing: dict[str, list[str]] = {}
        self.done_counts = Counts()
        self.current = Counts()
        self.trackers: list[MoveTracker] = []
        self.arrived: dict[str, Arrival] = {}
        self.failed_uids: set[str] = set()
        self.last_flush = 0.0
        self.lost = False

    # -- bookkeeping ----------------------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        total = self.done_counts + self.current
        out: dict[str, Any] = {
            "remaining": self.current.remaining,
            "completed": total.completed,
            "failed": total.failed,
            "warning": total.warning,
        }
        if self.p.to_self:
            out["arrived"] = len(self.arrived)
        return out

    def flush(self, extra: Sequence[ItemUpsert] = ()) -> None:
        """Write new arrivals and the progress (fenced); a lost lease stops the attempt."""
        upserts: list[ItemUpsert] = []
        for tracker in self.trackers:
            for arrival in tracker.drain():
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
        upserts.extend(extra)
        self.last_flush = time.monotonic()
        if self.lost:
            return
        if not self.attempt.repo.record_arrivals(
            self.job.id, self.attempt.owner, upserts, progress=self.progress()
        ):
            self.lost = True
            self.attempt.stop.set(StopReason.LEASE_LOST)

    def on_pending(self, counts: Counts) -> None:
        self.current = counts
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
        with self.attempt.repo.sessions() as session:
            here = present_instances(
                session,
                [u for u in everything if u not in have],
                node_name=None if self.op.shared_storage else self.op.node.name,
            )
        self.mode = "missing"
        self.missing = {
            series: [u for u in uids if u not in have and u not in here]
            for series, uids in expected.items()
        }
        self.missing = {s: u for s, u in self.missing.items() if u}
        count = sum(len(u) for u in self.missing.values())
        self.attempt.repo.event(
            self.job.id,
            "resumed",
            attempt=self.job.attempts,
            message=f"{count} of {len(everything)} instance(s) missing; moving only those",
        )
        if not count:
            return AttemptResult(
                Outcome.DONE,
                result=self.result(None),
                message=f"all {len(everything)} instance(s) are here",
            )
        plan = []
        for series, uids in self.missing.items():
            for start in range(0, len(uids), UIDS_PER_MOVE):
                plan.append(
                    MoveRequest(
                        self.request.study,
                        series,
                        tuple(uids[start : start + UIDS_PER_MOVE]),
                        self.request.destination,
                    )
                )
        return plan

    def list_instances(self, assoc: Requestor) -> dict[str, list[str]]:
        """SOP Instance UIDs per series the request covers (C-FIND; PermanentError if not)."""
        request = self.request
        if request.instances:
            assert request.series is not None
            return {request.series: list(request.instances)}
        series = [request.series] if request.series else self._find_uids(assoc, "SERIES", None)
        return {s: self._find_uids(assoc, "IMAGE", s) for s in series}

    def _find_uids(self, assoc: Requestor, level: str, series: str | None) -> list[str]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.StudyInstanceUID = self.request.study
        identifier.SeriesInstanceUID = series or ""
        if level == "IMAGE":
            identifier.SOPInstanceUID = ""
        found = c_find(assoc, identifier)
        if found.status is None or st.category(found.status) not in (
            st.Category.SUCCESS,
            st.Category.WARNING,
        ):
            raise PermanentError(
                f"C-FIND at {level} level answered "
                + (st.describe(found.status) if found.status is not None else "nothing")
            )
        keyword = "SOPInstanceUID" if level == "IMAGE" else "SeriesInstanceUID"
        uids = [str(ds.get(keyword, "")) for ds in found.matches]
        return [u for u in dict.fromkeys(uids) if is_valid_uid(u)]

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
            return outcome_of(exc, result=self.result(None))
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
        self.current = Counts()
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
        self.current = Counts()
        self.done_counts = self.done_counts + Counts(
            0, final.counts.completed, final.counts.failed, final.counts.warning
        )
        if final.cancelled or final.status == st.CANCEL:
            self.current.remaining = final.counts.remaining
        self.failed_uids.update(final.failed_uids)
        return final

    def conclude(self, finals: list[MoveFinal]) -> AttemptResult:
        attempt, p = self.attempt, self.p
        # Failed items: what the PACS reported failed, and (retrying) what is still missing.
        self.flush()
        failed_items: list[ItemUpsert] = []
        if p.to_self:
            still_missing = {u for uids in self.missing.values() for u in uids} - set(self.arrived)
            for uid in sorted((self.failed_uids | still_missing) - set(self.arrived)):
                failed_items.append(
                    ItemUpsert(
                        uid,
                        ItemState.FAILED,
                        status=finals[-1].status if finals else None,
                        error="not received: the PACS reported this sub-operation as failed"
                        if uid in self.failed_uids
                        else "not received",
                    )
                )
        if failed_items:
            self.flush(failed_items)
        if self.lost:
            return AttemptResult(Outcome.STOPPED, error="lease lost")
        if not finals:  # stopped before the first C-MOVE
            return AttemptResult(Outcome.STOPPED, result=self.result(None))
        last = finals[-1]
        totals = self.done_counts
        outcome, message = classify_move(
            last.status, totals, cancelled=last.cancelled, p=p, comment=last.comment
        )
        result = self.result(last.status)
        fields = {
            "qr_level": self.request.level,
            "mode": self.mode,
            "destination": p.destination,
            "status": st.hex_status(last.status),
            "completed": totals.completed,
            "failed": totals.failed,
            "warning": totals.warning,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
        }
        if p.to_self:
            fields["arrived"] = len(self.arrived)
        if outcome is Outcome.STOPPED:
            attempt.log.info("move.stopped", **fields)
            return AttemptResult(Outcome.STOPPED, status=last.status, result=result)
        if outcome is Outcome.DONE and self.mode == "request" and totals.total == 0:
            outcome = Outcome.PERMANENT
            message = (
                f"PACS {p.peer_name!r} has nothing matching {self.request.describe()} "
                "(0 sub-operations); check the UIDs with `ctnode query`"
            )
        if outcome is not Outcome.DONE:
            assert message is not None
            if p.to_self and self.job.items.total + len(self.arrived):
                counts = attempt.repo.get(self.job.id).items
                message += f"; {counts.delivered} instance(s) arrived so far"
            attempt.log.warning("move.failed", **fields, outcome=outcome.value)
            return AttemptResult(outcome, status=last.status, error=message, result=result)
        delivered = totals.completed + totals.warning
        text = f"{delivered} sub-operation(s) completed"
        if p.to_self:
            text += f", {len(self.arrived)} instance(s) arrived"
            if len(self.arrived) != delivered:
                mismatch = {"completed": delivered, "arrived": len(self.arrived)}
                result["arrival_mismatch"] = mismatch
                hint = (
                    f"; check that the PACS sends AE {p.node_ae} to {p.node_host}:{p.node_port}"
                    if len(self.arrived) < delivered
                    else ""
                )
                note = (
                    f"PACS {p.peer_name!r} reported {delivered} sub-operation(s) completed but "
                    f"{len(self.arrived)} instance(s) arrived at this node{hint}"
                )
                result["arrival_mismatch"]["message"] = note
                attempt.repo.event(
                    self.job.id, "arrival_mismatch", attempt=self.job.attempts, message=note
                )
                attempt.log.warning("move.arrival_mismatch", **fields)
                text += " (" + note + ")"
        attempt.log.info("move.finished", **fields)
        return AttemptResult(Outcome.DONE, status=last.status, result=result, message=text)

    def result(self, code: int | None) -> dict[str, Any]:
        """The job's ``result``: counts of this attempt and where things went."""
        totals = self.done_counts + self.current
        out: dict[str, Any] = {
            "level": self.request.level,
            "destination": self.p.destination,
            "to_self": self.p.to_self,
            "mode": self.mode,
            "status": st.hex_status(code),
            "completed": totals.completed,
            "failed": totals.failed,
            "warning": totals.warning,
            "remaining": self.current.remaining,
        }
        if self.p.to_self:
            out["arrived"] = len(self.arrived)
        if self.mode == "missing":
            out["missing"] = sum(len(u) for u in self.missing.values())
        return out
