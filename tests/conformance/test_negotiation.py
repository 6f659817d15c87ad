"""Association negotiation and DIMSE framing as PS3.8 and PS3.7 require, checked with
hand-made PDUs over a real socket into a running ctnode SCP (and DCMTK's echoscu as a sanity
check that a real peer is still served).

The answers ctnode gives, and the clause each follows:

* an item of unknown type in an A-ASSOCIATE-RQ, an unknown sub-item in a presentation context
  or in the user information: skipped (PS3.8 9.3.1, "items of unrecognized types shall be
  ignored and skipped"); its length is still honoured;
* a presentation context ID of 0 or an even ID, or two contexts with one ID: A-ABORT 2/6,
  invalid-PDU-parameter value (PS3.8 9.3.2.2 Table 9-13: IDs are odd integers 1-255;
  PS3.8 7.1.1.13: the ID identifies the context, so it is unique);
* no presentation context: A-ASSOCIATE-RJ 1/1/1, rejected permanent, service user, no reason
  given (PS3.8 9.3.2 Table 9-11: one or more presentation context items);
* a second User Information item: A-ABORT 2/5, unexpected-PDU-parameter (PS3.8 9.3.2
  Table 9-11: one User Information item);
* a C-ECHO-RQ announcing a data set: A-ABORT 2/6 (PS3.7 9.3.5.1: its Command Data Set Type
  shall be 0101H); data set PDVs after a command announcing none: A-ABORT 2/2;
* a command set over 64 KiB, or a non-storage data set over 16 MiB: A-ABORT 2/6 (ctnode's
  bounds; PS3.8 9.3.8 reasons).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctnode.daemon import Runtime
from ctnode.dicom.contexts import IMPLICIT_VR_LE, VERIFICATION
from ctnode.ul import dimse
from ctnode.ul import pdu as P
from tests.helpers import rawclient as raw
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.procs import run_tool

PEERS = {
    "modality": {
        "ae_title": "MODALITY",
        "host": "127.0.0.1",
        "port": 104,
        "accept": ["echo", "store"],
    },
}
#: Largest data set ctnode holds for a message other than C-STORE-RQ (ul.acceptor).
SMALL_DATASET_BOUND = 16 * 1024 * 1024
#: Largest command set ctnode accepts (ul.acceptor).
COMMAND_BOUND = 64 * 1024
UNKNOWN = 0x99


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """One in-process ctnode SCP (SQLite) for the module; MODALITY may echo and store."""
    tmp: Path = tmp_path_factory.mktemp("negotiation")
    write_peers(tmp, PEERS)
    with running_node(make_settings(tmp, f"sqlite:///{tmp / 'ctnode.db'}")) as runtime:
        yield runtime


# ---------------------------------------------------------------- hand-made A-ASSOCIATE-RQ


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _application_context() -> bytes:
    return _item(0x10, P.APPLICATION_CONTEXT.encode())


def _context(context_id: int, extra: bytes = b"") -> bytes:
    """A presentation context item proposing Verification in Implicit VR LE."""
    sub = _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT_VR_LE.encode()) + extra
    return _item(0x20, bytes([context_id, 0, 0, 0]) + sub)


def _user_info(extra: bytes = b"") -> bytes:
    return _item(
        0x50,
        _item(0x51, struct.pack(">L", 16384))
        + _item(0x52, b"1.2.826.0.1.3680043.10.1405.98")
        + extra,
    )


def _rq(*items: bytes) -> bytes:
    fixed = struct.pack(">HH", 1, 0) + b"CTNODE".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
    return raw.raw_pdu(P.A_ASSOCIATE_RQ, fixed + b"".join(items))


def _accepted(node: Runtime, rq: bytes) -> raw.RawAssociation:
    """Send *rq*; the node must answer A-ASSOCIATE-AC accepting context 1 (Verification)."""
    sock = raw.connect(node.server.port)
    sock.sendall(rq)
    pdu_type, body = raw.read_pdu(sock)
    assert pdu_type == P.A_ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got PDU 0x{pdu_type:02X}"
    ac = P.decode_associate_ac(body)
    assert [(c.context_id, c.result) for c in ac.contexts] == [(1, 0)], ac.contexts
    return raw.RawAssociation(sock, ac, ac.user.max_pdu_length, contexts={1: (VERIFICATION, "")})


def _answer(node: Runtime, rq: bytes) -> tuple[int, bytes]:
    """Send *rq*; the node's reply PDU as (type, body), after which it closes."""
    with raw.connect(node.server.port) as sock:
        sock.sendall(rq)
        pdu_type, body = raw.read_pdu(sock)
        raw.expect_closed_after_pdu(sock)
    return pdu_type, body


def _echo_then_release(assoc: raw.RawAssociation) -> None:
    assert assoc.c_echo() == 0
    assoc.release()


# ---------------------------------------------------------------- unknown items: skipped


@pytest.mark.parametrize("where", ["before-contexts", "between-contexts", "last"])
def test_unknown_item_in_associate_rq_is_skipped(node: Runtime, where: str) -> None:
    """PS3.8 9.3.1: an item of unrecognised type in an A-ASSOCIATE-RQ is ignored and skipped
    (its length honoured): the association is accepted and a C-ECHO succeeds."""
    unknown = _item(UNKNOWN, b"\x01\x02\x03\x04\x05")
    items = {
        "before-contexts": [_application_context(), unknown, _context(1), _user_info()],
        "between-contexts": [_application_context(), _context(1), unknown, _user_info()],
        "last": [_application_context(), _context(1), _user_info(), unknown],
    }[where]
    _echo_then_release(_accepted(node, _rq(*items)))


def test_unknown_sub_item_in_presentation_context_is_skipped(node: Runtime) -> None:
    """PS3.8 9.3.1: a sub-item of unrecognised type inside a presentation context item is
    ignored and skipped: the context is accepted and a C-ECHO on it succeeds."""
    context = _context(1, extra=_item(UNKNOWN, b"skip me"))
    _echo_then_release(_accepted(node, _rq(_application_context(), context, _user_info())))


def test_unknown_sub_item_in_user_information_is_skipped(node: Runtime) -> None:
    """PS3.8 9.3.1: a sub-item of unrecognised type inside the User Information item is
    ignored and skipped: the association is accepted."""
    user = _user_info(extra=_item(UNKNOWN, b"\x00\x00"))
    _echo_then_release(_accepted(node, _rq(_application_context(), _context(1), user)))


def test_unknown_sub_item_overrunning_its_item_is_an_error(node: Runtime) -> None:
    """PS3.8 9.3.1 skips unknown sub-items by their length; a length running past its
    presentation context item is still malformed: A-ABORT 2/6."""
    bad = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode()))
    bad += struct.pack(">BxH", UNKNOWN, 200)  # claims 200 bytes that are not there
    pdu_type, body = _answer(node, _rq(_application_context(), bad, _user_info()))
    assert (pdu_type, body[2:]) == (P.A_ABORT, b"\x02\x06")


# ---------------------------------------------------------------- presentation context IDs


@pytest.mark.parametrize(
    "ids",
    [(0,), (2,), (1, 4), (1, 1), (3, 5, 3)],
    ids=["zero", "even", "even-second", "dup", "dup3"],
)
def test_invalid_presentation_context_id_aborts(node: Runtime, ids: tuple[int, ...]) -> None:
    """PS3.8 9.3.2.2 (Table 9-13): presentation context IDs are odd integers 1-255, and per
    PS3.8 7.1.1.13 each identifies one context. ID 0, an even ID or an ID used twice is an
    invalid PDU parameter: A-ABORT, source 2 (service provider), reason 6."""
    rq = _rq(_application_context(), *(_context(i) for i in ids), _user_info())
    pdu_type, body = _answer(node, rq)
    assert pdu_type == P.A_ABORT, f"expected A-ABORT, got PDU 0x{pdu_type:02X}"
    assert (body[2], body[3]) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_INVALID_PARAMETER)


def test_highest_odd_context_id_is_accepted(node: Runtime) -> None:
    """PS3.8 9.3.2.2: 255 is a valid presentation context ID; it is answered as proposed."""
    with raw.connect(node.server.port) as sock:
        sock.sendall(_rq(_application_context(), _context(255), _user_info()))
        pdu_type, body = raw.read_pdu(sock)
        assert pdu_type == P.A_ASSOCIATE_AC
        ac = P.decode_associate_ac(body)
        assert [(c.context_id, c.result) for c in ac.contexts] == [(255, 0)]
        sock.sendall(P.encode_release_rq())
        assert raw.read_pdu(sock)[0] == P.A_RELEASE_RP


def test_no_presentation_context_is_rejected(node: Runtime) -> None:
    """PS3.8 9.3.2 (Table 9-11): an A-ASSOCIATE-RQ carries one or more presentation context
    items. One with none is rejected: A-ASSOCIATE-RJ 1/1/1 (permanent, service user, no
    reason given), as DCMTK's DcmSCP answers."""
    pdu_type, body = _answer(node, _rq(_application_context(), _user_info()))
    assert pdu_type == P.A_ASSOCIATE_RJ, f"expected A-ASSOCIATE-RJ, got PDU 0x{pdu_type:02X}"
    assert tuple(body[1:4]) == (P.RJ_PERMANENT, P.RJ_SOURCE_USER, P.RJ_NO_REASON)


def test_second_user_information_item_aborts(node: Runtime) -> None:
    """PS3.8 9.3.2 (Table 9-11): an A-ASSOCIATE-RQ carries one User Information item; a second
    one is an unexpected PDU parameter: A-ABORT, source 2, reason 5 (not silently used)."""
    rq = _rq(_application_context(), _context(1), _user_info(), _user_info())
    pdu_type, body = _answer(node, rq)
    assert pdu_type == P.A_ABORT, f"expected A-ABORT, got PDU 0x{pdu_type:02X}"
    assert (body[2], body[3]) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PARAMETER)


# ---------------------------------------------------------------- DIMSE framing and bounds


def _echo_fields(message_id: int, dataset_type: int) -> dict[str, dimse.CommandValue | None]:
    return {
        "AffectedSOPClassUID": VERIFICATION,
        "CommandField": dimse.C_ECHO_RQ,
        "MessageID": message_id,
        "CommandDataSetType": dataset_type,
    }


def _verification(node: Runtime) -> raw.RawAssociation:
    return _accepted(node, _rq(_application_context(), _context(1), _user_info()))


def test_echo_announcing_a_dataset_aborts(node: Runtime) -> None:
    """PS3.7 9.3.5.1: a C-ECHO-RQ's Command Data Set Type shall be 0101H (no data set). One
    announcing a data set (and sending it) is an invalid command: A-ABORT 2/6, no C-ECHO-RSP."""
    assoc = _verification(node)
    command = dimse.encode_command(_echo_fields(1, dimse.HAS_DATASET))
    dataset = struct.pack("<HHL", 0x0008, 0x0052, 6) + b"STUDY "
    assoc.send(raw.pdata(1, command, command=True) + raw.pdata(1, dataset, command=False))
    assert raw.expect_abort(assoc.sock) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_INVALID_PARAMETER)
    assoc.close()


def test_dataset_after_a_command_announcing_none_aborts(node: Runtime) -> None:
    """PS3.7 9.3.5.1 / PS3.8 9.3.5: a C-ECHO-RQ announcing no data set is answered; data set
    PDVs that follow belong to no message: A-ABORT 2/2 (unexpected)."""
    assoc = _verification(node)
    assoc.send_command(1, _echo_fields(7, dimse.NO_DATASET))
    rsp = assoc.receive()
    assert rsp.field == dimse.C_ECHO_RSP and rsp.get("Status") == 0
    assoc.send(raw.pdata(1, struct.pack("<HHL", 0x0008, 0x0052, 6) + b"STUDY ", command=False))
    assert raw.expect_abort(assoc.sock) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PDU)
    assoc.close()


def test_over_long_command_set_aborts(node: Runtime) -> None:
    """PS3.8 9.3.8: command fragments adding up to more than ctnode's 64 KiB command bound are
    refused with A-ABORT 2/6 (invalid PDU parameter value) before any more is buffered."""
    assoc = _verification(node)
    chunk = b"\x00" * (min(assoc.node_max_pdu, 16384) - 6)
    for _ in range(COMMAND_BOUND // len(chunk) + 1):
        assoc.send(raw.pdata(1, chunk, command=True, last=False))
    assert raw.expect_abort(assoc.sock) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_INVALID_PARAMETER)
    assoc.close()


@pytest.mark.slow
def test_over_large_non_storage_dataset_aborts(node: Runtime) -> None:
    """PS3.8 9.3.8: a data set of a message other than C-STORE-RQ (here a C-FIND-RQ
    identifier) larger than ctnode's 16 MiB bound is refused with A-ABORT 2/6 as soon as it
    exceeds the bound, not consumed and answered."""
    assoc = _verification(node)
    assoc.send_command(
        1,
        {
            "AffectedSOPClassUID": VERIFICATION,
            "CommandField": dimse.C_FIND_RQ,
            "MessageID": 9,
            "Priority": 0,
            "CommandDataSetType": dimse.HAS_DATASET,
        },
    )
    fragment = min(assoc.node_max_pdu, 65536) - 6
    total = SMALL_DATASET_BOUND + 1
    sent = 0
    chunk = b"\x00" * fragment
    try:
        while sent < total:
            size = min(fragment, total - sent)
            sent += size
            assoc.send(raw.pdata(1, chunk[:size], command=False, last=sent >= total))
    except OSError as exc:  # the node stopped reading: it must have aborted before the end
        raise AssertionError(f"node closed after {sent} of {total} bytes: {exc}") from exc
    assert raw.expect_abort(assoc.sock, 30) == (
        P.ABORT_SOURCE_PROVIDER,
        P.ABORT_INVALID_PARAMETER,
    )
    assoc.close()


# ---------------------------------------------------------------- a real peer


def test_dcmtk_echoscu_still_succeeds(node: Runtime) -> None:
    """Sanity: DCMTK's echoscu (one odd context ID, well-formed items) still associates,
    echoes and releases."""
    result = run_tool(
        ["echoscu", "-aet", "MODALITY", "-aec", "CTNODE", "127.0.0.1", str(node.server.port)],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
