"""Sending one DIMSE message as P-DATA-TF PDUs: PS3.8 9.3.5 (one PDV per PDU), PS3.8 Annex E
(the command's fragments, then the data set's; every fragment but the last of an odd-length
data set even), PS3.8 D.1 (each PDU within the peer's maximum length), PS3.5 7.1 (an odd-length
data set, such as a deflated stream, goes out padded with one 0x00).

The requestor's send path, and hot: a data set taken from a file (``FileSegment``) is read with
one ``preadv`` straight into a buffer laid out as PDUs (the file's bytes land between the
headers, never copied in Python) and sent with one ``sendall`` per window of up to 8 MiB, so an
object of ordinary size costs two system calls. The buffer and its full headers are kept between
objects (``PDataWriter``), so consecutive objects on one context rewrite only the last header.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from dataclasses import dataclass

from ctnode.ul import pdu as P
from ctnode.ul.transport import send_all

#: Most PDUs laid out per window (one iovec each; Linux allows 1024).
MAX_IOV = 512
#: Largest fragment of a file segment (a peer may offer an unlimited PDU length).
MAX_FILE_FRAGMENT = 4 << 20
#: Largest window read and sent in one go.
MAX_WINDOW = 8 << 20
#: A P-DATA-TF PDU header with its one PDV item header: type, reserved, PDU length, item
#: length, context id, control byte.
_HEADER_FULL = struct.Struct(">BBLLBB")
_HEADER_LENGTH = _HEADER_FULL.size


class FileReadError(Exception):
    """Reading the file being sent failed (the cause, ``__cause__``, is the OSError)."""


@dataclass(frozen=True, slots=True)
class FileSegment:
    """A data set to send straight from a file: *length* bytes at *offset* of *path*."""

    path: str
    offset: int
    length: int


class PDataWriter:
    """Sends messages as P-DATA-TF PDUs; holds the send buffer for file segments.

    One per association (the buffer is reused for every object sent on it). ``OSError`` from the
    socket propagates; a file that cannot be read raises ``FileReadError``.
    """

    __slots__ = ("_buf", "_headers_key", "_headers_valid", "_layout", "_layout_key")

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Views of the data part of each PDU slot of ``_buf``, for (fragment size, slots).
        self._layout: list[memoryview] = []
        self._layout_key: tuple[int, int] | None = None
        #: (context id, fragment size) of the full headers in slots [0, _headers_valid).
        self._headers_key: tuple[int, int] | None = None
        self._headers_valid = 0

    def write(
        self,
        sock: socket.socket,
        context_id: int,
        command: bytes,
        dataset: bytes | memoryview | FileSegment | None,
        size: int,
        timeout: float,
    ) -> None:
        """Send the encoded *command* and then *dataset* (if any) on *context_id*, in fragments
        of at most *size* bytes (even: ``P.pdv_capacity`` of the peer's maximum)."""
        send_fragments(sock, context_id, memoryview(command), True, size, timeout)
        if isinstance(dataset, FileSegment):
            self._send_file(sock, context_id, dataset, size, timeout)
        elif dataset is not None:
            send_fragments(sock, context_id, memoryview(dataset), False, size, timeout)

    def _send_file(
        self, sock: socket.socket, context_id: int, segment: FileSegment, size: int, timeout: float
    ) -> None:
        """Stream a file segment in windows of at most ``MAX_WINDOW`` bytes and ``MAX_IOV`` PDUs
        (one ``preadv`` and one ``sendall`` each). *size* is even, so only the very last
        fragment of an odd-length segment is odd: it gets its 0x00 pad in its slot."""
        size = min(size, MAX_FILE_FRAGMENT)
        per_window = max(1, min(MAX_WINDOW // size, MAX_IOV))
        views = self._pdu_layout(size, per_window)
        out = memoryview(self._buf)
        stride = size + _HEADER_LENGTH
        try:
            fd = os.open(segment.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise FileReadError from exc
        try:
            offset, remaining = segment.offset, segment.length
            sock.settimeout(timeout)
            while True:
                want = min(per_window * size, remaining)
                full, tail = divmod(want, size)
                buffers = views[:full] + ([views[full][:tail]] if tail else [])
                _read_exactly(fd, buffers, want, offset, segment.path)
                offset += want
                remaining -= want
                count = full + (1 if tail else 0)
                # Every PDU of the window but the last is full and not last: those headers are
                # the same for every object on this context, so they are written only once.
                if self._headers_key != (context_id, size):
                    self._headers_key, self._headers_valid = (context_id, size), 0
                for i in range(self._headers_valid, count - 1):
                    _HEADER_FULL.pack_into(
                        out, i * stride, P.P_DATA_TF, 0, size + 6, size + 2, context_id, 0
                    )
                self._headers_valid = count - 1  # the last slot's header differs
                last_length = tail or size
                last_slot = (count - 1) * stride
                if last_length & 1:  # the end of an odd-length segment (PS3.5 7.1 padding)
                    out[last_slot + _HEADER_LENGTH + last_length] = 0
                    last_length += 1
                out[last_slot : last_slot + _HEADER_LENGTH] = P.pdata_header(
                    context_id, False, remaining == 0, last_length
                )
                sock.sendall(out[: last_slot + _HEADER_LENGTH + last_length])
                if remaining == 0:
                    return
        finally:
            os.close(fd)

    def _pdu_layout(self, size: int, per_window: int) -> list[memoryview]:
        """Views of the data part of each PDU slot of the send buffer (made once per size)."""
        if self._layout_key != (size, per_window):
            stride = size + _HEADER_LENGTH
            if len(self._buf) < per_window * stride:
                self._buf = bytearray(per_window * stride)
            out = memoryview(self._buf)
            self._layout = [
                out[i * stride + _HEADER_LENGTH : (i + 1) * stride] for i in range(per_window)
            ]
            self._layout_key = (size, per_window)
            self._headers_key = None
        return self._layout


def send_fragments(
    sock: socket.socket, context_id: int, view: memoryview, command: bool, size: int, timeout: float
) -> None:
    """Send *view* in one-PDV PDUs of *size* (even) bytes; an odd total gets a 0x00 pad."""
    pos = 0
    total = len(view)
    while True:
        chunk = view[pos : pos + size]
        pos += len(chunk)
        if pos < total:
            _sendmsg(sock, [P.pdata_header(context_id, command, False, size), chunk], timeout)
            continue
        if total & 1:
            header = P.pdata_header(context_id, command, True, len(chunk) + 1)
            _sendmsg(sock, [header, chunk, b"\x00"], timeout)
        else:
            _sendmsg(sock, [P.pdata_header(context_id, command, True, len(chunk)), chunk], timeout)
        return


def _sendmsg(sock: socket.socket, parts: list[bytes | memoryview], timeout: float) -> None:
    """Send *parts* as one PDU: one ``sendmsg`` (TLS sockets have none: joined, ``sendall``)."""
    if isinstance(sock, ssl.SSLSocket):
        send_all(sock, b"".join(bytes(p) for p in parts), timeout)
        return
    sock.settimeout(timeout)
    total = sum(len(p) for p in parts)
    sent = sock.sendmsg(parts)
    if sent < total:
        joined = memoryview(b"".join(bytes(p) for p in parts))
        sock.sendall(joined[sent:])


def _read_exactly(fd: int, buffers: list[memoryview], want: int, offset: int, path: str) -> None:
    """Fill *buffers* (*want* bytes in all) from *fd* at *offset*; FileReadError if the file
    is shorter or cannot be read."""
    done = 0
    while done < want:
        try:
            got = os.preadv(fd, buffers, offset + done)
        except OSError as exc:
            raise FileReadError from exc
        if got == 0:
            raise FileReadError from OSError(f"{path} is shorter than expected")
        done += got
        if done < want:  # rare (signals, odd filesystems): skip what was read
            rest: list[memoryview] = []
            skip = got
            for view in buffers:
                if skip >= len(view):
                    skip -= len(view)
                    continue
                rest.append(view[skip:])
                skip = 0
            buffers = rest
