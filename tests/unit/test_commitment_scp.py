"""Storage Commitment SCP, pure parts: the N-ACTION checks (PS3.4 J.3.2, PS3.7 10.1.4) and the
per-instance decisions and report (PS3.4 J.3.3), without sockets or a database."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ctnode.commitment_scp.decide import (
    Answer,
    Held,
    Mode,
    decide_all,
    decide_local,
    decide_upstream,
    report_of,
)
from ctnode.commitment_scp.requests import Refusal, read_request
from ctnode.dicom import commitment_messages
from ctnode.dicom.commitment_messages import (
    ActionError,
    CommitmentAction,
    SopReference,
    parse_action,
)
from ctnode.dicom.contexts import (
    CT_IMAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
)
from tests.helpers.dicomgen import encode_dataset

FIELDS = {
    "RequestedSOPClassUID": STORAGE_COMMITMENT_PUSH,
    "RequestedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_INSTANCE,
    "ActionTypeID": 1,
}
REF = SopReference(CT_IMAGE, "1.2.3.4.5")


def _action(uid: str | None = "1.2.3.9", refs: list[tuple[str, str]] | None = None) -> bytes:
    ds = Dataset()
    if uid is not None:
        ds.TransactionUID = uid
    if refs is not None:
        items = []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        ds.ReferencedSOPSequence = Sequence(items)
    return encode_dataset(ds, explicit=True)


def test_a_valid_request_is_read() -> None:
    """Transaction UID and references come out; a repeated reference counts once."""
    data = _action(refs=[(CT_IMAGE, "1.2.3.4.5"), (CT_IMAGE, "1.2.3.4.5")])
    request = read_request(FIELDS, data, EXPLICIT_VR_LE)
    assert request == CommitmentAction("1.2.3.9", (REF,))


def test_command_problems_get_their_status() -> None:
    """Wrong Requested SOP Class 0x0118, wrong instance 0x0112, Action Type 2 0x0123."""
    data = _action(refs=[(CT_IMAGE, "1.2.3.4.5")])
    cases = {
        "RequestedSOPClassUID": ("1.2.3", 0x0118),
        "RequestedSOPInstanceUID": ("1.2.3", 0x0112),
        "ActionTypeID": (2, 0x0123),
    }
    for key, (value, code) in cases.items():
        answer = read_request({**FIELDS, key: value}, data, EXPLICIT_VR_LE)
        assert isinstance(answer, Refusal) and answer.status == code, key


def test_data_set_problems_get_their_status() -> None:
    """No Transaction UID, no/empty sequence, an item without UIDs: 0x0115; garbage is refused
    too (0x0110 when pydicom cannot decode it, else 0x0115 for what is missing)."""
    for data in (
        _action(uid=None, refs=[(CT_IMAGE, "1.2.3.4.5")]),
        _action(uid="not a uid", refs=[(CT_IMAGE, "1.2.3.4.5")]),
        _action(refs=None),
        _action(refs=[]),
        _action(refs=[(CT_IMAGE, "")]),
    ):
        answer = read_request(FIELDS, data, EXPLICIT_VR_LE)
        assert isinstance(answer, Refusal) and answer.status == 0x0115, answer
    garbage = read_request(FIELDS, b"\x08\x00\x50\x00\xff\xff\xff\x7f", EXPLICIT_VR_LE)
    assert isinstance(garbage, Refusal) and garbage.status in (0x0110, 0x0115)


def test_local_decisions() -> None:
    """Held with the same class: committed; absent or removed: 0x0112; another class: 0x0119."""
    assert decide_local(REF, Held(CT_IMAGE, True)).answer is Answer.COMMITTED
    assert decide_local(REF, None).failure_reason == 0x0112
    assert decide_local(REF, Held(CT_IMAGE, False)).failure_reason == 0x0112
    assert decide_local(REF, Held(MR_IMAGE, True)).failure_reason == 0x0119


def test_upstream_decisions() -> None:
    """Committed only once every upstream peer committed; pending before; 0x0110 when the
    wait is over; what ctnode does not hold fails at once unless all upstream committed it."""
    held = Held(CT_IMAGE, True)
    up = ("pacs", "archive")
    assert decide_upstream(REF, held, {"pacs"}, up, expired=False).answer is Answer.PENDING
    assert decide_upstream(REF, held, {"pacs", "archive"}, up, expired=False).answer is (
        Answer.COMMITTED
    )
    assert decide_upstream(REF, held, {"pacs"}, up, expired=True).failure_reason == 0x0110
    assert decide_upstream(REF, None, set(), up, expired=False).failure_reason == 0x0112
    assert decide_upstream(REF, None, set(up), up, expired=False).answer is Answer.COMMITTED


def test_report_event_types() -> None:
    """Event Type 1 when all committed, 2 with the Failed SOP Sequence; pending refuses."""
    other = SopReference(CT_IMAGE, "1.2.3.4.6")
    verdicts = decide_all([REF, other], {REF.sop_instance_uid: Held(CT_IMAGE, True)}, Mode.LOCAL)
    report = report_of("1.2.3.9", verdicts)
    assert report.event_type == 2 and report.committed == (REF,)
    assert [(f.sop_instance_uid, f.failure_reason) for f in report.failed] == [
        (other.sop_instance_uid, 0x0112)
    ]
    assert report_of("1.2.3.9", verdicts[:1]).event_type == 1
    pending = decide_all([REF], {}, Mode.UPSTREAM, ("pacs",), {})
    try:
        report_of("1.2.3.9", [pending[0].__class__(REF, Answer.PENDING)])
    except ValueError:
        pass
    else:
        raise AssertionError("a report with a pending instance")


def test_both_encodings_and_trailing_elements_are_read() -> None:
    """Implicit and Explicit VR, a sequence of defined or undefined length, an element after
    the sequence: the same request comes out."""
    refs = [(CT_IMAGE, "1.2.3.4.5"), (MR_IMAGE, "1.2.3.4.6")]
    want = CommitmentAction("1.2.3.9", (REF, SopReference(MR_IMAGE, "1.2.3.4.6")))
    for explicit in (True, False):
        for undefined in (True, False):
            ds = Dataset()
            ds.TransactionUID = "1.2.3.9"
            ds.ReferencedSOPSequence = Sequence(
                [_item(sop_class, sop_instance) for sop_class, sop_instance in refs]
            )
            ds.ReferencedSOPSequence.is_undefined_length = undefined
            ds.StorageMediaFileSetUID = "1.2.3.10"  # (0088,0140), after the sequence
            syntax = EXPLICIT_VR_LE if explicit else IMPLICIT_VR_LE
            data = encode_dataset(ds, explicit=explicit)
            assert parse_action(data, syntax) == want, (explicit, undefined)


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def test_an_over_limit_sequence_is_refused_without_reading_it_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More items than MAX_ACTION_REFERENCES: 0x0213, and reading stopped at the first item
    over the limit (the rest of the sequence is never parsed)."""
    monkeypatch.setattr(commitment_messages, "MAX_ACTION_REFERENCES", 5)
    import pydicom.filereader

    calls = 0
    real = pydicom.filereader.read_sequence_item

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_sequence_item", counting)
    data = _action(refs=[(CT_IMAGE, f"1.2.3.4.{n}") for n in range(1, 1001)])
    with pytest.raises(ActionError) as refused:
        parse_action(data, EXPLICIT_VR_LE)
    assert refused.value.status == 0x0213
    assert calls == 6
    answer = read_request(FIELDS, data, EXPLICIT_VR_LE)
    assert isinstance(answer, Refusal) and answer.status == 0x0213
    # At the limit it is accepted.
    five = _action(refs=[(CT_IMAGE, f"1.2.3.4.{n}") for n in range(1, 6)])
    assert len(parse_action(five, EXPLICIT_VR_LE).references) == 5
