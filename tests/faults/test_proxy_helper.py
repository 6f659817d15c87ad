"""The fault proxy itself (tests/helpers/proxy.py), against a loopback echo server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.waiting import wait_until


class EchoServer:
    """Echoes every byte back; one thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo_proxy() -> Iterator[tuple[EchoServer, FaultProxy]]:
    """An echo server behind a fault proxy."""
    server = EchoServer()
    with FaultProxy(server.port) as proxy:
        yield server, proxy
    server.close()


def _connect(port: int, timeout: float = 2) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _write_and_read_until_closed(sock: socket.socket) -> None:
    for _ in range(100):
        sock.sendall(b"d" * 1000)
        if not sock.recv(65536):
            return
        time.sleep(0.01)


def test_pass_forwards_both_ways(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """In pass mode bytes go to the target and its answer comes back unchanged."""
    _, proxy = echo_proxy
    with _connect(proxy.port) as sock:
        sock.sendall(b"x" * 100_000)
        assert _recv_exactly(sock, 100_000) == b"x" * 100_000
    assert proxy.stats.accepted["pass"] == 1
    # The pump counts a chunk after forwarding it, so the echo can come back first.
    wait_until(
        lambda: proxy.stats.bytes_up == 100_000,
        5,
        message=lambda: f"bytes_up settles at 100000 (now {proxy.stats.bytes_up})",
    )


def test_refuse_then_listen_again_on_the_same_port(
    echo_proxy: tuple[EchoServer, FaultProxy],
) -> None:
    """refuse: connecting fails with ECONNREFUSED; back to pass, the same port works."""
    _, proxy = echo_proxy
    proxy.set_mode(Mode.REFUSE)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy.port)
    proxy.pass_through()
    with _connect(proxy.port) as sock:
        sock.sendall(b"ok")
        assert _recv_exactly(sock, 2) == b"ok"


def test_close_ends_the_connection_at_once(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """close: the client reads end-of-stream immediately; the target is never contacted."""
    server, proxy = echo_proxy
    proxy.set_mode(Mode.CLOSE)
    with _connect(proxy.port) as sock:
        assert sock.recv(10) == b""
    assert server.connections == 0 and proxy.stats.closed_at_once == 1


def test_blackhole_reads_but_never_answers(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """blackhole: writes succeed, nothing ever comes back, the connection stays open."""
    server, proxy = echo_proxy
    proxy.set_mode(Mode.BLACKHOLE)
    with _connect(proxy.port, timeout=0.5) as sock:
        sock.sendall(b"hello" * 1000)
        with pytest.raises(TimeoutError):
            sock.recv(10)
    assert server.connections == 0 and proxy.stats.blackholed == 1


@pytest.mark.slow
def test_stall_after_n_bytes_blocks_the_writer(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """stall: exactly N bytes reach the target; then nothing comes back and a writer's
    sendall blocks until its own socket timeout (the proxy stops reading)."""
    _, proxy = echo_proxy
    proxy.set_mode(Mode.STALL, after_bytes=1000)
    with _connect(proxy.port, timeout=1) as sock:
        sock.sendall(b"a" * 1500)
        with pytest.raises(TimeoutError):
            _recv_exactly(sock, 1500)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.sendall(b"b" * (64 << 20))
        assert time.monotonic() - started < 5
    assert proxy.stats.stalled == 1 and proxy.stats.bytes_up == 1000


def test_reset_after_n_bytes_sends_rst(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """reset: after N bytes the client gets ECONNRESET (not an orderly end of stream)."""
    _, proxy = echo_proxy
    proxy.set_mode(Mode.RESET, after_bytes=500)
    with _connect(proxy.port) as sock:
        sock.sendall(b"c" * 500)
        time.sleep(0.2)
        with pytest.raises(ConnectionResetError):
            _write_and_read_until_closed(sock)
    assert proxy.stats.resets == 1


def test_throttle_limits_the_rate(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """throttle: 60 kB at 100 kB/s take at least about 0.5 s to come back."""
    _, proxy = echo_proxy
    proxy.set_mode(Mode.THROTTLE, rate=100_000)
    started = time.monotonic()
    with _connect(proxy.port, timeout=5) as sock:
        sock.sendall(b"t" * 60_000)
        assert _recv_exactly(sock, 60_000) == b"t" * 60_000
    assert time.monotonic() - started >= 0.5


def test_drop_all_releases_held_connections(echo_proxy: tuple[EchoServer, FaultProxy]) -> None:
    """drop_all ends black-holed connections: the client sees the end of the stream."""
    _, proxy = echo_proxy
    proxy.set_mode(Mode.BLACKHOLE)
    with _connect(proxy.port, timeout=2) as sock:
        time.sleep(0.1)
        proxy.drop_all()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""


def test_connect_delay_connects_to_the_target_later() -> None:
    """connect_delay: the client connects while nothing listens at the target; the proxy
    connects 0.5 s later, when the target is up, and what the client sent arrives."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    with FaultProxy(port) as proxy:
        proxy.set_mode(Mode.PASS, connect_delay=0.5)
        with _connect(proxy.port, timeout=5) as sock:
            sock.sendall(b"early")
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen(1)
            server.settimeout(5)
            with server, server.accept()[0] as conn:
                conn.settimeout(5)
                assert _recv_exactly(conn, 5) == b"early"
                conn.sendall(b"late")
                assert _recv_exactly(sock, 4) == b"late"
    assert proxy.stats.upstream_failures == 0
