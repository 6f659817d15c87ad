"""Hostile input at the Upper Layer: who may associate, malformed and oversized PDUs, stalls and
floods. Every case asserts the node's exact answer, then the suite's invariants (conftest)."""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE, VERIFICATION
from ctnode.ul import dimse
from ctnode.ul import pdu as P
from tests.adversarial.harness import (
    ACSE_TIMEOUT,
    MAX_PDU,
    MAX_PER_ADDRESS,
    NETWORK_TIMEOUT,
    HostileNode,
    proc_status,
)
from tests.helpers import rawclient as raw
from tests.helpers.dicomgen import encode_dataset, make_dataset

pytestmark = pytest.mark.slow

#: Slack on top of a timeout for the node to notice and close (2 busy cores).
SLACK = 4.0


def _rj(node: HostileNode, rq: bytes, source: str = "127.0.0.1") -> tuple[int, int, int]:
    with raw.connect(node.port, source) as sock:
        sock.sendall(rq)
        return raw.expect_rj(sock)


def _abort(node: HostileNode, data: bytes, source: str = "127.0.0.1") -> tuple[int, int]:
    with raw.connect(node.port, source) as sock:
        sock.sendall(data)
        return raw.expect_abort(sock)


# ---------------------------------------------------------------- who may associate


def test_unknown_calling_ae(node: HostileNode) -> None:
    """A calling AE title that is no configured peer: A-ASSOCIATE-RJ 1/1/3."""
    assert _rj(node, raw.associate_rq(calling="STRANGER")) == (1, 1, 3)


def test_wrong_called_ae(node: HostileNode) -> None:
    """A called AE title that is not ours: A-ASSOCIATE-RJ 1/1/7."""
    assert _rj(node, raw.associate_rq(called="NOTCTNODE")) == (1, 1, 7)


def test_known_ae_from_wrong_address(node: HostileNode) -> None:
    """FARAWAY is configured at 127.0.0.2; calling as FARAWAY from 127.0.0.1: RJ 1/1/3."""
    assert _rj(node, raw.associate_rq(calling="FARAWAY")) == (1, 1, 3)


def test_unknown_address_rejected_before_any_pdu(node: HostileNode) -> None:
    """From an address no peer has, the node answers RJ 1/1/3 without parsing anything: to
    64 bytes of garbage at once, and to a client that sends nothing once the node has waited
    briefly (at most the ACSE timeout) for a request it would not have read anyway."""
    with raw.connect(node.port, "127.0.0.3") as sock:
        sock.sendall(b"\xff" * 64)
        started = time.monotonic()
        assert raw.expect_rj(sock) == (1, 1, 3)
        assert time.monotonic() - started < ACSE_TIMEOUT
    with raw.connect(node.port, "127.0.0.3") as sock:
        started = time.monotonic()
        assert raw.expect_rj(sock) == (1, 1, 3)
        assert time.monotonic() - started <= ACSE_TIMEOUT + SLACK


def test_wrong_application_context(node: HostileNode) -> None:
    """An application context other than the DICOM one: A-ASSOCIATE-RJ 1/1/2."""
    rq = raw.associate_rq(application_context="1.2.3.4.5")
    assert _rj(node, rq) == (1, 1, 2)


def test_bad_protocol_version(node: HostileNode) -> None:
    """Protocol version 2 (bit 0 clear, version 1 not supported by the caller): RJ 1/2/2."""
    assert _rj(node, raw.associate_rq(version=2)) == (1, 2, 2)


# ---------------------------------------------------------------- stalls and floods


def test_connect_and_send_nothing(node: HostileNode) -> None:
    """A connection that never sends an A-ASSOCIATE-RQ is closed (no PDU) when the ACSE
    timeout (ARTIM) expires, not before and not much after."""
    with raw.connect(node.port) as sock:
        waited = raw.wait_closed(sock, ACSE_TIMEOUT + SLACK + 5)
    assert ACSE_TIMEOUT * 0.75 <= waited <= ACSE_TIMEOUT + SLACK


def test_partial_associate_rq_then_stall(node: HostileNode) -> None:
    """Half an A-ASSOCIATE-RQ, then silence: closed without a reply within the read deadline."""
    with raw.connect(node.port) as sock:
        sock.sendall(raw.associate_rq()[:20])
        waited = raw.wait_closed(sock, NETWORK_TIMEOUT + SLACK + 5)
    assert waited <= NETWORK_TIMEOUT + SLACK


def test_trickling_associate_rq_is_dropped(node: HostileNode) -> None:
    """One byte of an A-ASSOCIATE-RQ every 0.25 s: never silent, but the whole PDU must arrive
    within the read deadline, so the connection is closed soon after it."""
    rq = raw.associate_rq()
    with raw.connect(node.port) as sock:
        started = time.monotonic()
        closed = False
        for byte in rq:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            if time.monotonic() - started > NETWORK_TIMEOUT + SLACK:
                break
        if not closed:
            raw.wait_closed(sock, SLACK)
        assert time.monotonic() - started <= NETWORK_TIMEOUT + SLACK + 1


def test_partial_pdata_then_stall(node: HostileNode) -> None:
    """On an established association, half a P-DATA-TF then silence: A-ABORT 2/0 (reason not
    specified) once the read deadline passes."""
    assoc = raw.RawAssociation.open(node.port)
    command = dimse.encode_command(
        {"CommandField": dimse.C_ECHO_RQ, "MessageID": 1, "CommandDataSetType": 0x0101}
    )
    assoc.send(raw.pdata(1, command, command=True)[:10])
    started = time.monotonic()
    assert raw.expect_abort(assoc.sock, NETWORK_TIMEOUT + SLACK + 5) == (2, 0)
    assert time.monotonic() - started <= NETWORK_TIMEOUT + SLACK
    assoc.close()


def test_idle_association_is_aborted(node: HostileNode) -> None:
    """An established association that says nothing for network_timeout: A-ABORT 2/0."""
    assoc = raw.RawAssociation.open(node.port)
    started = time.monotonic()
    assert raw.expect_abort(assoc.sock, NETWORK_TIMEOUT + SLACK + 5) == (2, 0)
    assert NETWORK_TIMEOUT * 0.75 <= time.monotonic() - started <= NETWORK_TIMEOUT + SLACK
    assoc.close()


def _outcomes(
    socks: list[socket.socket], wait: float
) -> tuple[list[tuple[int, int, int]], int, list[socket.socket]]:
    """Read every socket for *wait* seconds: (rejections, closed without PDU, still silent)."""
    rejections: list[tuple[int, int, int]] = []
    closed = 0
    pending = set(socks)
    deadline = time.monotonic() + wait
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(deadline - time.monotonic(), 0.01)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                sel.unregister(sock)
                pending.discard(sock)
                try:
                    rejections.append(raw.expect_rj(sock))
                except raw.Closed:
                    closed += 1
    return rejections, closed, [s for s in socks if s in pending]


def test_stalled_connections_while_legit_device_stores(node: HostileNode) -> None:
    """FARAWAY's address opens 12 connections that send nothing; meanwhile the legitimate
    device stores within 2 s. 8 (the per-address cap) are held until the ACSE timeout and
    then closed without a PDU; the other 4 get A-ASSOCIATE-RJ 2/3/2."""
    socks = raw.open_many(node.port, 12, "127.0.0.2")
    try:
        assert node.legit_echo_and_store() <= 2.0
        rejections, closed, silent = _outcomes(socks, ACSE_TIMEOUT + SLACK)
        assert rejections == [(2, 3, 2)] * 4
        assert closed == MAX_PER_ADDRESS and silent == []
    finally:
        raw.close_all(socks)


def test_connection_flood_is_capped(node: HostileNode) -> None:
    """80 connections at once from one address: the node creates at most 2 x the per-address
    cap of association threads for it (8 held, up to 8 being rejected); every other connection
    gets RJ 2/3/2 or is closed with no reply; the legitimate device is not starved."""
    base = proc_status(node.proc.pid)["Threads"]
    socks: list[socket.socket] = []
    peak = base
    try:
        for _ in range(80):
            socks.append(raw.connect(node.port, "127.0.0.2"))
            peak = max(peak, proc_status(node.proc.pid)["Threads"])
        assert node.legit_echo_and_store() <= 2.0
        peak = max(peak, proc_status(node.proc.pid)["Threads"])
        rejections, closed, silent = _outcomes(socks, ACSE_TIMEOUT + SLACK)
        assert set(rejections) <= {(2, 3, 2)} and silent == []
        assert len(rejections) + closed == 80
        assert closed >= 80 - 2 * MAX_PER_ADDRESS
        assert peak <= base + 2 * MAX_PER_ADDRESS + 2, f"{peak - base} threads for one address"
    finally:
        raw.close_all(socks)


# ---------------------------------------------------------------- oversized and malformed PDUs


def test_oversized_associate_rq(node: HostileNode) -> None:
    """An A-ASSOCIATE-RQ header declaring 2 MiB (> 1 MiB): A-ABORT 2/6 at once, before any of
    the body is read (only the header is sent)."""
    started = time.monotonic()
    assert _abort(node, raw.raw_pdu(P.A_ASSOCIATE_RQ, b"", declared=2 << 20)) == (2, 6)
    assert time.monotonic() - started < NETWORK_TIMEOUT


def test_associate_rq_item_overruns_pdu(node: HostileNode) -> None:
    """A presentation context item whose length runs past the PDU: A-ABORT 2/6."""
    rq = bytearray(raw.associate_rq())
    ctx_at = rq.index(b"\x20\x00", 74)
    rq[ctx_at + 2 : ctx_at + 4] = (0xFFF0).to_bytes(2, "big")
    assert _abort(node, bytes(rq)) == (2, 6)


def test_pdata_over_advertised_maximum(node: HostileNode) -> None:
    """A P-DATA-TF longer than the maximum PDU length we advertised: A-ABORT 2/6, before the
    body is read."""
    assoc = raw.RawAssociation.open(node.port)
    assert assoc.node_max_pdu == MAX_PDU
    assoc.send(raw.raw_pdu(P.P_DATA_TF, b"", declared=MAX_PDU + 1))
    assert raw.expect_abort(assoc.sock) == (2, 6)
    assoc.close()


def test_pdv_length_beyond_its_pdu(node: HostileNode) -> None:
    """A PDV item whose length runs past the end of its P-DATA-TF: A-ABORT 2/6."""
    assoc = raw.RawAssociation.open(node.port)
    body = (1000).to_bytes(4, "big") + bytes([1, 3]) + b"\x00" * 20
    assoc.send(raw.raw_pdu(P.P_DATA_TF, body))
    assert raw.expect_abort(assoc.sock) == (2, 6)
    assoc.close()


def test_pdata_without_pdv(node: HostileNode) -> None:
    """An empty P-DATA-TF (no PDV item at all): A-ABORT 2/6."""
    assoc = raw.RawAssociation.open(node.port)
    assoc.send(raw.raw_pdu(P.P_DATA_TF, b""))
    assert raw.expect_abort(assoc.sock) == (2, 6)
    assoc.close()


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x42, 0xFF])
def test_unknown_pdu_type(node: HostileNode, pdu_type: int) -> None:
    """A PDU type that does not exist: A-ABORT 2/1 (unrecognised PDU)."""
    assert _abort(node, raw.raw_pdu(pdu_type, b"\x00" * 4)) == (2, 1)


def test_http_request_on_dicom_port(node: HostileNode) -> None:
    """An HTTP request (a port scanner or a browser): A-ABORT 2/1, nothing else."""
    request = b"GET / HTTP/1.1\r\nHost: ctnode\r\n\r\n"
    assert _abort(node, request) == (2, 1)


def test_tls_client_hello_on_plain_port(node: HostileNode) -> None:
    """A TLS ClientHello on the plain DICOM port (first byte 0x16): A-ABORT 2/1."""
    hello = bytes.fromhex("16030100c8010000c40303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    assert _abort(node, hello) == (2, 1)


@pytest.mark.parametrize(
    "pdu",
    [
        raw.pdata(1, b"\x00" * 16, command=True),
        P.encode_release_rq(),
        raw.raw_pdu(P.A_ASSOCIATE_AC, b"\x00" * 80),
    ],
    ids=["p-data", "release-rq", "associate-ac"],
)
def test_pdu_before_association(node: HostileNode, pdu: bytes) -> None:
    """P-DATA-TF, A-RELEASE-RQ or A-ASSOCIATE-AC where an A-ASSOCIATE-RQ must come first:
    A-ABORT 2/2 (unexpected PDU)."""
    assert _abort(node, pdu) == (2, 2)


def test_second_associate_rq_on_an_association(node: HostileNode) -> None:
    """An A-ASSOCIATE-RQ on an established association: A-ABORT 2/2."""
    assoc = raw.RawAssociation.open(node.port)
    assoc.send(raw.associate_rq())
    assert raw.expect_abort(assoc.sock) == (2, 2)
    assoc.close()


def test_pdata_after_release(node: HostileNode) -> None:
    """A complete C-STORE sent right after A-RELEASE-RQ (in the same write): the node answers
    A-RELEASE-RP and closes; the C-STORE is never processed (no row, no file, no spool)."""
    assoc = raw.RawAssociation.open(node.port, [(CT_IMAGE, [EXPLICIT_VR_LE])])
    cid = assoc.context(CT_IMAGE)
    ds = make_dataset(CT_IMAGE, size=8)
    store = raw.pdata(
        cid,
        dimse.encode_command(assoc.store_fields(CT_IMAGE, str(ds.SOPInstanceUID))),
        command=True,
    ) + raw.pdata(cid, encode_dataset(ds), command=False)
    assoc.send(P.encode_release_rq() + store)
    pdu_type, _ = raw.read_pdu(assoc.sock)
    assert pdu_type == P.A_RELEASE_RP
    raw.expect_closed_after_pdu(assoc.sock)
    assoc.close()


@pytest.mark.parametrize("max_pdu", [1, 6, 7, 20])
def test_tiny_max_pdu_length(node: HostileNode, max_pdu: int) -> None:
    """A requestor announcing a tiny maximum PDU length still gets its C-ECHO-RSP, split into
    P-DATA-TF PDUs that respect that maximum wherever two bytes of data fit (otherwise 2 bytes
    per PDV: PS3.8 Annex E, fragments are even), and the association ends normally."""
    assoc = raw.RawAssociation.open(
        node.port, [(VERIFICATION, ["1.2.840.10008.1.2"])], max_pdu=max_pdu
    )
    assoc.send_command(
        1,
        {
            "AffectedSOPClassUID": VERIFICATION,
            "CommandField": dimse.C_ECHO_RQ,
            "MessageID": 7,
            "CommandDataSetType": dimse.NO_DATASET,
        },
    )
    buf = bytearray()
    for _ in range(500):
        pdu_type, body = raw.read_pdu(assoc.sock)
        assert pdu_type == P.P_DATA_TF
        assert len(body) <= max(max_pdu, 8)
        (_, control, data), *rest = P.iter_pdvs(memoryview(body))
        assert not rest
        buf += data
        if control & 2:
            break
    rsp = dimse.decode_command(bytes(buf))
    assert rsp.field == dimse.C_ECHO_RSP and rsp.get("Status") == 0
    assoc.release()
