"""Sending a data set straight from a file: the PDUs a requestor writes carry exactly the
file's bytes (an odd length padded with one 0x00, PS3.5 7.1), whatever the sizes (one PDU,
several windows, exact multiples, a short file)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from ctnode.ul import pdu as P
from ctnode.ul.requestor import (
    AssociationParams,
    ContextRequest,
    FileSegment,
    Requestor,
)
from ctnode.ul.transport import PduReader


def _requestor(sock: socket.socket, peer_max_pdu: int) -> Requestor:
    params = AssociationParams(
        "127.0.0.1", 1, "A", "B", [ContextRequest("1.2.840.10008.5.1.4.1.1.2", ("1.2",))]
    )
    req = Requestor(params)
    req.sock = sock
    req.peer_max_pdu = peer_max_pdu
    return req


def _collect(sock: socket.socket, out: dict[str, object]) -> None:
    reader = PduReader(sock, 64 << 20, 10)
    data = bytearray()
    pdus: list[tuple[int, int]] = []
    try:
        while True:
            pdu_type, body = reader.read_pdu()
            assert pdu_type == P.P_DATA_TF
            for context_id, control, chunk in P.iter_pdvs(body):
                pdus.append((context_id, control))
                if not control & 1:
                    data += chunk
                if control == 2:  # last fragment of the data set
                    out["data"], out["pdus"] = bytes(data), pdus
                    return
    except Exception as exc:  # surfaced by the test
        out["error"] = exc


@pytest.mark.parametrize(
    ("length", "max_pdu"),
    [
        (1, 16384),
        (16378, 16384),  # exactly one full PDU
        (16379, 16384),
        (16378 * 600, 16384),  # an exact multiple, several windows
        (9 << 20, 1 << 20),  # several windows of large PDUs
        (5_000_001, 4096),
    ],
)
def test_file_segment_arrives_intact(tmp_path: Path, length: int, max_pdu: int) -> None:
    """The data PDVs reassemble to the segment; only the last one is flagged last; each PDU
    fits the peer's maximum length."""
    payload = os.urandom(length)
    path = tmp_path / "f.bin"
    path.write_bytes(b"H" * 333 + payload + b"T" * 7)
    ours, theirs = socket.socketpair()
    out: dict[str, object] = {}
    reader = threading.Thread(target=_collect, args=(theirs, out))
    reader.start()
    try:
        req = _requestor(ours, max_pdu)
        req.send(1, {"CommandField": 1, "MessageID": 1}, FileSegment(str(path), 333, length))
        reader.join(30)
    finally:
        ours.close()
        theirs.close()
    assert "error" not in out, out.get("error")
    assert out["data"] == payload + b"\x00" * (length % 2)
    pdus = out["pdus"]
    assert isinstance(pdus, list)
    data_controls = [c for _, c in pdus if not c & 1]
    assert data_controls[-1] == 2 and all(c == 0 for c in data_controls[:-1])
    assert len(data_controls) == -(-length // (max_pdu - 6))


def test_short_file_raises_and_aborts(tmp_path: Path) -> None:
    """A file shorter than its segment: OSError to the caller, the association is aborted."""
    path = tmp_path / "short.bin"
    path.write_bytes(bytes(1000))
    ours, theirs = socket.socketpair()
    try:
        req = _requestor(ours, 16384)
        with pytest.raises(OSError, match="shorter than expected"):
            req.send(1, {"CommandField": 1, "MessageID": 1}, FileSegment(str(path), 0, 5000))
        assert req.sock is None
    finally:
        ours.close()
        theirs.close()


def test_objects_of_varying_sizes_on_one_association(tmp_path: Path) -> None:
    """Big, small, big again on one requestor (the buffer's headers are reused): each object
    arrives intact."""
    ours, theirs = socket.socketpair()
    req = _requestor(ours, 16384)
    try:
        for i, length in enumerate([600_000, 20_000, 1, 16378 * 40, 700_001]):
            payload = os.urandom(length)
            path = tmp_path / f"{i}.bin"
            path.write_bytes(payload)
            out: dict[str, object] = {}
            reader = threading.Thread(target=_collect, args=(theirs, out))
            reader.start()
            req.send(
                1 + 2 * (i % 2),
                {"CommandField": 1, "MessageID": i + 1},
                FileSegment(str(path), 0, length),
            )
            reader.join(30)
            assert "error" not in out, out.get("error")
            assert out["data"] == payload + b"\x00" * (length % 2), length
            pdus = out["pdus"]
            assert isinstance(pdus, list)
            assert {context for context, _ in pdus} == {1 + 2 * (i % 2)}
    finally:
        ours.close()
        theirs.close()
