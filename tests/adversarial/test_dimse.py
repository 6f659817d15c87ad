"""Hostile input at the DIMSE and data set level: malformed command sets, hostile UIDs and
strings, broken data sets, transfers cut short, duplicates, unsolicited commitment reports.
Every case asserts the node's exact answer, then the suite's invariants (conftest)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import time
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ctnode.dicom.contexts import (
    CT_IMAGE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE,
    STORAGE_COMMITMENT_PUSH,
    STORAGE_COMMITMENT_PUSH_INSTANCE,
    VERIFICATION,
)
from ctnode.ul import dimse
from ctnode.ul import pdu as P
from tests.adversarial.harness import (
    DIMSE_TIMEOUT,
    MAX_INSTANCE_BYTES,
    MAX_PDU,
    NETWORK_TIMEOUT,
    HostileNode,
    poll,
)
from tests.helpers import rawclient as raw
from tests.helpers.dicomgen import encode_dataset, make_dataset
from tests.helpers.waiting import wait_until

CT = [(CT_IMAGE, [EXPLICIT_VR_LE])]
SLACK = 4.0


def _store_assoc(node: HostileNode) -> raw.RawAssociation:
    return raw.RawAssociation.open(
        node.port, [(CT_IMAGE, [EXPLICIT_VR_LE]), (VERIFICATION, [IMPLICIT_VR_LE])]
    )


def _ct(node: HostileNode, sop_instance: str | None = None, size: int = 8) -> Dataset:
    return make_dataset(CT_IMAGE, node.ids, sop_instance=sop_instance, size=size)


def _element(element: int, value: bytes) -> bytes:
    """A group 0000 element in implicit VR little endian, value as given (no padding)."""
    return struct.pack("<HHL", 0, element, len(value)) + value


def _command(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<L", len(body))) + body


def _aborted_by_command(node: HostileNode, command: bytes) -> tuple[int, int]:
    assoc = _store_assoc(node)
    assoc.send(raw.pdata(assoc.context(VERIFICATION), command, command=True))
    result = raw.expect_abort(assoc.sock)
    assoc.close()
    return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _row(node: HostileNode, uid: str) -> tuple[str, str | None]:
    db = node.data_dir / "ctnode.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT sha256, study_description FROM instances WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
    assert row is not None, f"{uid} is not indexed"
    return row[0], row[1]


# ---------------------------------------------------------------- contexts and command sets


@pytest.mark.parametrize("which", ["rejected", "never-proposed"])
def test_dimse_on_a_context_not_accepted(node: HostileNode, which: str) -> None:
    """A command on a presentation context the node rejected (unknown abstract syntax), or on
    an id that was never proposed: A-ABORT 2/6."""
    assoc = raw.RawAssociation.open(
        node.port, [(VERIFICATION, [IMPLICIT_VR_LE]), ("1.2.3.4.5.6", [IMPLICIT_VR_LE])]
    )
    cid = assoc.rejected_context() if which == "rejected" else 99
    assoc.send_command(
        cid,
        {
            "AffectedSOPClassUID": VERIFICATION,
            "CommandField": dimse.C_ECHO_RQ,
            "MessageID": 1,
            "CommandDataSetType": dimse.NO_DATASET,
        },
    )
    assert raw.expect_abort(assoc.sock) == (2, 6)
    assoc.close()


@pytest.mark.parametrize(
    "command",
    [
        _command(_element(0x0110, b"\x01\x00"), _element(0x0800, b"\x01\x01")),
        _command(_element(0x0100, b"\x30\x00"), _element(0x0110, b"\x01\x00\x00\x00")),
        _command(_element(0x0100, b"\x30\x00\x00\x00"), _element(0x0110, b"\x01\x00")),
        _command(_element(0x0100, b"\x30\x00")) + struct.pack("<HHL", 0x0008, 0x0016, 2) + b"1\x00",
        _command(_element(0x0100, b"\x30\x00")) + struct.pack("<HHL", 0, 0x0110, 400) + b"\x01",
        _command(_element(0x0100, b"\x30\x00"), _element(0x0800, b"\x01\x01")),
        _command(
            _element(0x0002, "1.2.840.10008.1.1\u00e9".encode("latin-1")),
            _element(0x0100, b"\x30\x00"),
            _element(0x0110, b"\x01\x00"),
            _element(0x0800, b"\x01\x01"),
        ),
        b"\x00\x00\x00",
    ],
    ids=[
        "no-command-field",
        "message-id-wrong-vr-length",
        "command-field-wrong-vr-length",
        "element-outside-group-0000",
        "element-runs-past-the-end",
        "no-message-id",
        "non-ascii-uid",
        "truncated-element-header",
    ],
)
def test_malformed_command_set(node: HostileNode, command: bytes) -> None:
    """Command sets with a missing required element, an element of the wrong VR length, a
    non-group-0000 element, an element running past its end, a non-ASCII UID or a truncated
    header: A-ABORT 2/6 (invalid parameter), no DIMSE response."""
    assert _aborted_by_command(node, command) == (2, 6)


def test_command_set_over_64_kib(node: HostileNode) -> None:
    """Command fragments adding up to more than 64 KiB: A-ABORT 2/6 (bounded memory)."""
    assoc = _store_assoc(node)
    cid = assoc.context(VERIFICATION)
    chunk = b"\x00" * (MAX_PDU - 12)
    assoc.send(raw.pdata(cid, chunk, command=True, last=False))
    assoc.send(raw.pdata(cid, chunk, command=True, last=False))
    assert raw.expect_abort(assoc.sock) == (2, 6)
    assoc.close()


def test_response_sent_as_a_request(node: HostileNode) -> None:
    """A C-ECHO-RSP from the requestor (we sent no request): A-ABORT 2/2 (unexpected)."""
    assoc = _store_assoc(node)
    assoc.send_command(
        assoc.context(VERIFICATION),
        {
            "AffectedSOPClassUID": VERIFICATION,
            "CommandField": dimse.C_ECHO_RSP,
            "MessageIDBeingRespondedTo": 1,
            "CommandDataSetType": dimse.NO_DATASET,
            "Status": 0,
        },
    )
    assert raw.expect_abort(assoc.sock) == (2, 2)
    assoc.close()


def test_dataset_without_a_command(node: HostileNode) -> None:
    """A data set PDV with no command announcing it: A-ABORT 2/2."""
    assoc = _store_assoc(node)
    assoc.send(raw.pdata(assoc.context(CT_IMAGE), encode_dataset(_ct(node)), command=False))
    assert raw.expect_abort(assoc.sock) == (2, 2)
    assoc.close()


def test_command_while_a_dataset_is_expected(node: HostileNode) -> None:
    """A new command in the middle of a C-STORE's data set: A-ABORT 2/2; the partial spool
    file is removed."""
    assoc = _store_assoc(node)
    cid = assoc.context(CT_IMAGE)
    ds = _ct(node, size=64)
    assoc.send_command(cid, assoc.store_fields(CT_IMAGE, str(ds.SOPInstanceUID)))
    assoc.send_dataset(cid, encode_dataset(ds)[:4000], last=False)
    assoc.send_command(cid, assoc.store_fields(CT_IMAGE, str(ds.SOPInstanceUID)))
    assert raw.expect_abort(assoc.sock) == (2, 2)
    assoc.close()


def test_unsupported_operation(node: HostileNode) -> None:
    """A C-FIND-RQ on the Verification context (ctnode offers no query SCP): 0x0211."""
    assoc = _store_assoc(node)
    assoc.send_command(
        assoc.context(VERIFICATION),
        {
            "AffectedSOPClassUID": VERIFICATION,
            "CommandField": dimse.C_FIND_RQ,
            "MessageID": 3,
            "Priority": 0,
            "CommandDataSetType": dimse.NO_DATASET,
        },
    )
    rsp = assoc.receive()
    assert rsp.field == dimse.C_FIND_RSP and rsp.get("Status") == 0x0211
    assoc.release()


# ---------------------------------------------------------------- C-STORE: hostile UIDs


def test_cstore_without_affected_sop_instance_uid(node: HostileNode) -> None:
    """A C-STORE-RQ lacking Affected SOP Instance UID: 0xC000, nothing stored."""
    assoc = _store_assoc(node)
    cid = assoc.context(CT_IMAGE)
    fields = assoc.store_fields(CT_IMAGE, "")
    fields["AffectedSOPInstanceUID"] = None
    assoc.send_command(cid, fields)
    assoc.send_dataset(cid, encode_dataset(_ct(node)))
    rsp = assoc.receive()
    assert rsp.get("Status") == 0xC000
    assoc.release()


@pytest.mark.parametrize(
    "template",
    [
        "../../../../../../../../tmp/{marker}",
        "1.2/../../{marker}",
        "..",
        "1.2\\..\\3",
        "1.2\x00.3",
        "1." + "2" * 70,
        "1.2.3;touch {marker}",
    ],
    ids=["traversal", "slash", "dotdot", "backslash", "nul", "over-64", "shell"],
)
def test_hostile_affected_sop_instance_uid(node: HostileNode, template: str) -> None:
    """Affected SOP Instance UIDs with '/', '..', '\\', NUL, over 64 characters or shell
    syntax (the data set carrying the same value): 0xC000; no file anywhere, no row."""
    uid = template.format(marker=node.marker)
    ds = _ct(node, sop_instance=uid)
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, uid, encode_dataset(ds)) == 0xC000
    assoc.release()


def test_traversal_in_dataset_study_uid(node: HostileNode) -> None:
    """A valid command whose data set has a traversal StudyInstanceUID: 0xC000, nothing
    written (the path is built from data set UIDs only after they are validated)."""
    ds = _ct(node)
    ds.StudyInstanceUID = f"../../../../../../../tmp/{node.marker}"
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, str(ds.SOPInstanceUID), encode_dataset(ds)) == 0xC000
    assoc.release()


def test_dataset_command_uid_mismatch(node: HostileNode) -> None:
    """The data set's SOP Instance UID differs from the command's: 0xA900, nothing stored."""
    ds = _ct(node)
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, node.new_uid(), encode_dataset(ds)) == 0xA900
    assoc.release()


def test_sop_class_not_matching_context(node: HostileNode) -> None:
    """A C-STORE whose SOP class is not its context's abstract syntax (MR on the CT context,
    CT on the Verification context): 0x0122 (SOP class not supported)."""
    ds = make_dataset(MR_IMAGE, node.ids, size=8)
    assoc = _store_assoc(node)
    cid = assoc.context(CT_IMAGE)
    assert assoc.c_store(MR_IMAGE, str(ds.SOPInstanceUID), encode_dataset(ds), context_id=cid) == (
        0x0122
    )
    ct = _ct(node)
    verification = assoc.context(VERIFICATION)
    status = assoc.c_store(
        CT_IMAGE, str(ct.SOPInstanceUID), encode_dataset(ct), context_id=verification
    )
    assert status == 0x0122
    assoc.release()


def test_cstore_declaring_no_dataset(node: HostileNode) -> None:
    """A C-STORE-RQ with CommandDataSetType 0x0101 (no data set): 0xC000."""
    assoc = _store_assoc(node)
    fields = assoc.store_fields(CT_IMAGE, node.new_uid())
    fields["CommandDataSetType"] = dimse.NO_DATASET
    assoc.send_command(assoc.context(CT_IMAGE), fields)
    assert assoc.receive().get("Status") == 0xC000
    assoc.release()


# ---------------------------------------------------------------- C-STORE: broken data sets


def _deep(node: HostileNode, depth: int) -> Dataset:
    ds = _ct(node)
    inner = Dataset()
    inner.CodeMeaning = "leaf"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return ds


def _file_meta_inside(node: HostileNode) -> bytes:
    ds = _ct(node)
    meta = struct.pack("<HH2sH", 2, 0x10, b"UI", 20) + b"1.2.840.10008.1.2.1\x00"
    return meta + encode_dataset(ds)


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "empty", "file-meta-inside", "bad-vr", "over-deep"]
)
def test_broken_dataset(node: HostileNode, kind: str) -> None:
    """Undecodable data sets: random bytes, cut mid-element, empty, containing a file meta
    group, an invalid VR, sequences nested 65 deep (the limit is 64): 0xC000, no file, no row,
    and the association goes on (a valid object is stored right after)."""
    ds = _ct(node)
    uid = str(ds.SOPInstanceUID)
    good = encode_dataset(ds)
    data = {
        "garbage": bytes((i * 131 + 7) % 256 for i in range(3000)),
        "truncated": good[: len(good) // 2 + 3],
        "empty": b"",
        "file-meta-inside": _file_meta_inside(node) if kind == "file-meta-inside" else b"",
        "bad-vr": good[:4] + b"x!" + good[6:],
        "over-deep": encode_dataset(_deep(node, 65)) if kind == "over-deep" else b"",
    }[kind]
    assoc = _store_assoc(node)
    cid = assoc.context(CT_IMAGE)
    assoc.send_command(cid, assoc.store_fields(CT_IMAGE, uid))
    if data:
        assoc.send_dataset(cid, data)
    else:
        assoc.send(raw.pdata(cid, b"", command=False))
    assert assoc.receive().get("Status") == 0xC000
    after = _ct(node)
    assert assoc.c_store(CT_IMAGE, str(after.SOPInstanceUID), encode_dataset(after)) == 0
    node.stored.add(str(after.SOPInstanceUID))
    assoc.release()


def test_dataset_nested_at_the_limit(node: HostileNode) -> None:
    """Sequences nested exactly 64 deep are accepted: 0x0000 and indexed."""
    ds = _deep(node, 64)
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, str(ds.SOPInstanceUID), encode_dataset(ds)) == 0
    node.stored.add(str(ds.SOPInstanceUID))
    assoc.release()


def test_oversize_dataset(node: HostileNode) -> None:
    """A data set larger than storage.max_instance_bytes (2 MiB here): 0xA700, the spool file
    stops growing at the limit and is removed, nothing stored."""
    ds = _ct(node, size=1050)
    data = encode_dataset(ds)
    assert len(data) > MAX_INSTANCE_BYTES
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, str(ds.SOPInstanceUID), data) == 0xA700
    assoc.release()


def test_deflate_bomb(node: HostileNode) -> None:
    """A Deflated Explicit VR data set a few KiB long that inflates past max_instance_bytes:
    0xA700 (like any oversize data set), memory bounded by the limit, nothing stored."""
    ds = _ct(node)
    ds.add_new(0x00091010, "OB", bytes(3 * MAX_INSTANCE_BYTES))
    plain = encode_dataset(ds)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(plain) + packer.flush()
    assert len(bomb) < 64 * 1024
    assoc = raw.RawAssociation.open(node.port, [(CT_IMAGE, [DEFLATED_EXPLICIT_VR_LE])])
    status = assoc.c_store(CT_IMAGE, str(ds.SOPInstanceUID), bomb, syntax=DEFLATED_EXPLICIT_VR_LE)
    assert status == 0xA700
    assoc.release()


# ---------------------------------------------------------------- transfers cut short


def _half_sent(node: HostileNode) -> raw.RawAssociation:
    """An association with a C-STORE whose data set is half sent (its spool file exists)."""
    ds = _ct(node, size=256)
    data = encode_dataset(ds)
    assoc = _store_assoc(node)
    cid = assoc.context(CT_IMAGE)
    assoc.send_command(cid, assoc.store_fields(CT_IMAGE, str(ds.SOPInstanceUID)))
    assoc.send_dataset(cid, data[: len(data) // 2], last=False)
    assert poll(node.spool, lambda names: len(names) == 1, 10), "no spool file while receiving"
    return assoc


def test_abort_mid_dataset(node: HostileNode) -> None:
    """The requestor sends A-ABORT halfway through a data set: no response, the partial
    spool file is removed, no row."""
    assoc = _half_sent(node)
    assoc.abort()


def test_tcp_reset_mid_dataset(node: HostileNode) -> None:
    """The connection is reset (RST) halfway through a data set: the partial spool file is
    removed, no row."""
    assoc = _half_sent(node)
    raw.reset(assoc.sock)


@pytest.mark.slow
def test_stall_mid_dataset(node: HostileNode) -> None:
    """Silence halfway through a data set: A-ABORT 2/0 within min(dimse, network) timeout
    plus slack; the partial spool file is removed."""
    assoc = _half_sent(node)
    started = time.monotonic()
    assert raw.expect_abort(assoc.sock, 30) == (2, 0)
    assert time.monotonic() - started <= min(DIMSE_TIMEOUT, NETWORK_TIMEOUT) + SLACK
    assoc.close()


def test_release_with_cstore_incomplete(node: HostileNode) -> None:
    """A-RELEASE-RQ while a C-STORE's data set is incomplete: A-RELEASE-RP (the partial object
    is discarded, never stored); the spool file is removed."""
    assoc = _half_sent(node)
    assoc.release()


# ---------------------------------------------------------------- duplicates and strings


def test_same_instance_twice_same_bytes(node: HostileNode) -> None:
    """The same instance twice with identical bytes: 0x0000 both times, one row, one file."""
    ds = _ct(node)
    uid, data = str(ds.SOPInstanceUID), encode_dataset(ds)
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, uid, data) == 0
    assert assoc.c_store(CT_IMAGE, uid, data) == 0
    assoc.release()
    node.stored.add(uid)
    assert _row(node, uid)[0] == _sha256(data)
    assert list((node.data_dir / "quarantine").glob(f"{uid}.*")) == []


def test_same_instance_twice_different_bytes(node: HostileNode) -> None:
    """The same SOP Instance UID with different bytes (on_duplicate: keep_first): 0x0000 both
    times; the first copy stays stored and indexed, the second is kept in quarantine/."""
    ds = _ct(node)
    uid, first = str(ds.SOPInstanceUID), encode_dataset(ds)
    ds.SeriesDescription = "changed"
    second = encode_dataset(ds)
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, uid, first) == 0
    assert assoc.c_store(CT_IMAGE, uid, second) == 0
    assoc.release()
    node.stored.add(uid)
    assert _row(node, uid)[0] == _sha256(first)
    kept = list((node.data_dir / "quarantine").glob(f"{uid}.*"))
    assert len(kept) == 1 and kept[0].read_bytes().endswith(second)


HOSTILE_TEXT = (
    "$(touch /tmp/{marker}-pwned)`id`;rm -rf / | cat /etc/passwd > x && \x1b[2J\x1b]0;t\x07"
)


def _log_lines_since(node: HostileNode, start: int) -> list[str]:
    assert node.proc.log is not None
    return node.proc.log.lines[start:]


def test_shell_metacharacters_and_escapes_in_dataset(node: HostileNode) -> None:
    """Patient name, descriptions and IDs full of shell syntax, newlines and terminal escape
    sequences are stored as data (0x0000, bytes identical, indexed verbatim); nothing is
    executed, and no log line carries them or breaks out of its JSON object."""
    assert node.proc.log is not None
    start = len(node.proc.log.lines)
    text = HOSTILE_TEXT.format(marker=node.marker)
    ds = _ct(node)
    ds.PatientName = text[:60]
    ds.PatientID = "`reboot`\n$HOME"
    ds.StudyDescription = text[:64]
    ds.SeriesDescription = "line one\nline two\r\n\x1b[31mred"
    uid, data = str(ds.SOPInstanceUID), encode_dataset(ds)
    assoc = _store_assoc(node)
    assert assoc.c_store(CT_IMAGE, uid, data) == 0
    assoc.release()
    node.stored.add(uid)
    assert _row(node, uid)[1] == text[:64].strip()
    node.wait_event("scp.association", calling_ae="MODALITY")
    for line in _log_lines_since(node, start):
        assert "\x1b" not in line and node.marker not in line and "reboot" not in line, line
        json.loads(line)


def test_control_characters_in_ae_titles(node: HostileNode) -> None:
    """Calling and called AE titles with escape sequences, newlines and shell syntax:
    A-ASSOCIATE-RJ 1/1/7 (not our called AE) and 1/1/3 (not a peer); the log lines about them
    stay one JSON object each, with the control characters escaped."""
    assert node.proc.log is not None
    start = len(node.proc.log.lines)
    nasty = b"\x1b[2J\n$(id)`;|"
    with raw.connect(node.port) as sock:
        sock.sendall(raw.associate_rq_raw_ae(calling=b"MODALITY", called=nasty))
        assert raw.expect_rj(sock) == (1, 1, 7)
    with raw.connect(node.port) as sock:
        sock.sendall(raw.associate_rq_raw_ae(calling=nasty))
        assert raw.expect_rj(sock) == (1, 1, 3)

    def both_logged() -> bool:
        events = [json.loads(line) for line in _log_lines_since(node, start)]
        return sum(e.get("event") == "scp.association" for e in events) >= 2

    wait_until(both_logged, 10, message="two scp.association log lines")
    lines = _log_lines_since(node, start)
    assert sum('"scp.association"' in line for line in lines) >= 2
    for line in lines:
        assert "\x1b" not in line, line
        json.loads(line)


# ---------------------------------------------------------------- N-EVENT-REPORT


def _report(node: HostileNode, calling: str) -> int:
    """An unsolicited storage commitment report from *calling*; returns the status."""
    assoc = raw.RawAssociation.open(
        node.port,
        [(STORAGE_COMMITMENT_PUSH, [IMPLICIT_VR_LE])],
        calling=calling,
        roles=[P.RoleSelection(STORAGE_COMMITMENT_PUSH, False, True)],
    )
    cid = assoc.context(STORAGE_COMMITMENT_PUSH)
    report = Dataset()
    report.TransactionUID = node.new_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE
    item.ReferencedSOPInstanceUID = sorted(node.stored)[0]
    report.ReferencedSOPSequence = Sequence([item])
    assoc.send_command(
        cid,
        {
            "AffectedSOPClassUID": STORAGE_COMMITMENT_PUSH,
            "CommandField": dimse.N_EVENT_REPORT_RQ,
            "MessageID": 11,
            "CommandDataSetType": dimse.HAS_DATASET,
            "AffectedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_INSTANCE,
            "EventTypeID": 1,
        },
    )
    assoc.send_dataset(cid, encode_dataset(report, explicit=False))
    rsp = assoc.receive()
    assert rsp.field == dimse.N_EVENT_REPORT_RSP and rsp.get("MessageIDBeingRespondedTo") == 11
    assert rsp.get("EventTypeID") == 1
    assoc.release()
    return rsp.get_int("Status")


def test_n_event_report_for_unknown_transaction(node: HostileNode) -> None:
    """A commitment report from PACS for a transaction ctnode never started: 0x0110
    (processing failure), and nothing changes (rows and files as before)."""
    before = node.index()
    assert _report(node, "PACS") == 0x0110
    assert node.index() == before


def test_n_event_report_from_wrong_peer(node: HostileNode) -> None:
    """A commitment report from OTHERPACS, a peer ctnode asked nothing of: 0x0110, nothing
    changes."""
    before = node.index()
    assert _report(node, "OTHERPACS") == 0x0110
    assert node.index() == before


def test_n_event_report_from_peer_not_allowed_to_report(node: HostileNode) -> None:
    """MODALITY (accept: echo, store) proposing only Storage Commitment: RJ 1/1/3."""
    with raw.connect(node.port) as sock:
        sock.sendall(
            raw.associate_rq(
                [(STORAGE_COMMITMENT_PUSH, [IMPLICIT_VR_LE])],
                roles=[P.RoleSelection(STORAGE_COMMITMENT_PUSH, False, True)],
            )
        )
        assert raw.expect_rj(sock) == (1, 1, 3)
