"""The supervisor against real things: a migrated SQLite database, an unreachable PostgreSQL
server, peer directories on disk and a real notify socket (no systemd, no subprocess)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from ctnode import supervisor as supervisor_module
from ctnode.daemon import PeerHolder
from ctnode.db import migrate
from ctnode.db.engine import create_db_engine
from ctnode.peers import load_peers
from ctnode.sdnotify import Notifier
from ctnode.supervisor import DatabaseProbe, Supervisor
from tests.helpers.notify import NotifySocket
from tests.helpers.procs import free_port, write_yaml

PEER = {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": ["echo"]}


@dataclass
class FakeServer:
    """What the supervisor reads from the SCP server (an accept loop that just turned)."""

    listening: bool = True
    active: int = 0
    total_associations: int = 0

    @property
    def last_loop(self) -> float:
        return time.monotonic()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'ctnode.db'}", busy_timeout=2)
    migrate.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def unreachable_engine() -> Iterator[Engine]:
    """A PostgreSQL engine pointing at a port where nothing listens."""
    engine = create_db_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifySocket]:
    """A datagram socket standing in for systemd's notify socket."""
    with NotifySocket(tmp_path / "notify") as sock:
        yield sock


def make_supervisor(
    tmp_path: Path,
    engine: Engine,
    listener: NotifySocket,
    *,
    watchdog: bool = True,
    server: FakeServer | None = None,
    peers: dict[str, dict[str, Any]] | None = None,
) -> tuple[Supervisor, PeerHolder]:
    """A supervisor over *engine* and ``tmp_path/peers``, notifying *listener*."""
    peers_dir = tmp_path / "peers"
    peers_dir.mkdir(exist_ok=True)
    for name, peer in (peers or {"modality": PEER}).items():
        write_yaml(peers_dir / f"{name}.yaml", peer)
    holder = PeerHolder(load_peers(peers_dir))
    notifier = Notifier(listener.address, watchdog_interval=1.0 if watchdog else None)
    supervisor = Supervisor(
        notifier=notifier,
        server=server or FakeServer(),
        engine=engine,
        peers=holder,
        peers_dir=peers_dir,
        peers_required=True,
        reload=asyncio.Event(),
    )
    return supervisor, holder


def sent(listener: NotifySocket) -> list[bytes]:
    """Every datagram received so far, after a marker proves earlier ones were read."""
    marker = Notifier(listener.address)
    marker.send("X_MARKER=1")
    listener.wait_for("X_MARKER", timeout=5)
    raw = [m.raw for m in listener.snapshot() if not m.has("X_MARKER")]
    listener.clear()
    return raw


def test_healthy_beat_pings_the_watchdog_and_sends_the_status_once(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """A healthy node: every beat sends WATCHDOG=1; STATUS= only when the text changed."""
    supervisor, _ = make_supervisor(tmp_path, sqlite_engine, listener)
    assert supervisor.tick == 0.5  # half the watchdog interval

    async def two_beats() -> tuple[bool, bool]:
        stop = asyncio.Event()
        try:
            return await supervisor.beat(stop), await supervisor.beat(stop)
        finally:
            supervisor.database.close()

    assert asyncio.run(two_beats()) == (True, True)
    assert sent(listener) == [
        b"WATCHDOG=1",
        b"STATUS=ready; 0 associations active, 0 since start; 1 peer",
        b"WATCHDOG=1",
    ]


def test_no_watchdog_configured_means_no_pings(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """Without WATCHDOG_USEC only the status is sent, every 5 s at most."""
    supervisor, _ = make_supervisor(tmp_path, sqlite_engine, listener, watchdog=False)
    assert supervisor.tick == 5.0

    async def beat() -> bool:
        try:
            return await supervisor.beat(asyncio.Event())
        finally:
            supervisor.database.close()

    assert asyncio.run(beat()) is True
    assert sent(listener) == [b"STATUS=ready; 0 associations active, 0 since start; 1 peer"]


def test_unreachable_database_stops_the_pings_and_degrades_the_status(
    tmp_path: Path, unreachable_engine: Engine, listener: NotifySocket
) -> None:
    """The database refuses connections: no WATCHDOG=1, a ``degraded (database: ...)`` status
    and one ``supervisor.unhealthy`` event naming the problem."""
    supervisor, _ = make_supervisor(tmp_path, unreachable_engine, listener)

    async def beats() -> list[bool]:
        try:
            return [await supervisor.beat(asyncio.Event()) for _ in range(2)]
        finally:
            supervisor.database.close()

    with capture_logs() as logs:
        assert asyncio.run(beats()) == [False, False]
    raw = sent(listener)
    assert len(raw) == 1 and raw[0].startswith(b"STATUS=degraded (database: OperationalError")
    unhealthy = [e for e in logs if e["event"] == "supervisor.unhealthy"]
    assert len(unhealthy) == 1
    assert unhealthy[0]["problems"][0].startswith("database: OperationalError")


def test_scp_not_listening_stops_the_pings(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """An SCP whose accept loop is not running: no WATCHDOG=1 though the database is fine."""
    server = FakeServer(listening=False)
    supervisor, _ = make_supervisor(tmp_path, sqlite_engine, listener, server=server)

    async def beat() -> bool:
        try:
            return await supervisor.beat(asyncio.Event())
        finally:
            supervisor.database.close()

    assert asyncio.run(beat()) is False
    assert sent(listener) == [
        b"STATUS=degraded (SCP: the accept loop is not running); "
        b"0 associations active, 0 since start; 1 peer"
    ]


def test_nothing_is_sent_once_stopping(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """A beat that finishes after stop was set (STOPPING=1 sent) sends neither ping nor status."""
    supervisor, _ = make_supervisor(tmp_path, sqlite_engine, listener)

    async def beat() -> bool:
        stop = asyncio.Event()
        stop.set()
        try:
            return await supervisor.beat(stop)
        finally:
            supervisor.database.close()

    assert asyncio.run(beat()) is True
    assert sent(listener) == []


def test_a_hanging_database_probe_times_out_and_is_not_stacked(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe slower than its deadline is a problem; while it still hangs, later checks report
    it without starting another probe; once it returns, checks pass again."""
    release = threading.Event()
    calls: list[float] = []

    def hanging(engine: Engine) -> None:
        calls.append(time.monotonic())
        release.wait(30)

    monkeypatch.setattr(supervisor_module, "ping_database", hanging)
    probe = DatabaseProbe(sqlite_engine, timeout=0.2)

    async def scenario() -> list[str | None]:
        try:
            first = await probe.problem()
            second = await probe.problem()
            release.set()
            for _ in range(100):
                if not probe.busy:
                    break
                await asyncio.sleep(0.05)
            monkeypatch.undo()
            third = await probe.problem()
            return [first, second, third]
        finally:
            probe.close()

    first, second, third = asyncio.run(scenario())
    assert first == "database: did not answer within 0.2 s"
    assert second is not None and second.startswith("database: no answer for")
    assert third is None
    assert len(calls) == 1


def test_reload_with_a_valid_directory_swaps_the_whole_set(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """RELOADING=1, then the new registry replaces the old one, ``config.reloaded``, READY=1."""
    supervisor, holder = make_supervisor(tmp_path, sqlite_engine, listener)
    old = holder()
    write_yaml(tmp_path / "peers" / "pacs.yaml", {**PEER, "ae_title": "PACS"})

    with capture_logs() as logs:
        ok = asyncio.run(supervisor.reload_peers(asyncio.Event()))
    supervisor.database.close()
    assert ok
    assert holder() is not old
    assert sorted(p.name for p in holder()) == ["modality", "pacs"]
    reloaded = [e for e in logs if e["event"] == "config.reloaded"]
    assert reloaded and reloaded[0]["peers"] == 2 and reloaded[0]["previous_peers"] == 1
    raw = sent(listener)
    assert raw[0].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert raw[1] == b"READY=1\nSTATUS=ready; 0 associations active, 0 since start; 2 peers"


def test_reload_with_any_invalid_file_keeps_the_old_set(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """One bad file among good ones: nothing of the new set is used, every problem is logged in
    ``config.reload_failed``, and READY=1 still follows (the node serves with the old set)."""
    supervisor, holder = make_supervisor(tmp_path, sqlite_engine, listener)
    old = holder()
    write_yaml(tmp_path / "peers" / "pacs.yaml", {**PEER, "ae_title": "PACS"})
    write_yaml(tmp_path / "peers" / "broken.yaml", {"ae_title": "X" * 20, "port": 0, "hue": 1})

    with capture_logs() as logs:
        ok = asyncio.run(supervisor.reload_peers(asyncio.Event()))
    supervisor.database.close()
    assert not ok
    assert holder() is old
    (failed,) = [e for e in logs if e["event"] == "config.reload_failed"]
    assert failed["log_level"] == "error"
    assert failed["kept_peers"] == 1
    problems = failed["problems"]
    assert len(problems) == 4  # ae_title too long, port 0, host missing, unknown key
    assert all("broken.yaml" in p for p in problems)
    raw = sent(listener)
    assert raw[0].startswith(b"RELOADING=1")
    assert raw[1] == b"READY=1\nSTATUS=ready; 0 associations active, 0 since start; 1 peer"


def test_reload_with_the_directory_gone_keeps_the_old_set(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """A peers directory that disappeared is an error, not an empty set of peers."""
    supervisor, holder = make_supervisor(tmp_path, sqlite_engine, listener)
    old = holder()
    (tmp_path / "peers" / "modality.yaml").unlink()
    (tmp_path / "peers").rmdir()
    with capture_logs() as logs:
        ok = asyncio.run(supervisor.reload_peers(asyncio.Event()))
    supervisor.database.close()
    assert not ok and holder() is old
    assert [e["event"] for e in logs] == ["config.reload_failed"]


def test_run_serves_reload_requests_and_ends_on_stop(
    tmp_path: Path, sqlite_engine: Engine, listener: NotifySocket
) -> None:
    """Under ``run``: setting the reload event reloads; setting stop ends both tasks."""
    supervisor, holder = make_supervisor(tmp_path, sqlite_engine, listener)
    write_yaml(tmp_path / "peers" / "pacs.yaml", {**PEER, "ae_title": "PACS"})

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        supervisor.reload_requested.set()
        for _ in range(200):
            if len(holder()) == 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    assert len(holder()) == 2
    raw = sent(listener)
    assert b"WATCHDOG=1" in raw
    assert any(r.startswith(b"RELOADING=1") for r in raw)
