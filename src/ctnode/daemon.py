"""``ctnode run``: the only place that wires everything together.

An asyncio supervisor owns the life cycle: it builds the database engine, store, peer registry,
SCP server and job workers once, passes them to whoever needs them, turns signals into control
flow (SIGTERM/SIGINT: stop; SIGHUP: reload peers) and shuts down in order: stop accepting, let
in-flight work finish within the grace period, then cut what is left.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import Settings
from ctnode.db import migrate
from ctnode.db.engine import create_db_engine, is_sqlite, session_factory
from ctnode.errors import ConfigError, DatabaseError, SchemaNotAtHead
from ctnode.logs import get_logger
from ctnode.moves import MoveRegistry
from ctnode.peers import PeerRegistry, load_peers
from ctnode.queue.jobs import JobKind
from ctnode.queue.repository import JobRepository
from ctnode.queue.worker import Operation, WorkerPool
from ctnode.scp.handlers import ScpApplication
from ctnode.scp.server import ScpServer
from ctnode.scu.move import MoveOperation
from ctnode.scu.push import PushOperation
from ctnode.scu.query import QueryOperation
from ctnode.storage import Store

log = get_logger("ctnode.daemon")


class PeerHolder:
    """The current peer registry; replaced as a whole on reload (readers never see a mix)."""

    def __init__(self, registry: PeerRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()

    def __call__(self) -> PeerRegistry:
        return self._registry

    def replace(self, registry: PeerRegistry) -> None:
        """Swap in a new, already validated registry."""
        with self._lock:
            self._registry = registry


def open_database(settings: Settings, *, migrate_sqlite: bool) -> Engine:
    """Engine for the configured database, checked to be at the schema head.

    SQLite is migrated automatically when *migrate_sqlite*; PostgreSQL never is (an operator
    runs ``ctnode db upgrade``, so several nodes do not race to migrate).
    """
    engine = create_db_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
    try:
        if is_sqlite(engine) and migrate_sqlite:
            migrate.upgrade(engine)
        elif not migrate.is_at_head(engine):
            engine.dispose()
            raise SchemaNotAtHead(
                f"the database at {engine.url.render_as_string(hide_password=True)} is at "
                f"revision {migrate.current_revision(engine)!r}, not "
                f"{migrate.head_revision(engine)!r}: run `ctnode db upgrade`"
            )
    except SchemaNotAtHead:
        raise
    except Exception as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot use the database {engine.url.render_as_string(hide_password=True)}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return engine


@dataclass
class Runtime:
    """Everything a running node is made of."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    peers: PeerHolder
    store: Store
    app: ScpApplication
    server: ScpServer
    repo: JobRepository
    workers: WorkerPool
    extras: dict[str, Any] = field(default_factory=dict)


def build_runtime(settings: Settings) -> Runtime:
    """Open the database, load peers, prepare the store, create (not start) the SCP."""
    if not settings.peers_dir.exists() and not settings.is_embedded_default:
        raise ConfigError(
            f"peers_dir {settings.peers_dir} does not exist; create it or fix the key"
        )
    registry = load_peers(settings.peers_dir)
    for warning in registry.warnings:
        log.warning("config.peer_warning", detail=warning)
    engine = open_database(settings, migrate_sqlite=True)
    sessions = session_factory(engine)
    store = Store(settings.storage, sessions, settings.node.name)
    recovered = store.prepare()
    if recovered:
        log.info("storage.spool_recovered", files=recovered)
    peers = PeerHolder(registry)
    moves = MoveRegistry()  # C-MOVE arrivals: SCP -> move jobs of this process
    app = ScpApplication(settings.node, store, peers, on_stored=moves.note)
    server = ScpServer(settings.node, app, peers)
    repo = JobRepository(engine, lease_seconds=settings.queue.lease_seconds)
    operations: dict[JobKind, Operation] = {JobKind.PUSH: PushOperation(settings.node)}
    # query/retrieve
    operations[JobKind.QUERY] = QueryOperation(settings.node)
    operations[JobKind.MOVE] = MoveOperation(
        settings.node, moves, shared_storage=settings.storage.shared
    )
    workers = WorkerPool(repo, settings.queue, peers, operations, node_name=settings.node.name)
    return Runtime(settings, engine, sessions, peers, store, app, server, repo, workers)


async def supervise(runtime: Runtime, stop: asyncio.Event) -> int:
    """Start the SCP, wait for *stop*, shut down in order. Returns the exit code."""
    settings = runtime.settings
    runtime.server.start()
    log.info(
        "daemon.ready",
        ae_title=settings.node.ae_title,
        bind=settings.node.bind,
        port=runtime.server.port,
        data_dir=str(settings.storage.data_dir),
        database=runtime.engine.url.render_as_string(hide_password=True),
        peers=len(runtime.peers()),
        embedded_default=settings.is_embedded_default,
    )
    stop_workers = asyncio.Event()
    workers = asyncio.create_task(runtime.workers.run(stop_workers), name="workers")
    await stop.wait()
    log.info(
        "daemon.stopping",
        active_associations=runtime.server.active,
        running_jobs=runtime.workers.busy,
    )
    stop_workers.set()  # attempts stop at the next item boundary and are released
    runtime.server.stop_accepting()
    idle = await asyncio.to_thread(runtime.server.wait_idle, settings.node.shutdown_grace)
    if not idle:
        log.warning("daemon.grace_expired", aborted=runtime.server.active)
        await asyncio.to_thread(runtime.server.abort_all)
    try:
        await asyncio.wait_for(workers, settings.node.shutdown_grace)
    except TimeoutError:
        log.warning("daemon.workers_grace_expired", running_jobs=runtime.workers.busy)
    runtime.engine.dispose()
    log.info("daemon.stopped")
    return 0


def run(settings: Settings) -> int:
    """Run the node until SIGTERM/SIGINT. Returns the process exit code."""
    runtime = build_runtime(settings)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await supervise(runtime, stop)

    return asyncio.run(main())
