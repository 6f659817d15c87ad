"""The notify protocol against a real AF_UNIX datagram socket bound under tmp_path."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctnode.sdnotify import Notifier, one_line, parse_address, watchdog_interval_from
from tests.helpers.notify import NotifySocket


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifySocket]:
    """A datagram socket standing in for systemd's notify socket."""
    with NotifySocket(tmp_path / "notify") as sock:
        yield sock


def notifier_for(sock: NotifySocket, **env: str) -> Notifier:
    """A notifier built from an environment pointing at *sock*."""
    return Notifier.from_environ({"NOTIFY_SOCKET": sock.address, **env})


def test_ready_status_stopping_watchdog_arrive_as_datagrams(listener: NotifySocket) -> None:
    """Each message is one datagram of newline-separated KEY=VALUE assignments."""
    notifier = notifier_for(listener)
    assert notifier.enabled
    assert notifier.ready("ready; 0 associations active")
    assert notifier.status("degraded (database: no answer)")
    assert notifier.watchdog()
    assert notifier.stopping()
    listener.wait_for("STOPPING", "1", timeout=5)
    raw = [m.raw for m in listener.snapshot()]
    assert raw == [
        b"READY=1\nSTATUS=ready; 0 associations active",
        b"STATUS=degraded (database: no answer)",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    notifier.close()


def test_reloading_carries_the_monotonic_clock(listener: NotifySocket) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC (as notify-reload wants)."""
    notifier = notifier_for(listener)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = listener.wait_for("RELOADING", "1", timeout=5)
    assert before <= int(message.fields["MONOTONIC_USEC"]) <= after


def test_status_is_always_one_line(listener: NotifySocket) -> None:
    """A status text with newlines cannot inject further assignments: it becomes one line."""
    notifier = notifier_for(listener)
    notifier.status("two\nlines\nREADY=1  and\tspaces")
    message = listener.wait_for("STATUS", timeout=5)
    assert message.fields == {"STATUS": "two lines READY=1 and spaces"}
    assert one_line(" a \n b ") == "a b"


def test_abstract_namespace_socket() -> None:
    """An ``@name`` NOTIFY_SOCKET is a socket in the abstract namespace."""
    name = f"@ctnode-test-{os.getpid()}-{secrets.token_hex(4)}"
    with NotifySocket(name) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
        assert notifier.ready()
        assert sock.wait_for("READY", "1", timeout=5).raw == b"READY=1"
    assert parse_address("@x") == b"\0x"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    """No NOTIFY_SOCKET: nothing is sent, nothing fails, no watchdog interval."""
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    for call in (notifier.ready, notifier.reloading, notifier.stopping, notifier.watchdog):
        assert call() is False
    assert notifier.status("x") is False
    assert notifier.failures == 0


def test_watchdog_interval_from_environment() -> None:
    """WATCHDOG_USEC gives the interval in seconds; a WATCHDOG_PID of another process, a
    missing, zero or malformed value means no watchdog for us."""
    assert watchdog_interval_from({"WATCHDOG_USEC": "30000000"}, 42) == 30.0
    assert watchdog_interval_from({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, 42) == 0.5
    assert watchdog_interval_from({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval_from({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, 42) is None
    assert watchdog_interval_from({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval_from({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval_from({}, 42) is None


def test_watchdog_interval_of_this_process(listener: NotifySocket) -> None:
    """The notifier reports the interval when WATCHDOG_PID is this process."""
    notifier = notifier_for(listener, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval() == 2.0


def test_send_failure_never_raises_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket that is gone: every send returns False, nothing raises, one sdnotify.failed."""
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="ctnode.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
    assert notifier.failures == 3
    failed = [r for r in caplog.records if r.getMessage() == "sdnotify.failed"]
    assert len(failed) == 1
    assert "nobody-listens" in failed[0].__dict__["notify_socket"]


def test_unusable_address_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A NOTIFY_SOCKET that is neither a path nor @name disables notification (logged)."""
    with caplog.at_level(logging.WARNING, logger="ctnode.sdnotify"):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
        assert not notifier.enabled
        assert notifier.ready() is False
    assert [r.getMessage() for r in caplog.records] == ["sdnotify.failed"]
    assert parse_address("relative/path") is None
    assert parse_address("/" + "x" * 200) is None


def test_full_receiver_drops_instead_of_blocking(tmp_path: Path) -> None:
    """A receiver that never reads: sends fail fast (dropped, counted) rather than block."""
    with NotifySocket(tmp_path / "slow") as sock:
        sock.close_reader()
        notifier = notifier_for(sock)
        started = time.monotonic()
        results = [notifier.watchdog() for _ in range(5000)]
        assert time.monotonic() - started < 5
        assert not all(results)
        assert notifier.failures == results.count(False)
