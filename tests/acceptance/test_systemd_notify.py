"""`ctnode run` as a process talking the systemd notify protocol to a datagram socket the test
binds (as systemd would): READY after the port is bound, STATUS lines, WATCHDOG pings only while
healthy, RELOADING/READY around SIGHUP, STOPPING first on SIGTERM."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN
from tests.helpers.notify import Message, NotifySocket
from tests.helpers.procs import CtnodeProcess
from tests.helpers.scu import echo_ok
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

MODALITY = {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": ["echo", "store"]}
#: The watchdog interval systemd would announce; pings are due every half of it.
WATCHDOG_SECONDS = 1.0


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """The notify socket, bound under tmp_path."""
    with NotifySocket(tmp_path / "notify.sock") as sock:
        yield sock


def notified_node(
    workdir: Path, notify: NotifySocket, config: dict[str, object] | None = None
) -> CtnodeProcess:
    """A node (not started) with NOTIFY_SOCKET and WATCHDOG_USEC set as systemd sets them."""
    return CtnodeProcess(
        workdir,
        peers={"modality": MODALITY},
        config=config,
        env={
            "NOTIFY_SOCKET": notify.address,
            "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1_000_000)),
        },
    )


def drained(notify: NotifySocket) -> list[Message]:
    """Every message sent so far: a marker datagram sent last proves the earlier ones were read."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"X_TEST_MARKER=1", notify.address)
    marker = notify.wait_for("X_TEST_MARKER", timeout=10)
    return [m for m in notify.snapshot() if m.received <= marker.received and m is not marker]


def wait_pings(
    notify: NotifySocket, count: int, after: float, timeout: float = 30
) -> list[Message]:
    """Wait until *count* WATCHDOG=1 pings arrived after *after*; returns them."""

    def pinged() -> list[Message] | None:
        pings = notify.between("WATCHDOG", after, float("inf"), "1")
        return pings if len(pings) >= count else None

    return wait_until(pinged, timeout, message=f"{count} WATCHDOG=1 pings")


def test_ready_only_once_the_port_accepts_then_status_and_pings(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """READY=1 (with a STATUS line) is the first message, and when it arrives the DICOM port
    already accepts connections; WATCHDOG=1 follows every half interval while healthy; STATUS
    changes when an association happened; SIGTERM: STOPPING=1, nothing after it, exit 0."""
    node = notified_node(tmp_path, notify)
    node.start(wait=False)
    try:
        ready = notify.wait_for("READY", "1", timeout=60)
        with socket.create_connection(("127.0.0.1", node.port), timeout=2):
            pass  # accepted at once: the port was bound before READY=1
        assert ready.fields["STATUS"] == "ready; 0 associations active, 0 since start; 1 peer"
        assert drained(notify)[0] is ready
        assert node.log is not None
        assert node.log.wait_for("daemon.ready")["watchdog_interval"] == WATCHDOG_SECONDS

        pings = wait_pings(notify, 4, after=ready.received)
        gaps = [b.received - a.received for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 2 * WATCHDOG_SECONDS, gaps

        assert echo_ok(node.port)
        notify.wait_for(
            "STATUS",
            after=ready.received,
            timeout=30,
            where=lambda m: re.search(r", [1-9]\d* since start;", m.fields["STATUS"]) is not None,
        )

        sent_at = time.monotonic()
        node.signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", "1", after=sent_at, timeout=30)
        assert node.wait(60) == 0
        messages = drained(notify)
        after_stopping = [m for m in messages if m.received > stopping.received]
        assert not [m for m in after_stopping if m.has("WATCHDOG") or m.has("READY")]
        assert stopping.fields["STATUS"].startswith("stopping;")
        assert node.log.wait_for("daemon.stopped")
    finally:
        node.kill()


def test_reloading_and_ready_around_sighup(tmp_path: Path, notify: NotifySocket) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC, the peers are reloaded, then READY=1 again
    (with the new peer count in its STATUS); the watchdog keeps being pinged afterwards."""
    node = notified_node(tmp_path, notify)
    node.start(wait=False)
    try:
        notify.wait_for("READY", "1", timeout=60)
        node.write_peer("pacs", {**MODALITY, "ae_title": "PACS"})
        sent_at = time.monotonic()
        node.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", after=sent_at, timeout=30)
        assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        ready = notify.wait_for("READY", "1", after=reloading.received, timeout=30)
        assert ready.fields["STATUS"].endswith("; 2 peers")
        assert node.log is not None
        node.log.wait_for("config.reloaded", peers=2)
        wait_pings(notify, 2, after=ready.received)
        assert node.stop() == 0
    finally:
        node.kill()


def set_connections(database: str, allowed: bool) -> None:
    """Allow or forbid connections to *database*; forbidding also ends every open session."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )


def test_watchdog_pings_stop_while_the_database_is_unreachable(
    tmp_path: Path, notify: NotifySocket, fresh_pg_url: str
) -> None:
    """On PostgreSQL: while the node's database refuses connections no WATCHDOG=1 is sent for
    several intervals, STATUS says ``degraded (database: ...)`` and ``supervisor.unhealthy`` is
    logged; once connections are allowed again the pings and the ``ready`` status come back."""
    database = make_url(fresh_pg_url).database
    assert database
    node = notified_node(
        tmp_path, notify, config={"database": {"url": fresh_pg_url, "busy_timeout": 2}}
    )
    upgraded = node.cli("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    node.start(wait=False)
    try:
        ready = notify.wait_for("READY", "1", timeout=60)
        wait_pings(notify, 2, after=ready.received)

        blocked_at = time.monotonic()
        set_connections(database, allowed=False)
        degraded = notify.wait_for(
            "STATUS",
            after=blocked_at,
            timeout=30,
            where=lambda m: m.fields["STATUS"].startswith("degraded (database: "),
        )
        # A ping from a probe that finished just before the block may still arrive; after the
        # degraded status none may, for several watchdog intervals.
        quiet_until = degraded.received + 4 * WATCHDOG_SECONDS
        while time.monotonic() < quiet_until:
            assert node.proc is not None and node.proc.poll() is None, "ctnode exited"
            time.sleep(0.1)
        assert notify.between("WATCHDOG", degraded.received, quiet_until) == []
        assert node.log is not None
        unhealthy = node.log.wait_for("supervisor.unhealthy")
        assert any(p.startswith("database: ") for p in unhealthy["problems"])

        restored_at = time.monotonic()
        set_connections(database, allowed=True)
        wait_pings(notify, 2, after=restored_at)
        notify.wait_for(
            "STATUS",
            after=restored_at,
            timeout=30,
            where=lambda m: m.fields["STATUS"].startswith("ready;"),
        )
        node.log.wait_for("supervisor.healthy")
        assert node.stop() == 0
    finally:
        node.kill()
        set_connections(database, allowed=True)
