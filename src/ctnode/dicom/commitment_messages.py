"""Storage Commitment Push Model (PS3.4 Annex J) data sets and rules. Pure: no I/O.

The N-ACTION-RQ (Action Type ID 1, "Request Storage Commitment") carries a Transaction UID and
the Referenced SOP Sequence. The answer comes later as an N-EVENT-REPORT-RQ: Event Type ID 1
when every instance is committed, 2 when some failed; its data set repeats the Transaction UID,
lists committed instances in the Referenced SOP Sequence and failed ones in the Failed SOP
Sequence, each with a Failure Reason (0x0110 processing failure, 0x0112 no such object instance,
0x0119 class/instance conflict, 0x0213 resource limitation, 0x0122 SOP class not supported,
0x0131 duplicate transaction UID).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO

from ctnode.dicom.contexts import IMPLICIT_VR_LE
from ctnode.dicom.uids import generate_uid, is_valid_uid

#: N-ACTION Action Type ID: Request Storage Commitment.
ACTION_REQUEST_COMMITMENT = 1
#: N-EVENT-REPORT Event Type IDs.
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2
EVENT_TYPES = (EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST)

#: Failure Reason when a report lists an instance as failed without a (valid) reason.
UNKNOWN_FAILURE_REASON = 0x0110


class ReportError(ValueError):
    """An N-EVENT-REPORT data set that cannot be used (undecodable, no Transaction UID...)."""


@dataclass(frozen=True, slots=True)
class SopReference:
    """One instance in a commitment request or report."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class FailedReference:
    """An instance the peer could not commit, with its Failure Reason."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """A decoded N-EVENT-REPORT of the Storage Commitment Push Model."""

    transaction_uid: str
    event_type: int
    committed: tuple[SopReference, ...]
    failed: tuple[FailedReference, ...]


def new_transaction_uid() -> str:
    """A Transaction UID never used before, under the ``2.25.`` (UUID-derived) root."""
    return generate_uid()


def _write(ds: object, transfer_syntax: str) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    write_dataset(fp, ds)  # type: ignore[arg-type]
    return bytes(fp.getvalue())


def encode_action(
    transaction_uid: str, references: Iterable[SopReference], transfer_syntax: str
) -> bytes:
    """The N-ACTION-RQ data set (Action Information) in *transfer_syntax* (little endian)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for ref in references:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return _write(ds, transfer_syntax)


def encode_report(report: CommitmentReport, transfer_syntax: str) -> bytes:
    """The N-EVENT-REPORT-RQ data set (Event Information): what a commitment SCP sends."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    committed = []
    for ref in report.committed:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        committed.append(item)
    if committed:
        ds.ReferencedSOPSequence = Sequence(committed)
    failed = []
    for bad in report.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = bad.sop_class_uid
        item.ReferencedSOPInstanceUID = bad.sop_instance_uid
        item.FailureReason = bad.failure_reason
        failed.append(item)
    if failed:
        ds.FailedSOPSequence = Sequence(failed)
    return _write(ds, transfer_syntax)


def _text(item: object, keyword: str) -> str:
    value = getattr(item, keyword, None)
    return "" if value is None else str(value).strip("\x00 ")


def parse_report(data: bytes, transfer_syntax: str, event_type: object) -> CommitmentReport:
    """Decode an N-EVENT-REPORT data set; ReportError says what is wrong with it.

    References whose UIDs are not valid are dropped (they cannot match anything we asked for).
    A failed reference without a Failure Reason gets 0x0110 (processing failure).
    """
    if event_type not in EVENT_TYPES:
        raise ReportError(f"Event Type ID {event_type!r} is not 1 or 2")
    assert isinstance(event_type, int)
    from pydicom.filereader import read_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(
                BytesIO(data),
                is_implicit_VR=transfer_syntax == IMPLICIT_VR_LE,
                is_little_endian=True,
            )
            transaction_uid = _text(ds, "TransactionUID")
            committed = tuple(
                SopReference(
                    _text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID")
                )
                for item in (ds.get("ReferencedSOPSequence") or [])
            )
            failed_refs = []
            for item in ds.get("FailedSOPSequence") or []:
                reason = item.get("FailureReason")
                code = int(reason) if isinstance(reason, int) else UNKNOWN_FAILURE_REASON
                failed_refs.append(
                    FailedReference(
                        _text(item, "ReferencedSOPClassUID"),
                        _text(item, "ReferencedSOPInstanceUID"),
                        code,
                    )
                )
    except ReportError:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise ReportError(f"undecodable event information: {exc}") from exc
    if not is_valid_uid(transaction_uid):
        raise ReportError("the event information has no valid Transaction UID")
    return CommitmentReport(
        transaction_uid,
        event_type,
        tuple(r for r in committed if is_valid_uid(r.sop_instance_uid)),
        tuple(r for r in failed_refs if is_valid_uid(r.sop_instance_uid)),
    )


class ActionError(ValueError):
    """An N-ACTION data set that cannot be used; *status* is the N-ACTION-RSP failure to answer
    (0x0110 undecodable, 0x0115 invalid argument value)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class CommitmentAction:
    """A decoded N-ACTION Action Information: the Transaction UID and what to commit."""

    transaction_uid: str
    references: tuple[SopReference, ...]


#: Most instances ctnode accepts in one commitment request (a study has a few thousand).
MAX_ACTION_REFERENCES = 100_000
INVALID_ARGUMENT_VALUE = 0x0115
RESOURCE_LIMITATION = 0x0213


#: (0008,1199) Referenced SOP Sequence.
_REFERENCED_SOP_SEQUENCE = 0x00081199
_UNDEFINED_LENGTH = 0xFFFFFFFF


def parse_action(data: bytes, transfer_syntax: str) -> CommitmentAction:
    """Decode an N-ACTION-RQ data set (PS3.4 J.3.2.1.1); ActionError says what is wrong.

    Every item of the Referenced SOP Sequence needs a valid Referenced SOP Class and Instance
    UID; the sequence must not be empty; the Transaction UID must be a valid UID. The sequence
    is read item by item, each kept only as its two UIDs, and reading stops at the first item
    over ``MAX_ACTION_REFERENCES`` (0x0213): a peer cannot make ctnode build a data set of every
    item of a 16 MiB message.
    """
    from pydicom.filereader import read_dataset

    implicit = transfer_syntax == IMPLICIT_VR_LE
    fp = BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The elements before the sequence (the Transaction UID); stop at the sequence.
            head = read_dataset(
                fp,
                is_implicit_VR=implicit,
                is_little_endian=True,
                stop_when=lambda tag, _vr, _length: tag >= _REFERENCED_SOP_SEQUENCE,
            )
            transaction_uid = _text(head, "TransactionUID")
            references = _read_references(fp, implicit)
            # The rest (optional elements ctnode does not use) must still be decodable.
            read_dataset(fp, is_implicit_VR=implicit, is_little_endian=True)
    except ActionError:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise ActionError(f"undecodable action information: {exc}", 0x0110) from exc
    if not is_valid_uid(transaction_uid):
        raise ActionError(
            "the action information has no valid Transaction UID", INVALID_ARGUMENT_VALUE
        )
    if not references:
        raise ActionError(
            "the action information has no (or an empty) Referenced SOP Sequence",
            INVALID_ARGUMENT_VALUE,
        )
    return CommitmentAction(transaction_uid, tuple(dict.fromkeys(references)))


def _read_references(fp: BytesIO, implicit: bool) -> list[SopReference]:
    """The Referenced SOP Sequence at *fp* (none there: empty), item by item; *fp* ends after
    it. At most ``MAX_ACTION_REFERENCES`` items are read (more: ActionError 0x0213)."""
    from pydicom.charset import default_encoding
    from pydicom.filereader import read_sequence_item

    header = fp.read(8)
    if len(header) < 8:
        return []
    group, element = struct.unpack("<HH", header[:4])
    if (group << 16 | element) != _REFERENCED_SOP_SEQUENCE:
        fp.seek(-8, 1)  # no sequence: the element after it
        return []
    item_implicit = implicit
    if implicit:
        (length,) = struct.unpack("<L", header[4:])
    else:
        vr = header[4:6]
        if vr not in (b"SQ", b"UN"):
            raise ActionError(
                f"the Referenced SOP Sequence has VR {vr!r}, not SQ", INVALID_ARGUMENT_VALUE
            )
        (length,) = struct.unpack("<L", fp.read(4))
        # PS3.5 6.2.2: a sequence sent as UN is encoded in Implicit VR Little Endian.
        item_implicit = vr == b"UN"
    start = fp.tell()
    references: list[SopReference] = []
    while length == _UNDEFINED_LENGTH or fp.tell() - start < length:
        item = read_sequence_item(fp, item_implicit, True, default_encoding)
        if item is None:  # Sequence Delimitation Item
            break
        if len(references) >= MAX_ACTION_REFERENCES:
            raise ActionError(
                f"more than {MAX_ACTION_REFERENCES} instances in one request",
                RESOURCE_LIMITATION,
            )
        ref = SopReference(
            _text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID")
        )
        if not is_valid_uid(ref.sop_class_uid) or not is_valid_uid(ref.sop_instance_uid):
            raise ActionError(
                f"Referenced SOP Sequence item {len(references) + 1} lacks a valid Referenced "
                "SOP Class UID or Referenced SOP Instance UID",
                INVALID_ARGUMENT_VALUE,
            )
        references.append(ref)
    return references


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a report: the configured peer it was matched to (None: nobody), its AE title
    and source address."""

    peer: str | None
    ae_title: str
    address: str

    def label(self) -> str:
        """``PACS@10.0.0.5 (peer pacs)`` for messages."""
        who = f"peer {self.peer}" if self.peer else "no configured peer"
        return f"{self.ae_title}@{self.address} ({who})"


def sender_problem(peer: str, peer_ae_title: str, sender: Sender) -> str | None:
    """Why *sender* may not report on a transaction asked of *peer* (None: it may).

    A report counts only when it comes from the peer we asked: the calling AE title is the one
    the transaction was sent to, and the association was matched to that peer's configuration
    (its AE title *and* one of its host's addresses).
    """
    if sender.ae_title != peer_ae_title:
        return (
            f"calling AE {sender.ae_title!r} is not {peer_ae_title!r}, the AE of peer {peer!r} "
            "that was asked"
        )
    if sender.peer != peer:
        return (
            f"the association from {sender.label()} is not peer {peer!r}, which was asked "
            "(check its host in the peer file)"
        )
    return None
