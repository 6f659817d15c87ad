"""What systemd sees of a running node: health, ``STATUS=`` lines, watchdog pings and reloads.

The :class:`Supervisor` runs as asyncio tasks beside the SCP (``daemon.py`` wires it):

- every tick it checks health — the SCP accept loop is alive and the database answers within a
  short timeout — sends ``WATCHDOG=1`` *only* when healthy (so systemd restarts a node whose
  database or listener is gone for longer than ``WatchdogSec=``), and sends a one-line
  ``STATUS=`` whenever the summary changed;
- on a reload request (SIGHUP) it sends ``RELOADING=1``, validates the whole peer directory off
  the event loop, swaps the new registry in or keeps the old one (logging every problem), then
  sends ``READY=1``. Associations in progress keep what they were accepted with: the registry
  is consulted when an association starts.

Nothing here blocks the event loop: the database probe runs in a thread of its own and peer
files are loaded with ``asyncio.to_thread`` (host names are resolved).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine

from ctnode.errors import ConfigError
from ctnode.logs import get_logger
from ctnode.peers import PeerRegistry, load_peers
from ctnode.sdnotify import Notifier

log = get_logger("ctnode.supervisor")

#: Longest a status tick waits when there is no watchdog (or a slow one).
STATUS_INTERVAL = 5.0
#: The accept loop wakes at least every 0.5 s; silence longer than this means it is stuck.
SCP_MAX_SILENCE = 5.0
#: Longest the database may take to answer the probe.
DB_PROBE_TIMEOUT = 5.0
#: Longest text of one problem in a status line (the log has it in full).
_PROBLEM_CHARS = 200


class ScpView(Protocol):
    """What the supervisor reads from the SCP server."""

    @property
    def listening(self) -> bool:
        """True while the accept loop runs."""

    @property
    def active(self) -> int:
        """Associations being served now."""

    @property
    def last_loop(self) -> float:
        """``time.monotonic()`` of the accept loop's last turn."""

    @property
    def total_associations(self) -> int:
        """Connections accepted since start."""


class PeerSource(Protocol):
    """The current peer registry, replaceable as a whole (``daemon.PeerHolder``)."""

    def __call__(self) -> PeerRegistry:
        """The registry in use now."""

    def replace(self, registry: PeerRegistry) -> None:
        """Swap in a new, already validated registry."""


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """Job queue figures for the status line, from the queue (once it exists)."""

    #: Jobs waiting to run.
    depth: int
    #: Seconds the oldest waiting job has waited (None when the queue is empty).
    oldest_age: float | None


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything one status line says."""

    active_associations: int
    associations_since_start: int
    peers: int
    #: Why the node is not healthy (empty when it is).
    problems: tuple[str, ...] = ()
    #: Absent until a queue reports figures: the line never shows figures that do not exist.
    queue: QueueFigures | None = None


def format_age(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _shorten(text: str) -> str:
    return text if len(text) <= _PROBLEM_CHARS else text[: _PROBLEM_CHARS - 3] + "..."


def status_line(summary: Summary) -> str:
    """The one-line ``STATUS=`` text, e.g.
    ``ready; 2 associations active, 153 since start; 4 peers`` or
    ``degraded (database: did not answer within 4 s); 0 associations active, ...``.
    """
    if summary.problems:
        problems = "; ".join(_shorten(p) for p in summary.problems)
        state = f"degraded ({problems})"
    else:
        state = "ready"
    parts = [
        state,
        f"{_plural(summary.active_associations, 'association')} active, "
        f"{summary.associations_since_start} since start",
        _plural(summary.peers, "peer"),
    ]
    if summary.queue is not None:
        queue = f"queue: {_plural(summary.queue.depth, 'job')}"
        if summary.queue.oldest_age is not None:
            queue += f", oldest waiting {format_age(summary.queue.oldest_age)}"
        parts.append(queue)
    return "; ".join(parts)


def scp_problem(server: ScpView, now: float, max_silence: float = SCP_MAX_SILENCE) -> str | None:
    """Why the SCP is not healthy, or None if its accept loop runs and turned recently."""
    if not server.listening:
        return "SCP: the accept loop is not running"
    silence = now - server.last_loop
    if silence > max_silence:
        return f"SCP: the accept loop has been stuck for {silence:.0f} s"
    return None


def ping_database(engine: Engine) -> None:
    """Read one row through a pooled connection; raises if the database does not answer.

    It reads a real table (``alembic_version``) rather than ``SELECT 1``: SQLite answers
    ``SELECT 1`` without touching the database file. The raw DBAPI connection is used so no
    ``BEGIN IMMEDIATE`` is issued on SQLite (the probe never takes the write lock).
    """
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT count(*) FROM alembic_version")
            cursor.fetchall()
        finally:
            cursor.close()
    finally:
        connection.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class DatabaseProbe:
    """Runs :func:`ping_database` in a thread of its own with a deadline.

    A dedicated single thread (not the loop's shared default executor): a database that hangs
    can hold at most this one thread, and no second probe starts while one is still running.
    """

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-probe")
        self._running: asyncio.Future[None] | None = None
        self._started = 0.0

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The probe's own thread (pre-started with the node's other pools)."""
        return self._executor

    @property
    def busy(self) -> bool:
        """True while a probe (possibly one abandoned after its deadline) is still running."""
        return self._running is not None and not self._running.done()

    async def problem(self) -> str | None:
        """None if the database answered in time, else what went wrong."""
        loop = asyncio.get_running_loop()
        if self.busy:
            waited = time.monotonic() - self._started
            return f"database: no answer for {waited:.0f} s"
        self._started = time.monotonic()
        probe = loop.run_in_executor(self._executor, ping_database, self.engine)
        # A probe abandoned after its deadline may fail later: consume that result.
        probe.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._running = probe
        done, _ = await asyncio.wait({probe}, timeout=self.timeout)
        if not done:
            return f"database: did not answer within {self.timeout:g} s"
        error = probe.exception()
        return None if error is None else f"database: {_first_line(error)}"

    def close(self) -> None:
        """Stop the probe thread (a probe still running finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _until(event: asyncio.Event, timeout: float) -> None:
    """Wait until *event* is set or *timeout* seconds pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Wait until either event is set."""
    waiters = {asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Supervisor:
    """Health checks, status lines, watchdog pings and peer reloads for one running node."""

    def __init__(
        self,
        *,
        notifier: Notifier,
        server: ScpView,
        engine: Engine,
        peers: PeerSource,
        peers_dir: Path,
        peers_required: bool,
        reload: asyncio.Event,
        queue_figures: Callable[[], Awaitable[QueueFigures | None]] | None = None,
        also_reload: Callable[[PeerRegistry], Callable[[], None]] | None = None,
        status_interval: float = STATUS_INTERVAL,
        db_timeout: float = DB_PROBE_TIMEOUT,
        scp_max_silence: float = SCP_MAX_SILENCE,
    ) -> None:
        self.notifier = notifier
        self.server = server
        self.peers = peers
        self.peers_dir = peers_dir
        self.peers_required = peers_required
        self.reload_requested = reload
        self.queue_figures = queue_figures
        #: Validates what is reloaded with the peers (routes) against the new registry and
        #: returns how to install it; a ConfigError refuses the whole reload.
        self.also_reload = also_reload
        self.scp_max_silence = scp_max_silence
        watchdog = notifier.watchdog_interval()
        #: Seconds between ticks: half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self.tick = status_interval if watchdog is None else min(status_interval, watchdog / 2)
        self.database = DatabaseProbe(engine, timeout=min(db_timeout, self.tick * 0.8))
        self._problems: tuple[str, ...] = ()
        self._last_status: str | None = None

    # -- health and status -------------------------------------------------------------------

    async def check_health(self) -> tuple[str, ...]:
        """Every current problem (empty when healthy)."""
        problems = []
        scp = scp_problem(self.server, time.monotonic(), self.scp_max_silence)
        if scp is not None:
            problems.append(scp)
        database = await self.database.problem()
        if database is not None:
            problems.append(database)
        return tuple(problems)

    def summary(self, queue: QueueFigures | None = None) -> Summary:
        """The node as the last health check saw it."""
        return Summary(
            active_associations=self.server.active,
            associations_since_start=self.server.total_associations,
            peers=len(self.peers()),
            problems=self._problems,
            queue=queue,
        )

    def status_text(self) -> str:
        """The current status line (without queue figures, which need the database)."""
        return status_line(self.summary())

    def ready(self) -> None:
        """``READY=1`` with the current status line."""
        self._last_status = self.status_text()
        self.notifier.ready(self._last_status)

    async def _queue(self) -> QueueFigures | None:
        if self.queue_figures is None or self._problems:
            return None
        try:
            return await self.queue_figures()
        except Exception as exc:  # the status line must not break the heartbeat
            log.warning("supervisor.queue_figures_failed", error=_first_line(exc))
            return None

    def _record(self, problems: tuple[str, ...]) -> None:
        if problems and problems != self._problems:
            log.warning("supervisor.unhealthy", problems=list(problems))
        elif not problems and self._problems:
            log.info("supervisor.healthy", previous_problems=list(self._problems))
        self._problems = problems

    async def beat(self, stop: asyncio.Event) -> bool:
        """One tick: check health, ping the watchdog if healthy, update the status.

        Returns True if healthy. Nothing is sent once *stop* is set (after ``STOPPING=1``).
        """
        problems = await self.check_health()
        self._record(problems)
        text = status_line(self.summary(await self._queue()))
        if stop.is_set():
            return not problems
        if not problems and self.notifier.watchdog_interval() is not None:
            self.notifier.watchdog()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text
        return not problems

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Beat every :attr:`tick` seconds (on a fixed schedule) until *stop* is set."""
        due = time.monotonic()
        while not stop.is_set():
            try:
                await self.beat(stop)
            except Exception as exc:  # a bug here must be loud, and costs this tick's ping
                log.exception("supervisor.beat_failed", error=_first_line(exc))
            due += self.tick
            now = time.monotonic()
            due = max(due, now)  # fell behind (a slow probe): start a fresh schedule
            await _until(stop, due - now)

    # -- reload ------------------------------------------------------------------------------

    async def reload_peers(self, stop: asyncio.Event) -> bool:
        """``RELOADING=1``, load and validate every peer file, swap or keep, ``READY=1``.

        Returns True if the new set is in use. On any problem the old set stays and
        ``config.reload_failed`` lists every problem. ``READY=1`` is not sent once *stop* is
        set (the node is stopping, not ready).
        """
        self.notifier.reloading()
        kept = len(self.peers())
        loaded = await self._load_peers()
        install: Callable[[], None] | None = None
        if not isinstance(loaded, ConfigError) and self.also_reload is not None:
            try:
                install = await asyncio.to_thread(self.also_reload, loaded)
            except ConfigError as exc:
                loaded = exc
            except Exception as exc:  # a bug: keep serving with the old configuration
                log.exception("config.reload_crashed", error=_first_line(exc))
                loaded = ConfigError(_first_line(exc))
        if isinstance(loaded, ConfigError):
            log.error(
                "config.reload_failed",
                peers_dir=str(self.peers_dir),
                error=str(loaded),
                problems=loaded.problems or [str(loaded)],
                kept_peers=kept,
            )
            ok = False
        else:
            for warning in loaded.warnings:
                log.warning("config.peer_warning", detail=warning)
            self.peers.replace(loaded)
            if install is not None:
                install()
            log.info(
                "config.reloaded",
                peers_dir=str(self.peers_dir),
                peers=len(loaded),
                previous_peers=kept,
            )
            ok = True
        if not stop.is_set():
            self.ready()
        return ok

    async def _load_peers(self) -> PeerRegistry | ConfigError:
        """The validated new registry, or the error saying why it cannot be used."""
        try:
            return await asyncio.to_thread(load_peers, self.peers_dir, required=self.peers_required)
        except ConfigError as exc:
            return exc
        except Exception as exc:  # an I/O error or a bug: keep serving with the old set
            log.exception("config.reload_crashed", error=_first_line(exc))
            return ConfigError(_first_line(exc))

    async def reloads(self, stop: asyncio.Event) -> None:
        """Serve reload requests one at a time (requests during a reload coalesce into one)."""
        while True:
            await _either(self.reload_requested, stop)
            if stop.is_set():
                return
            self.reload_requested.clear()
            await self.reload_peers(stop)

    # -- life cycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat and reloads until *stop* is set (or the task is cancelled).

        A crash is logged, not raised: the node keeps serving, the watchdog pings stop, and
        systemd restarts the node once ``WatchdogSec=`` passes.
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.heartbeat(stop), name="supervisor-heartbeat")
                group.create_task(self.reloads(stop), name="supervisor-reloads")
        except Exception as exc:
            log.exception("supervisor.crashed", error=_first_line(exc))
        finally:
            self.database.close()
