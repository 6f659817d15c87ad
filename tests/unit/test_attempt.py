"""The attempt contract: how failures and final statuses become an attempt's outcome (pure)."""

from __future__ import annotations

import pytest

from ctnode.dicom.status import StatusMeaning, meaning
from ctnode.errors import (
    AssociationAborted,
    AssociationRejected,
    PeerUnreachable,
    PermanentError,
    TransientError,
)
from ctnode.queue.attempt import (
    AttemptResult,
    Outcome,
    StopFlag,
    StopReason,
    outcome_of,
    outcome_of_status,
)


def _rejected(result: int) -> AssociationRejected:
    return AssociationRejected(
        f"peer 'pacs' rejected the association (result {result}, source 1, reason 7)",
        result=result,
        source=1,
        reason=7,
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PeerUnreachable("cannot connect to 127.0.0.1:104: connection refused"), Outcome.TRANSIENT),
        (AssociationAborted("PACS aborted the association (A-ABORT)"), Outcome.TRANSIENT),
        (_rejected(2), Outcome.TRANSIENT),
        (_rejected(1), Outcome.PERMANENT),
        (TransientError("peer busy", status=0xA700), Outcome.TRANSIENT),
        (PermanentError("PACS does not accept Study Root FIND"), Outcome.PERMANENT),
    ],
    ids=["unreachable", "aborted", "rejected-transient", "rejected-permanent", "transient", "perm"],
)
def test_outcome_of_every_failure(exc: TransientError | PermanentError, expected: Outcome) -> None:
    """Each failure kind has one outcome, and the attempt's error is the exception's message
    word for word."""
    result = outcome_of(exc)
    assert result.outcome is expected
    assert result.error == str(exc)
    assert result.result is None and result.message is None and result.wait_seconds == 0.0


def test_outcome_of_keeps_the_status_and_the_result_so_far() -> None:
    """A failure's DIMSE status and the job's result so far are part of the attempt's result;
    an association failure has no status."""
    progress = {"completed": 3, "failed": 1}
    refused = outcome_of(PermanentError("refused", status=0x0124), result=progress)
    assert refused == AttemptResult(
        Outcome.PERMANENT, status=0x0124, error="refused", result=progress
    )
    assert outcome_of(AssociationAborted("gone")).status is None


def test_conversion_errors_are_permanent() -> None:
    """A subclass of PermanentError (a file that cannot be converted) is permanent too."""
    from ctnode.dicom.convert import ConversionError

    assert outcome_of(ConversionError("12-bit JPEG Extended")).outcome is Outcome.PERMANENT


def test_peer_errors_are_transient_errors() -> None:
    """Every peer failure of an outbound association belongs to the transient branch of the
    tree; only A-ASSOCIATE-RJ result 1 is marked permanent."""
    for kind in (PeerUnreachable, AssociationAborted, AssociationRejected):
        assert issubclass(kind, TransientError)
        assert not issubclass(kind, PermanentError)
    assert _rejected(1).permanent and not _rejected(2).permanent


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, Outcome.DONE),
        (0xB000, Outcome.DONE),
        (0xA700, Outcome.TRANSIENT),
        (0xFE00, Outcome.TRANSIENT),
        (0x0122, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
    ],
)
def test_outcome_of_status(code: int, expected: Outcome) -> None:
    """Success and warning end an attempt done; a transient failure is retried, a permanent
    one is not."""
    assert outcome_of_status(meaning(code)) is expected


def test_every_status_meaning_has_an_outcome() -> None:
    """No status meaning is left without an outcome."""
    assert {outcome_of_status(m) for m in StatusMeaning} == {
        Outcome.DONE,
        Outcome.TRANSIENT,
        Outcome.PERMANENT,
    }


def test_stop_flag_keeps_the_first_reason() -> None:
    """A stop flag is false until set; the first reason wins; waiting returns at once once
    set."""
    flag = StopFlag()
    assert not flag and flag.reason is None
    assert flag.wait(0) is False
    flag.set(StopReason.CANCELLED)
    flag.set(StopReason.SHUTDOWN)
    assert flag and flag.reason is StopReason.CANCELLED
    assert flag.wait(10) is True
