"""A raw-socket DICOM client for hostile tests: it sends exactly the bytes a case needs and reads
the exact reply PDU (type, result/source/reason, DIMSE status).

PDUs are built with ``ctnode.ul.pdu`` encoders where a well-formed PDU is wanted and by hand
(``raw_pdu``) where it is not. Replies are parsed here, by hand, not with ctnode's reader.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ctnode.dicom.contexts import EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION
from ctnode.ul import dimse
from ctnode.ul import pdu as P

#: Seconds a reply may take before the case fails (generous: 2 cores, other tests running).
REPLY_TIMEOUT = 10.0


class Closed(ConnectionError):
    """The node closed the connection (EOF or reset) instead of sending a PDU."""


def connect(port: int, source: str = "127.0.0.1", timeout: float = REPLY_TIMEOUT) -> socket.socket:
    """A TCP connection to the node from *source* (any 127.x.y.z address works on Linux)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_pdu(pdu_type: int, body: bytes, declared: int | None = None) -> bytes:
    """A PDU with any type byte and any declared length (default: the true length)."""
    length = len(body) if declared is None else declared
    return struct.pack(">BxL", pdu_type, length) + body


def pdata(context_id: int, data: bytes, *, command: bool, last: bool = True) -> bytes:
    """A P-DATA-TF PDU with one PDV."""
    return P.pdata_header(context_id, command, last, len(data)) + data


def associate_rq(
    contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_VR_LE,)),),
    *,
    calling: str = "MODALITY",
    called: str = "CTNODE",
    max_pdu: int = 16384,
    version: int = 1,
    application_context: str = P.APPLICATION_CONTEXT,
    roles: Sequence[P.RoleSelection] = (),
) -> bytes:
    """A well-formed A-ASSOCIATE-RQ (context ids 1, 3, 5, ...)."""
    rq = P.AssociateRQ(
        called_ae=called,
        calling_ae=calling,
        protocol_version=version,
        application_context=application_context,
        contexts=[
            P.PresentationContextRQ(2 * i + 1, abstract, tuple(syntaxes))
            for i, (abstract, syntaxes) in enumerate(contexts)
        ],
        user=P.UserInformation(
            max_pdu_length=max_pdu,
            implementation_class_uid="1.2.826.0.1.3680043.10.1405.99",
            implementation_version_name="HOSTILE",
            roles=list(roles),
        ),
    )
    return P.encode_associate_rq(rq)


def associate_rq_raw_ae(calling: bytes, called: bytes = b"CTNODE") -> bytes:
    """An A-ASSOCIATE-RQ whose AE title fields are arbitrary bytes (control characters...)."""
    good = bytearray(associate_rq())
    good[10:26] = called[:16].ljust(16, b" ")
    good[26:42] = calling[:16].ljust(16, b" ")
    return bytes(good)


def read_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    """*n* bytes, or Closed if the node closes first (TimeoutError past *deadline*)."""
    out = bytearray()
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"node sent {len(out)} of {n} expected bytes")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(out))
        except ConnectionResetError as exc:
            raise Closed("connection reset by the node") from exc
        if not chunk:
            raise Closed(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def read_pdu(sock: socket.socket, timeout: float = REPLY_TIMEOUT) -> tuple[int, bytes]:
    """The next PDU from the node as (type, body); Closed if the connection ends instead."""
    deadline = time.monotonic() + timeout
    header = read_exact(sock, 6, deadline)
    pdu_type, length = struct.unpack(">BxL", header)
    assert length <= 16 << 20, f"node sent a PDU declaring {length} bytes"
    return pdu_type, read_exact(sock, length, deadline)


def wait_closed(sock: socket.socket, timeout: float = REPLY_TIMEOUT) -> float:
    """Wait until the node closes the connection without sending anything; returns seconds.

    Fails if the node sends a PDU first.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection still open after {timeout} s")
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return time.monotonic() - started
        assert not data, f"node sent {data[:16]!r} instead of closing"
        return time.monotonic() - started


def expect_closed_after_pdu(sock: socket.socket, timeout: float = REPLY_TIMEOUT) -> None:
    """After the node's final PDU we close our side, as a requestor does (PS3.8); the node
    must then close too, sending nothing more."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    wait_closed(sock, timeout)


def expect_rj(sock: socket.socket, timeout: float = REPLY_TIMEOUT) -> tuple[int, int, int]:
    """Read an A-ASSOCIATE-RJ and the close after it; returns (result, source, reason)."""
    pdu_type, body = read_pdu(sock, timeout)
    assert pdu_type == P.A_ASSOCIATE_RJ, f"expected A-ASSOCIATE-RJ, got PDU 0x{pdu_type:02X}"
    assert len(body) == 4, body
    expect_closed_after_pdu(sock)
    return body[1], body[2], body[3]


def expect_abort(sock: socket.socket, timeout: float = REPLY_TIMEOUT) -> tuple[int, int]:
    """Read an A-ABORT (skipping nothing) and the close after it; returns (source, reason)."""
    pdu_type, body = read_pdu(sock, timeout)
    assert pdu_type == P.A_ABORT, f"expected A-ABORT, got PDU 0x{pdu_type:02X} {body[:32]!r}"
    assert len(body) == 4, body
    expect_closed_after_pdu(sock)
    return body[2], body[3]


@dataclass
class RawAssociation:
    """An association opened with raw PDUs; DIMSE messages are sent and read by hand."""

    sock: socket.socket
    ac: P.AssociateAC
    node_max_pdu: int
    message_id: int = 0
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        port: int,
        contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_VR_LE,)),),
        *,
        calling: str = "MODALITY",
        source: str = "127.0.0.1",
        max_pdu: int = 16384,
        roles: Sequence[P.RoleSelection] = (),
    ) -> RawAssociation:
        """Connect and negotiate; fails the test unless the node answers A-ASSOCIATE-AC."""
        sock = connect(port, source)
        sock.sendall(associate_rq(contexts, calling=calling, max_pdu=max_pdu, roles=roles))
        pdu_type, body = read_pdu(sock)
        assert pdu_type == P.A_ASSOCIATE_AC, f"association not accepted: PDU 0x{pdu_type:02X}"
        ac = P.decode_associate_ac(body)
        proposed = {2 * i + 1: abstract for i, (abstract, _) in enumerate(contexts)}
        accepted = {
            c.context_id: (proposed[c.context_id], c.transfer_syntax)
            for c in ac.contexts
            if c.result == 0
        }
        return cls(sock, ac, ac.user.max_pdu_length, contexts=accepted)

    def context(self, abstract: str, syntax: str | None = None) -> int:
        """The id of an accepted context for *abstract* (and *syntax*)."""
        for cid, (a, ts) in self.contexts.items():
            if a == abstract and (syntax is None or ts == syntax):
                return cid
        raise AssertionError(f"no accepted context for {abstract} {syntax}")

    def rejected_context(self) -> int:
        """The id of a context the node rejected."""
        for c in self.ac.contexts:
            if c.result != 0:
                return c.context_id
        raise AssertionError("every context was accepted")

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def next_id(self) -> int:
        """A fresh message id."""
        self.message_id += 1
        return self.message_id

    def send_command(self, context_id: int, fields: dict[str, dimse.CommandValue | None]) -> None:
        """A command set in one P-DATA-TF."""
        self.send(pdata(context_id, dimse.encode_command(fields), command=True))

    def send_dataset(
        self, context_id: int, data: bytes, *, fragment: int = 8192, last: bool = True
    ) -> None:
        """Data set fragments (the last one flagged unless *last* is false)."""
        view = memoryview(data)
        for pos in range(0, len(view), fragment):
            chunk = bytes(view[pos : pos + fragment])
            is_last = last and pos + fragment >= len(view)
            self.send(pdata(context_id, chunk, command=False, last=is_last))

    def store_fields(
        self, sop_class: str, sop_instance: str, message_id: int | None = None
    ) -> dict[str, dimse.CommandValue | None]:
        """C-STORE-RQ command fields."""
        return {
            "AffectedSOPClassUID": sop_class,
            "CommandField": dimse.C_STORE_RQ,
            "MessageID": self.next_id() if message_id is None else message_id,
            "Priority": 0,
            "CommandDataSetType": dimse.HAS_DATASET,
            "AffectedSOPInstanceUID": sop_instance,
        }

    def c_store(
        self,
        sop_class: str,
        sop_instance: str,
        data: bytes,
        *,
        syntax: str = EXPLICIT_VR_LE,
        context_id: int | None = None,
    ) -> int:
        """C-STORE raw data set bytes with arbitrary command UIDs; returns the status."""
        cid = self.context(sop_class, syntax) if context_id is None else context_id
        fields = self.store_fields(sop_class, sop_instance)
        self.send_command(cid, fields)
        self.send_dataset(cid, data)
        rsp = self.receive()
        assert rsp.field == dimse.C_STORE_RSP, rsp
        assert rsp.get("MessageIDBeingRespondedTo") == fields["MessageID"]
        return rsp.get_int("Status")

    def c_echo(self) -> int:
        """C-ECHO on the Verification context; returns the status."""
        mid = self.next_id()
        self.send_command(
            self.context(VERIFICATION),
            {
                "AffectedSOPClassUID": VERIFICATION,
                "CommandField": dimse.C_ECHO_RQ,
                "MessageID": mid,
                "CommandDataSetType": dimse.NO_DATASET,
            },
        )
        rsp = self.receive()
        assert rsp.field == dimse.C_ECHO_RSP and rsp.get("MessageIDBeingRespondedTo") == mid
        return rsp.get_int("Status")

    def receive(self, timeout: float = REPLY_TIMEOUT) -> dimse.Command:
        """The next command set from the node (fails on anything but P-DATA command PDVs)."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            pdu_type, body = read_pdu(self.sock, max(deadline - time.monotonic(), 0.01))
            assert pdu_type == P.P_DATA_TF, f"expected P-DATA-TF, got PDU 0x{pdu_type:02X} {body!r}"
            for _, control, data in P.iter_pdvs(memoryview(body)):
                assert control & 1, "the node sent a data set where a command was expected"
                buf += data
                if control & 2:
                    return dimse.decode_command(bytes(buf))

    def release(self) -> None:
        """A-RELEASE-RQ; asserts A-RELEASE-RP and the close after it."""
        self.send(P.encode_release_rq())
        pdu_type, _ = read_pdu(self.sock)
        assert pdu_type == P.A_RELEASE_RP, f"expected A-RELEASE-RP, got PDU 0x{pdu_type:02X}"
        expect_closed_after_pdu(self.sock)
        self.sock.close()

    def abort(self) -> None:
        """Send A-ABORT (service user) and close."""
        with contextlib.suppress(OSError):
            self.send(P.encode_abort(P.ABORT_SOURCE_USER, 0))
        self.sock.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()


def open_many(port: int, count: int, source: str) -> list[socket.socket]:
    """*count* idle connections from *source*."""
    return [connect(port, source) for _ in range(count)]


def close_all(socks: Iterable[socket.socket]) -> None:
    """Close every socket."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def rejection_of(
    port: int,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    calling: str,
    called: str = "CTNODE",
    source: str = "127.0.0.1",
) -> tuple[int, int, int]:
    """Propose an association and return the (result, source, reason) of its rejection."""
    sock = connect(port, source=source)
    try:
        sock.sendall(associate_rq(contexts, calling=calling, called=called))
        return expect_rj(sock)
    finally:
        sock.close()
