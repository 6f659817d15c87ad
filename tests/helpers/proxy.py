"""A small loopback TCP proxy that misbehaves on demand, for fault tests.

``FaultProxy(target_port)`` listens on a free 127.0.0.1 port and forwards every connection to
the target. Its mode can be switched at any time; a connection takes the mode in force when it
is accepted (``drop_all()`` ends the connections still held, e.g. black-holed ones):

* ``pass`` — forward both ways untouched;
* ``refuse`` — nothing listens: connecting fails with ECONNREFUSED (the port stays reserved by a
  bound, non-listening socket so the proxy can listen on it again);
* ``close`` — accept, then close at once (the client sees an orderly end of stream);
* ``blackhole`` — accept and read everything, never answer, never connect upstream;
* ``stall`` — forward the first ``after_bytes`` bytes the client sends, then stop reading and
  forwarding in both directions (the client's writes eventually block); the upstream side is
  closed so the target is not held;
* ``reset`` — forward the first ``after_bytes`` client bytes, then reset the client connection
  (RST: ``SO_LINGER`` on, timeout 0) and close upstream;
* ``throttle`` — forward both ways at about ``rate`` bytes per second per direction.

``set_mode(..., connect_delay=S)`` makes a forwarding mode (pass, stall, reset, throttle) wait
*S* seconds after accepting before it connects to the target (the client's bytes wait in the
socket meanwhile): the target need not be up when the client connects, only *S* s later.

``stats`` counts connections per mode, bytes forwarded and faults triggered, so a test can
assert that the fault it meant to inject really happened.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tests.helpers.waiting import wait_until


class Mode(StrEnum):
    """How new connections are treated."""

    PASS = "pass"
    REFUSE = "refuse"
    CLOSE = "close"
    BLACKHOLE = "blackhole"
    STALL = "stall"
    RESET = "reset"
    THROTTLE = "throttle"


@dataclass(frozen=True)
class Behaviour:
    """A mode with its parameters (fixed for a connection when it is accepted)."""

    mode: Mode = Mode.PASS
    after_bytes: int = 0
    rate: float = 0.0
    connect_delay: float = 0.0


@dataclass
class ProxyStats:
    """What the proxy saw and did."""

    accepted: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    bytes_down: int = 0
    stalled: int = 0
    resets: int = 0
    closed_at_once: int = 0
    blackholed: int = 0
    upstream_failures: int = 0


_CHUNK = 65536


def _rst(sock: socket.socket) -> None:
    """Close *sock* with a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class _Connection:
    """One accepted client and (unless black-holed) its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, behaviour: Behaviour) -> None:
        self.proxy = proxy
        self.client = client
        self.behaviour = behaviour
        self.upstream: socket.socket | None = None
        self.done = threading.Event()
        self.stalled = threading.Event()
        self.up_count = 0
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        mode = self.behaviour.mode
        if mode is Mode.CLOSE:
            self.proxy._count("closed_at_once")
            self.finish()
            return
        if mode is Mode.BLACKHOLE:
            self.proxy._count("blackholed")
            self._spawn(self._swallow)
            return
        if self.behaviour.connect_delay > 0:
            self._spawn(self._connect_later)
            return
        self._connect()

    def _connect_later(self) -> None:
        if not self.done.wait(self.behaviour.connect_delay):
            self._connect()

    def _connect(self) -> None:
        try:
            self.upstream = socket.create_connection(self.proxy.target, timeout=5)
        except OSError:
            self.proxy._count("upstream_failures")
            self.finish()
            return
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._spawn(self._pump_up)
        self._spawn(self._pump_down)

    def _spawn(self, target: Any) -> None:
        thread = threading.Thread(target=target, daemon=True, name=f"proxy-{target.__name__}")
        self.threads.append(thread)
        thread.start()

    def _readable(self, sock: socket.socket) -> bool:
        """Wait (in short slices, so finish() is noticed) until *sock* has data or EOF."""
        while not self.done.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
            except (OSError, ValueError):
                return False
            if ready:
                return True
        return False

    def _swallow(self) -> None:
        while self._readable(self.client):
            try:
                if not self.client.recv(_CHUNK):
                    break
            except OSError:
                break
        # The client went away (or the proxy stopped): nothing else to do.
        self.finish()

    def _throttle(self, started: float, sent: int) -> None:
        rate = self.behaviour.rate
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                self.done.wait(ahead)

    def _pump_up(self) -> None:
        behaviour = self.behaviour
        limit = behaviour.after_bytes if behaviour.mode in (Mode.STALL, Mode.RESET) else None
        started, sent = time.monotonic(), 0
        chunk_size = _CHUNK
        if behaviour.mode is Mode.THROTTLE and behaviour.rate > 0:
            chunk_size = max(1, min(_CHUNK, int(behaviour.rate / 20)))
        assert self.upstream is not None
        if limit is not None and limit <= 0:
            self._trip()
            return
        while self._readable(self.client):
            want = chunk_size if limit is None else min(chunk_size, limit - self.up_count)
            try:
                data = self.client.recv(want)
            except OSError:
                break
            if not data:
                with contextlib.suppress(OSError):
                    self.upstream.shutdown(socket.SHUT_WR)
                return
            try:
                self.upstream.sendall(data)
            except OSError:
                break
            self.up_count += len(data)
            sent += len(data)
            self.proxy._add("bytes_up", len(data))
            if limit is not None and self.up_count >= limit:
                self._trip()
                return
            self._throttle(started, sent)
        self.finish()

    def _trip(self) -> None:
        """The byte limit was reached: stall or reset."""
        if self.behaviour.mode is Mode.RESET:
            self.proxy._count("resets")
            with self._lock:
                _rst(self.client)
                _close(self.upstream)
            self.done.set()
            return
        self.proxy._count("stalled")
        self.stalled.set()
        with self._lock:
            _close(self.upstream)  # do not hold the target; the client just sees silence

    def _pump_down(self) -> None:
        assert self.upstream is not None
        started, sent = time.monotonic(), 0
        while not self.stalled.is_set() and self._readable(self.upstream):
            try:
                data = self.upstream.recv(_CHUNK)
            except OSError:
                break
            if self.stalled.is_set():
                return
            if not data:
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_WR)
                return
            try:
                self.client.sendall(data)
            except OSError:
                break
            sent += len(data)
            self.proxy._add("bytes_down", len(data))
            self._throttle(started, sent)
        if not self.stalled.is_set():
            self.finish()

    def finish(self) -> None:
        """Close both sides (idempotent)."""
        self.done.set()
        with self._lock:
            _close(self.client)
            _close(self.upstream)


class FaultProxy:
    """See the module docstring. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.behaviour = Behaviour()
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._stop = threading.Event()
        self._sock = self._new_socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._sock.listen(64)
        self._listening = True
        self._thread: threading.Thread | None = None

    @staticmethod
    def _new_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock

    def _bind_again(self) -> socket.socket:
        # The accept thread may still hold the old listener for a moment (inside select).
        def bound() -> socket.socket:
            sock = self._new_socket()
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                sock.close()
                raise
            return sock

        return wait_until(
            bound, 2, interval=0.01, ignore=(OSError,), message=f"port {self.port} to bind again"
        )

    # -- control ---------------------------------------------------------------------

    def set_mode(
        self,
        mode: Mode | str,
        *,
        after_bytes: int = 0,
        rate: float = 0.0,
        connect_delay: float = 0.0,
    ) -> None:
        """Switch the behaviour for connections accepted from now on."""
        mode = Mode(mode)
        if mode in (Mode.STALL, Mode.RESET) and after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        if mode is Mode.THROTTLE and rate <= 0:
            raise ValueError("throttle needs a rate in bytes per second")
        with self._lock:
            self.behaviour = Behaviour(mode, after_bytes, rate, connect_delay)
            if mode is Mode.REFUSE and self._listening:
                # Stop listening but keep the port: a bound socket that does not listen makes
                # the kernel refuse connections.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # stops listening at once
                self._sock.close()
                self._sock = self._bind_again()
                self._listening = False
            elif mode is not Mode.REFUSE and not self._listening:
                self._sock.listen(64)
                self._listening = True

    def pass_through(self) -> None:
        """Back to normal forwarding."""
        self.set_mode(Mode.PASS)

    def drop_all(self) -> None:
        """Close every connection still open (black-holed and stalled ones included)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.finish()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _add(self, name: str, amount: int) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + amount)

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Accept connections in a background thread."""
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy")
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                sock, listening = self._sock, self._listening
            if not listening:
                self._stop.wait(0.05)
                continue
            try:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if not ready:
                    continue
                client, _ = sock.accept()
            except (OSError, ValueError):
                continue  # the listener was swapped (refuse) or closed (stop)
            with self._lock:
                behaviour = self.behaviour
                self.stats.accepted[behaviour.mode.value] += 1
                conn = _Connection(self, client, behaviour)
                self._connections = [c for c in self._connections if not c.done.is_set()]
                self._connections.append(conn)
            conn.start()

    def stop(self) -> None:
        """Stop accepting, close every connection and the listener."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.drop_all()
        with self._lock:
            _close(self._sock)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
