"""Conformance of ctnode's association requestor (``ctnode.ul.requestor``) on the wire.

Real peers where one can show the rule (DCMTK ``storescp`` with an odd maximum PDU, deflated
storage); a raw-socket peer where none can (a maximum PDU below DCMTK's 4096, responses carrying
data sets they must not, an endless identifier, a release collision). The raw peer parses what
ctnode sends by hand: PDU lengths, PDV lengths and control bytes are read from the bytes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctnode.config import NodeSettings
from ctnode.dicom.contexts import (
    CT_IMAGE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STUDY_ROOT_FIND,
    VERIFICATION,
)
from ctnode.dicom.filemeta import read_meta_length
from ctnode.errors import AssociationAborted
from ctnode.peers import Peer, PeerConfig
from ctnode.scu.association import params_for
from ctnode.ul import dimse
from ctnode.ul import pdu as P
from ctnode.ul.requestor import (
    AssociationParams,
    ContextRequest,
    FileSegment,
    Requestor,
    Timeouts,
)
from tests.helpers import dicomgen
from tests.helpers.procs import started, storescp
from tests.helpers.rawclient import pdata, read_pdu

TIMEOUTS = Timeouts(connect=5, acse=5, dimse=5, network=10)
#: pydicom's deflated test image: its deflated data set is 4,303 bytes long (odd).
DEFLATED_FILE = Path(get_testdata_file("image_dfl.dcm") or "")
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
CONTEXTS = (
    ContextRequest(VERIFICATION, (IMPLICIT_VR_LE,)),
    ContextRequest(CT_IMAGE, (EXPLICIT_VR_LE,)),
    ContextRequest(SC_IMAGE, (DEFLATED_EXPLICIT_VR_LE,)),
    ContextRequest(STUDY_ROOT_FIND, (IMPLICIT_VR_LE,)),
)


def _params(port: int, called: str = "PEER", **extra: object) -> AssociationParams:
    return AssociationParams(
        "127.0.0.1",
        port,
        "CTNODE",
        called,
        CONTEXTS,
        timeouts=TIMEOUTS,
        **extra,  # type: ignore[arg-type]
    )


def _segment(path: Path) -> FileSegment:
    """The data set of a Part 10 file, as the push operation sends it (from its file offset)."""
    head = path.read_bytes()[:4096]
    offset = read_meta_length(head)
    return FileSegment(str(path), offset, path.stat().st_size - offset)


def _store_fields(sop_class: str, sop_instance: str) -> dict[str, object]:
    return {
        "AffectedSOPClassUID": sop_class,
        "CommandField": dimse.C_STORE_RQ,
        "Priority": 0,
        "AffectedSOPInstanceUID": sop_instance,
    }


def _status(
    assoc: Requestor,
    context_id: int,
    fields: dict[str, object],
    dataset: bytes | FileSegment | None = None,
) -> object:
    """The Status of the response to one request."""
    return assoc.request(context_id, fields, dataset).command.get("Status")


ECHO = {"AffectedSOPClassUID": VERIFICATION, "CommandField": dimse.C_ECHO_RQ}


def _ct_file(directory: Path) -> Path:
    """A CT instance whose data set (about 8 KiB) spans several fragments at a 4,097 maximum."""
    return dicomgen.write(dicomgen.make_dataset(size=64), directory / "ct.dcm")


# ------------------------------------------------------------------ the raw-socket peer


@dataclass
class PduSeen:
    """One PDU the peer read: its type, its PDU length (the variable field after the 6-byte
    header, which PS3.8 D.1 bounds by the maximum length) and its PDVs as (control byte, data
    length), parsed from the bytes."""

    pdu_type: int
    length: int
    pdvs: list[tuple[int, int]] = field(default_factory=list)


class RawPeer:
    """A one-association acceptor on a loopback socket: it advertises *max_pdu*, accepts every
    proposed context with its first transfer syntax, records every PDU it reads, then runs
    *script* (which answers as the case needs)."""

    def __init__(self, script: Callable[[RawPeer], None], *, max_pdu: int = 16384) -> None:
        self.script, self.max_pdu = script, max_pdu
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.seen: list[PduSeen] = []
        self.events: list[tuple[str, float]] = []
        self.data: dict[int, bytes] = {}
        self.error: BaseException | None = None
        self.sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawPeer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._thread.join(30)
        self.listener.close()
        if self.error is not None and exc_type is None:
            raise self.error

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        self.sock = conn
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            pdu_type, body = read_pdu(conn)
            assert pdu_type == P.A_ASSOCIATE_RQ, pdu_type
            rq = P.decode_associate_rq(body)
            contexts = [
                P.PresentationContextAC(c.context_id, 0, c.transfer_syntaxes[0])
                for c in rq.contexts
            ]
            user = P.UserInformation(self.max_pdu, "1.2.826.0.1.3680043.10.1405.99")
            conn.sendall(
                P.encode_associate_ac(
                    P.AssociateAC(rq.called_ae, rq.calling_ae, contexts=contexts, user=user)
                )
            )
            self.script(self)
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc
        finally:
            conn.close()

    def event(self, name: str) -> None:
        """Note *name* with the time it happened."""
        self.events.append((name, time.monotonic()))

    def read(self) -> tuple[int, bytes]:
        """The next PDU (recorded, PDVs parsed by hand)."""
        assert self.sock is not None
        pdu_type, body = read_pdu(self.sock)
        seen = PduSeen(pdu_type, len(body))
        if pdu_type == P.P_DATA_TF:
            pos = 0
            while pos < len(body):
                (length,) = struct.unpack_from(">L", body, pos)
                seen.pdvs.append((body[pos + 5], length - 2))
                pos += 4 + length
        self.seen.append(seen)
        return pdu_type, body

    def message(self) -> tuple[int, dimse.Command, bytes | None] | None:
        """The next DIMSE message as (context, command, data set), or None when the requestor
        sent A-RELEASE-RQ instead (recorded as an event, not answered)."""
        command, data = bytearray(), bytearray()
        cmd: dimse.Command | None = None
        while True:
            pdu_type, body = self.read()
            if pdu_type == P.A_RELEASE_RQ:
                self.event("A-RELEASE-RQ received")
                return None
            assert pdu_type == P.P_DATA_TF, f"unexpected PDU 0x{pdu_type:02X}"
            pos = 0
            while pos < len(body):
                (length,) = struct.unpack_from(">L", body, pos)
                context, control = body[pos + 4], body[pos + 5]
                chunk = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 1:
                    command += chunk
                    if control & 2:
                        cmd = dimse.decode_command(bytes(command))
                        if not cmd.has_dataset:
                            return context, cmd, None
                else:
                    data += chunk
                    if control & 2:
                        assert cmd is not None
                        return context, cmd, bytes(data)

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        assert self.sock is not None
        self.sock.sendall(data)

    def answer(
        self, context: int, request: dimse.Command, status: int = 0, **extra: object
    ) -> None:
        """Send the response to *request* (no data set unless *extra* says otherwise)."""
        field_value = request.get_int("CommandField") | 0x8000
        fields = dimse.response_fields(request, field_value, status, **extra)  # type: ignore[arg-type]
        self.send(pdata(context, dimse.encode_command(fields), command=True))

    def wait_closed(self, timeout: float = 10) -> bool:
        """Wait up to *timeout* s for the requestor to close the connection; True (and the event
        "closed") if it did, False if it is still open. Fails if a PDU arrives instead."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        assert not data, f"requestor sent {data[:16]!r} instead of closing"
        self.event("closed")
        return True


def serve(peer: RawPeer) -> None:
    """Answer every request with Success (keeping each data set by message ID) until the
    requestor releases; then A-RELEASE-RP and wait for the close."""
    while (message := peer.message()) is not None:
        context, request, data = message
        if data is not None:
            peer.data[request.get_int("MessageID")] = data
        peer.answer(context, request)
    peer.send(P.encode_release_rp())
    assert peer.wait_closed()


# ------------------------------------------------------------------ defects 2 and 5: fragments


@pytest.mark.parametrize("max_pdu", [512, 4097, 4099, 16383])
def test_every_pdu_fits_the_peer_maximum_and_every_fragment_is_even(
    tmp_path: Path, max_pdu: int
) -> None:
    """PS3.8 D.1: no P-DATA-TF is longer than the peer's maximum PDU length, however small (512)
    or odd; PS3.8 Annex E / PS3.5 7.1: every PDV fragment has an even length, so an odd
    maximum is rounded down. A C-ECHO, a C-STORE from memory, one from a file and the deflated
    file (odd length, padded per PS3.5 A.5) all arrive intact."""
    ct_file = _ct_file(tmp_path)
    dataset = dicomgen.dataset_bytes(ct_file)
    deflated = _segment(DEFLATED_FILE)
    assert deflated.length % 2 == 1
    with RawPeer(serve, max_pdu=max_pdu) as peer, Requestor(_params(peer.port)) as assoc:
        assert _status(assoc, 1, ECHO) == 0
        for data in (dataset, _segment(ct_file)):
            assert _status(assoc, 3, _store_fields(CT_IMAGE, "1.2.3.4"), data) == 0
        assert _status(assoc, 5, _store_fields(SC_IMAGE, "1.2.3.5"), deflated) == 0
    pdata_seen = [s for s in peer.seen if s.pdu_type == P.P_DATA_TF]
    too_long = [s.length for s in pdata_seen if s.length > max_pdu]
    odd = [n for s in pdata_seen for _, n in s.pdvs if n % 2]
    assert not too_long, f"P-DATA-TF PDUs longer than the peer's maximum {max_pdu}: {too_long[:5]}"
    assert not odd, f"odd PDV fragment lengths: {odd[:5]}"
    raw = DEFLATED_FILE.read_bytes()
    assert peer.data == {2: dataset, 3: dataset, 4: raw[deflated.offset :] + b"\x00"}


def test_deflated_file_of_odd_length_reaches_dcmtk(tmp_path: Path) -> None:
    """PS3.5 A.5 / 7.1: the deflated data set of ``image_dfl.dcm`` (odd length) goes out padded
    to even; DCMTK storescp preferring deflated (``+xd``) stores it and it decodes to the
    original image."""
    received = tmp_path / "received"
    server = storescp(received, extra=["+xd"])
    original = pydicom.dcmread(DEFLATED_FILE)
    with started(server), Requestor(_params(server.port, "STORESCP")) as assoc:
        ctx = assoc.context_for(SC_IMAGE)
        assert ctx is not None and ctx.transfer_syntax == DEFLATED_EXPLICIT_VR_LE
        fields = _store_fields(SC_IMAGE, str(original.SOPInstanceUID))
        assert _status(assoc, ctx.context_id, fields, _segment(DEFLATED_FILE)) == 0
    (stored,) = received.iterdir()
    copy = pydicom.dcmread(stored)
    assert copy.SOPInstanceUID == original.SOPInstanceUID
    assert copy.PixelData == original.PixelData


# ------------------------------------------------------------------ defect 3: bounded responses


def _answer_echo_with_dataset(peer: RawPeer) -> None:
    message = peer.message()
    assert message is not None
    context, request, _ = message
    peer.answer(context, request, CommandDataSetType=dimse.HAS_DATASET)
    with contextlib.suppress(OSError):  # the requestor may have aborted already
        peer.send(pdata(context, b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100", command=False))
    pdu_type, _ = peer.read()
    assert pdu_type == P.A_ABORT, f"expected A-ABORT, got PDU 0x{pdu_type:02X}"
    peer.event("A-ABORT received")


def test_echo_response_with_a_data_set_is_refused() -> None:
    """PS3.7 9.3.5.2: a C-ECHO-RSP has no data set. One that announces (and sends) one is a
    protocol violation: ctnode sends A-ABORT and raises AssociationAborted naming the peer."""
    with RawPeer(_answer_echo_with_dataset) as peer:
        assoc = Requestor(_params(peer.port)).open()
        with pytest.raises(
            AssociationAborted, match=r"PEER@127\.0\.0\.1:\d+ .*C-ECHO-RSP.*data set"
        ):
            assoc.request(1, ECHO)
        assert assoc.sock is None
    assert [name for name, _ in peer.events] == ["A-ABORT received"]


@dataclass
class Stream:
    """How much the streaming peer sent, and how much it had sent when ctnode's A-ABORT (or
    close) reached it."""

    sent: int = 0
    stopped_at: int | None = None
    answer: int | None = None


def _endless(kind: str, stream: Stream, cap: int) -> Callable[[RawPeer], None]:
    """A peer answering C-FIND-RQ with a pending C-FIND-RSP whose identifier (or, for
    *kind* "command", the response's command set itself) never ends."""

    def script(peer: RawPeer) -> None:
        message = peer.message()
        assert message is not None
        context, request, _ = message
        chunk = pdata(context, bytes(65536), command=kind == "command", last=False)
        if kind == "identifier":
            peer.answer(context, request, 0xFF00, CommandDataSetType=dimse.HAS_DATASET)
        assert peer.sock is not None
        try:
            while stream.sent < cap:
                if select.select([peer.sock], [], [], 0)[0]:  # ctnode sent something or closed
                    stream.stopped_at = stream.sent
                    stream.answer = peer.read()[0]
                    return
                peer.send(chunk)
                stream.sent += 65536
        except OSError:
            stream.stopped_at = stream.sent if stream.stopped_at is None else stream.stopped_at
            return
        time.sleep(TIMEOUTS.dimse + 2)  # not stopped: the requestor times out meanwhile

    return script


@pytest.mark.parametrize(
    ("kind", "limit", "limit_text"),
    [("identifier", 1 << 20, "1048576"), ("command", 64 * 1024, "65536")],
)
def test_endless_find_response_is_aborted_at_the_limit(
    kind: str, limit: int, limit_text: str
) -> None:
    """A peer streaming a C-FIND-RSP identifier (or command set) without end: ctnode stops at
    the configured limit (``node.max_response_dataset_bytes``, passed by ``params_for``; 64 KiB
    for a command set), sends A-ABORT and raises AssociationAborted naming the peer and the
    limit; its memory stays bounded (nothing like the megabytes the peer sent)."""
    stream, cap = Stream(), 64 << 20
    node = NodeSettings(max_response_dataset_bytes=limit if kind == "identifier" else 16 << 20)
    with RawPeer(_endless(kind, stream, cap)) as peer:
        config = PeerConfig(ae_title="PEER", host="127.0.0.1", port=peer.port)
        params = params_for(Peer("fake", config, Path("fake.yaml")), node, CONTEXTS)
        params.timeouts = TIMEOUTS
        assert params.max_response_dataset_bytes == node.max_response_dataset_bytes
        assoc = Requestor(params).open()
        identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "  # QueryRetrieveLevel
        tracemalloc.start()
        try:
            with pytest.raises(AssociationAborted) as caught:
                assoc.request(
                    7,
                    {
                        "AffectedSOPClassUID": STUDY_ROOT_FIND,
                        "CommandField": dimse.C_FIND_RQ,
                        "Priority": 0,
                    },
                    identifier,
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    message = str(caught.value)
    assert "PEER@127.0.0.1" in message and limit_text in message, message
    assert stream.stopped_at is not None, f"the peer sent {stream.sent} bytes, never stopped"
    assert stream.stopped_at < limit + (16 << 20), f"stopped after {stream.stopped_at} bytes"
    assert stream.answer in (P.A_ABORT, None), f"ctnode answered PDU 0x{stream.answer:02X}"
    assert peak < 4 * limit + (2 << 20), f"peak memory {peak} bytes for a {limit}-byte limit"


# ------------------------------------------------------------------ defect 7: release collision


def _collide(peer: RawPeer) -> None:
    """PS3.8 9.2.2 from the acceptor's side: A-RELEASE-RQ crosses ours (Sta10); read the
    requestor's A-RELEASE-RP (Sta12), then, a little later, send ours (Sta13)."""
    assert peer.message() is None
    peer.send(P.encode_release_rq())
    peer.event("A-RELEASE-RQ sent")
    pdu_type, _ = peer.read()
    peer.event(f"PDU 0x{pdu_type:02X} received")
    if peer.wait_closed(0.5):
        return  # the requestor did not wait for our A-RELEASE-RP
    peer.send(P.encode_release_rp())
    peer.event("A-RELEASE-RP sent")
    assert peer.wait_closed()


def test_release_collision_waits_for_the_peer_release_rp() -> None:
    """PS3.8 9.2.2 / state table: a requestor that receives A-RELEASE-RQ while awaiting
    A-RELEASE-RP (Sta7 -> Sta9) answers A-RELEASE-RP (Sta11) and closes only after the peer's
    A-RELEASE-RP arrives (AR-3), not at once."""
    with RawPeer(_collide) as peer:
        assoc = Requestor(_params(peer.port)).open()
        assoc.release()
        assert assoc.released
    names = [name for name, _ in peer.events]
    assert names == [
        "A-RELEASE-RQ received",
        "A-RELEASE-RQ sent",
        f"PDU 0x{P.A_RELEASE_RP:02X} received",
        "A-RELEASE-RP sent",
        "closed",
    ], names
    times = dict(peer.events)
    assert times["closed"] >= times["A-RELEASE-RP sent"], "closed before the peer's A-RELEASE-RP"
