"""Socket I/O for the Upper Layer: bounded PDU reads with deadlines, whole-PDU writes.

``PduReader`` reads into one preallocated buffer; a PDU's declared length is checked against the
limit for its type *before* any byte of its body is read or allocated, and the whole PDU must
arrive within the read deadline (a client trickling one byte a minute is dropped, not waited for).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time

from ctnode.ul import pdu as P

#: Largest A-ASSOCIATE-RQ/AC accepted (a real one is a few KiB even with 128 contexts).
MAX_ASSOCIATE_PDU = 1 << 20
#: Largest PDU of the other, fixed-size types.
MAX_SMALL_PDU = 64


class PeerClosed(ConnectionError):
    """The peer closed the connection."""


class ReadTimeout(TimeoutError):
    """Nothing (or not all of a PDU) arrived within the read deadline."""


class PduTooLarge(P.PDUError):
    """A PDU's declared length exceeds what we accept for its type."""


class UnknownPdu(P.PDUError):
    """The first byte is not a PDU type."""


def set_socket_options(sock: socket.socket) -> None:
    """TCP_NODELAY (no Nagle/delayed-ACK stalls) and keepalive on every DICOM socket."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class PduReader:
    """Read whole PDUs from *sock* (plain or TLS) with limits and deadlines."""

    def __init__(self, sock: socket.socket, max_pdata_length: int, timeout: float) -> None:
        self.sock = sock
        self.max_pdata_length = max_pdata_length
        self.timeout = timeout
        self._capacity = max(max_pdata_length + 6, 65536) + 65536
        self._buf = bytearray(self._capacity)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def limit_for(self, pdu_type: int) -> int:
        """Largest body accepted for a PDU type."""
        if pdu_type == P.P_DATA_TF:
            return self.max_pdata_length
        if pdu_type in (P.A_ASSOCIATE_RQ, P.A_ASSOCIATE_AC):
            return MAX_ASSOCIATE_PDU
        return MAX_SMALL_PDU

    def _fill(self, need: int, deadline: float | None) -> None:
        """Ensure at least *need* unread bytes are buffered."""
        if self._end - self._start >= need:
            return
        if self._start + need > self._capacity:
            remaining = self._end - self._start
            self._buf[0:remaining] = self._view[self._start : self._end]
            self._start, self._end = 0, remaining
        while self._end - self._start < need:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadTimeout("PDU not complete within the read deadline")
                self.sock.settimeout(left)
            try:
                n = self.sock.recv_into(self._view[self._end :])
            except TimeoutError as exc:  # socket.timeout is TimeoutError
                raise ReadTimeout("peer silent beyond the read deadline") from exc
            if n == 0:
                raise PeerClosed("peer closed the connection")
            self._end += n

    def has_input(self) -> bool:
        """True if bytes of a PDU are buffered or readable now (never waits, consumes nothing)."""
        if self._end > self._start:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def wait_readable(self, timeout: float) -> bool:
        """True once a PDU has started to arrive (buffered), False after *timeout* seconds of
        silence. Nothing is consumed; PeerClosed if the peer closed the connection."""
        try:
            self._fill(1, time.monotonic() + timeout)
        except ReadTimeout:
            return False
        return True

    def read_pdu(self, first_timeout: float | None = None) -> tuple[int, memoryview]:
        """The next PDU as (type, body). The body view is valid until the next call.

        *first_timeout* bounds the wait for the PDU to start (default: the read deadline); once it
        has started, the rest must arrive within the read deadline.
        """
        wait = self.timeout if first_timeout is None else first_timeout
        self._fill(1, time.monotonic() + wait)
        pdu_type = self._buf[self._start]
        if pdu_type not in P.PDU_TYPES:
            raise UnknownPdu(f"unrecognised PDU type 0x{pdu_type:02X}", P.ABORT_UNRECOGNIZED_PDU)
        deadline = time.monotonic() + self.timeout
        self._fill(6, deadline)
        _, length = P.parse_header(self._view[self._start : self._start + 6])
        limit = self.limit_for(pdu_type)
        if length > limit:
            raise PduTooLarge(
                f"PDU type 0x{pdu_type:02X} declares {length} bytes; the limit is {limit}",
                P.ABORT_INVALID_PARAMETER,
            )
        if 6 + length > self._capacity:
            # Only A-ASSOCIATE PDUs can be larger than the buffer; they are bounded above, and
            # memory grows only with the bytes that actually arrive, never with the declared
            # length.
            body = bytearray(self._view[self._start + 6 : self._end])
            self._start = self._end = 0
            while len(body) < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadTimeout("PDU not complete within the read deadline")
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(min(length - len(body), 65536))
                except TimeoutError as exc:
                    raise ReadTimeout("peer silent beyond the read deadline") from exc
                if not chunk:
                    raise PeerClosed("peer closed the connection")
                body += chunk
            return pdu_type, memoryview(body)
        self._fill(6 + length, deadline)
        body_view = self._view[self._start + 6 : self._start + 6 + length]
        self._start += 6 + length
        if self._start == self._end:
            self._start = self._end = 0
        return pdu_type, body_view


def send_all(sock: socket.socket, data: bytes | memoryview, timeout: float) -> None:
    """Send everything with a deadline on the whole write."""
    sock.settimeout(timeout)
    sock.sendall(data)


def close_gracefully(sock: socket.socket, linger: float = 1.0) -> None:
    """Let the peer close first (within *linger* seconds), draining what it sends; then close.

    PS3.8 (state Sta13): after an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the requestor closes
    the transport connection and the acceptor waits for that (ARTIM) before closing itself.
    Closing at once races our FIN with the last PDU (some stacks then report an abort instead
    of the rejection), and closing with unread data makes the kernel send a RST, which can
    destroy that PDU before the peer has read it. Never blocks longer than *linger*; with
    *linger* 0 only what has already arrived is drained (the requestor's case: PS3.8 has it close
    the connection as soon as it has read the peer's last PDU).
    """
    try:
        if linger <= 0:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while sock.recv(65536):
                    pass
            return
        deadline = time.monotonic() + linger
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(min(left, 0.1))
            try:
                if not sock.recv(65536):
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.close()
