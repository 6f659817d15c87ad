"""Is an instance committed? Per instance, for ``local`` and ``upstream`` mode. Pure.

``local``: committed when ctnode holds it — its index row exists, its file was not removed, and
its SOP class is the one the requestor named. Otherwise failed with the PS3.4 J.3.3 Failure
Reason: 0x0112 no such object instance (ctnode never received it, or removed it), 0x0119
class/instance conflict (held under another SOP class).

``upstream``: committed once every upstream peer has committed it (whether or not ctnode still
holds it). Until then pending; what ctnode does not hold cannot be pushed upstream (0x0112), a
class conflict is 0x0119 as in local mode; what is still pending when ``report_within`` has
passed is failed 0x0110 (processing failure).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ctnode.dicom.commitment_messages import (
    EVENT_ALL_COMMITTED,
    EVENT_FAILURES_EXIST,
    CommitmentReport,
    FailedReference,
    SopReference,
)

PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


class Mode(StrEnum):
    """When ctnode calls an instance committed (``commitment_scp.mode``)."""

    #: Durable in ctnode's own store and index.
    LOCAL = "local"
    #: Committed by every peer in ``commitment_scp.upstream`` (end-to-end commitment).
    UPSTREAM = "upstream"


class Answer(StrEnum):
    """ctnode's answer for one instance."""

    PENDING = "pending"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Held:
    """What ctnode's index says about an instance: its SOP class, and whether its file is
    still in the store (not removed by retention)."""

    sop_class_uid: str
    present: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one requested instance (a Failure Reason when failed)."""

    reference: SopReference
    answer: Answer
    failure_reason: int | None = None


def _held_problem(ref: SopReference, held: Held | None) -> int | None:
    if held is None or not held.present:
        return NO_SUCH_OBJECT_INSTANCE
    if held.sop_class_uid != ref.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    return None


def decide_local(ref: SopReference, held: Held | None) -> Verdict:
    """Committed if ctnode holds *ref* under its SOP class; else failed with the reason."""
    problem = _held_problem(ref, held)
    if problem is None:
        return Verdict(ref, Answer.COMMITTED)
    return Verdict(ref, Answer.FAILED, problem)


def decide_upstream(
    ref: SopReference,
    held: Held | None,
    committed_by: Iterable[str],
    upstream: Sequence[str],
    *,
    expired: bool,
) -> Verdict:
    """Committed once every peer in *upstream* is in *committed_by*; pending until then,
    failed 0x0110 once *expired*; failed at once for what ctnode cannot push (see above)."""
    if set(upstream) <= set(committed_by):
        if held is not None and held.sop_class_uid != ref.sop_class_uid:
            return Verdict(ref, Answer.FAILED, CLASS_INSTANCE_CONFLICT)
        return Verdict(ref, Answer.COMMITTED)
    problem = _held_problem(ref, held)
    if problem is not None:
        return Verdict(ref, Answer.FAILED, problem)
    if expired:
        return Verdict(ref, Answer.FAILED, PROCESSING_FAILURE)
    return Verdict(ref, Answer.PENDING)


def decide_all(
    references: Sequence[SopReference],
    held: Mapping[str, Held],
    mode: Mode,
    upstream: Sequence[str] = (),
    committed_by: Mapping[str, set[str]] | None = None,
    *,
    expired: bool = False,
) -> list[Verdict]:
    """Every instance's verdict; *committed_by* maps an instance to the upstream peers that
    committed it."""
    if mode is Mode.LOCAL:
        return [decide_local(r, held.get(r.sop_instance_uid)) for r in references]
    by = committed_by or {}
    return [
        decide_upstream(
            r,
            held.get(r.sop_instance_uid),
            by.get(r.sop_instance_uid, set()),
            upstream,
            expired=expired,
        )
        for r in references
    ]


def report_of(transaction_uid: str, verdicts: Sequence[Verdict]) -> CommitmentReport:
    """The N-EVENT-REPORT for decided *verdicts* (ValueError if one is still pending): Event
    Type 1 when every instance is committed, 2 with the Failed SOP Sequence otherwise."""
    if any(v.answer is Answer.PENDING for v in verdicts):
        raise ValueError("a report needs every instance decided")
    committed = tuple(v.reference for v in verdicts if v.answer is Answer.COMMITTED)
    failed = tuple(
        FailedReference(
            v.reference.sop_class_uid,
            v.reference.sop_instance_uid,
            v.failure_reason if v.failure_reason is not None else PROCESSING_FAILURE,
        )
        for v in verdicts
        if v.answer is Answer.FAILED
    )
    event = EVENT_FAILURES_EXIST if failed else EVENT_ALL_COMMITTED
    return CommitmentReport(transaction_uid, event, committed, failed)
