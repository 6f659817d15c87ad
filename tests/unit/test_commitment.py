"""Storage commitment data sets and matching rules (pure)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ctnode.dicom.commitment_messages import (
    UNKNOWN_FAILURE_REASON,
    CommitmentReport,
    FailedReference,
    ReportError,
    Sender,
    SopReference,
    encode_action,
    encode_report,
    new_transaction_uid,
    parse_report,
    sender_problem,
)
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ctnode.dicom.uids import is_valid_uid
from tests.helpers.dicomgen import encode_dataset

UID_A = "1.2.3.4.1"
UID_B = "1.2.3.4.2"


def _decode(data: bytes, syntax: str) -> Dataset:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    return read_dataset(
        BytesIO(data), is_implicit_VR=syntax == IMPLICIT_VR_LE, is_little_endian=True
    )


def test_transaction_uids_are_unique_uuid_uids() -> None:
    """Transaction UIDs live under 2.25., are valid UIDs (<= 64 chars) and never repeat."""
    uids = {new_transaction_uid() for _ in range(1000)}
    assert len(uids) == 1000
    assert all(u.startswith("2.25.") and is_valid_uid(u, strict=True) for u in uids)


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
def test_action_carries_transaction_and_referenced_sop_sequence(syntax: str) -> None:
    """The N-ACTION data set has the Transaction UID and one Referenced SOP item per instance,
    in the negotiated syntax."""
    data = encode_action(
        "2.25.7", [SopReference(CT_IMAGE, UID_A), SopReference(CT_IMAGE, UID_B)], syntax
    )
    ds = _decode(data, syntax)
    assert ds.TransactionUID == "2.25.7"
    assert [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence
    ] == [
        (CT_IMAGE, UID_A),
        (CT_IMAGE, UID_B),
    ]


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
def test_report_round_trip(syntax: str) -> None:
    """A report with committed and failed instances decodes to the same values."""
    report = CommitmentReport(
        "2.25.9",
        2,
        (SopReference(CT_IMAGE, UID_A),),
        (FailedReference(CT_IMAGE, UID_B, 0x0112),),
    )
    assert parse_report(encode_report(report, syntax), syntax, 2) == report


def test_failed_item_without_reason_gets_processing_failure() -> None:
    """A Failed SOP item with no Failure Reason counts as 0x0110; items with invalid UIDs are
    dropped (they cannot match anything that was asked)."""
    ds = Dataset()
    ds.TransactionUID = "2.25.1"
    bad = Dataset()
    bad.ReferencedSOPClassUID = CT_IMAGE
    bad.ReferencedSOPInstanceUID = UID_A
    junk = Dataset()
    junk.ReferencedSOPClassUID = CT_IMAGE
    junk.ReferencedSOPInstanceUID = "../../etc"
    ds.FailedSOPSequence = Sequence([bad, junk])
    report = parse_report(encode_dataset(ds), EXPLICIT_VR_LE, 2)
    assert report.failed == (FailedReference(CT_IMAGE, UID_A, UNKNOWN_FAILURE_REASON),)
    assert report.committed == ()


@pytest.mark.parametrize(
    ("data", "event_type", "message"),
    [
        (b"", 3, "Event Type ID"),
        (b"", None, "Event Type ID"),
        (encode_dataset(Dataset()), 1, "Transaction UID"),
        (b"\x08\x00\x95\x11\xff\xff\xff\x7f", 1, "undecodable|Transaction UID"),
    ],
)
def test_unusable_reports_are_errors(data: bytes, event_type: object, message: str) -> None:
    """Unknown event types, a missing Transaction UID or an undecodable data set are
    ReportError (answered with a failure status, never a crash)."""
    with pytest.raises(ReportError, match=message):
        parse_report(data, EXPLICIT_VR_LE, event_type)


def test_only_the_peer_that_was_asked_may_report() -> None:
    """A report counts only from the asked peer: same calling AE title *and* matched to that
    peer's configuration (its host); an unknown caller or another peer is refused."""
    assert sender_problem("pacs", "PACS", Sender("pacs", "PACS", "10.0.0.5")) is None
    wrong_ae = sender_problem("pacs", "PACS", Sender("pacs", "OTHER", "10.0.0.5"))
    assert wrong_ae is not None and "calling AE 'OTHER'" in wrong_ae
    other_peer = sender_problem("pacs", "PACS", Sender("pacs2", "PACS", "10.0.0.6"))
    assert other_peer is not None and "not peer 'pacs'" in other_peer
    stranger = sender_problem("pacs", "PACS", Sender(None, "PACS", "192.168.1.9"))
    assert stranger is not None and "no configured peer" in stranger
