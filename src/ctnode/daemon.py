"""``ctnode run``: the only place that wires everything together.

An asyncio supervisor owns the life cycle: it builds the database engine, store, peer registry,
SCP server and job workers once, passes them to whoever needs them, turns signals into control
flow (SIGTERM/SIGINT: stop; SIGHUP: reload peers) and shuts down in order: stop accepting, let
in-flight work finish within the grace period, then cut what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ctnode.commit_report_intake import Reconciler
from ctnode.commitment_scp.intake import Intake
from ctnode.commitment_scp.report import ReportOperation
from ctnode.commitment_scp.transactions import IncomingCommitments
from ctnode.commitment_scp.upstream import UpstreamRequests
from ctnode.config import Settings
from ctnode.db import migrate
from ctnode.db.engine import session_factory
from ctnode.db.opening import open_database
from ctnode.dicom.contexts import Service, storage_classes
from ctnode.errors import ConfigError
from ctnode.index import IndexReader
from ctnode.ingest_processes import attach, ingest_pool
from ctnode.local_sockets import open_handoff, open_wake_channel
from ctnode.logs import get_logger
from ctnode.metrics import (
    CountsCollector,
    HealthServer,
    Metrics,
    ReadyCheck,
    StateCollector,
    data_dir_check,
    readiness,
)
from ctnode.move_registry import MoveRegistry
from ctnode.peers import Peer, PeerRegistry, load_peers
from ctnode.pools import prewarm
from ctnode.qrindex import QrIndex
from ctnode.queue.attempt import Operation
from ctnode.queue.commit_rounds import CommitmentRepository
from ctnode.queue.jobs import JobKind
from ctnode.queue.repository import JobRepository
from ctnode.queue.worker import WorkerPool
from ctnode.retention import Retention
from ctnode.routing.decisions import RouteHolder
from ctnode.routing.forwarder import Forwarder
from ctnode.routing.rules import load_routes
from ctnode.routing.state import RouteCounts, holding
from ctnode.scp.handlers import QrHandler, ScpApplication
from ctnode.scp.qr_find import FindService
from ctnode.scp.qr_retrieve import RetrieveService
from ctnode.scp.server import ScpServer
from ctnode.scu.commit import CommitOperation
from ctnode.scu.commit_submit import commit_after_push
from ctnode.scu.move import MoveOperation
from ctnode.scu.push import PushOperation
from ctnode.scu.query import QueryOperation
from ctnode.sdnotify import Notifier
from ctnode.storage import Store
from ctnode.storage.backfill import warn_pending
from ctnode.storage.ingest_pool import IngestPool
from ctnode.supervisor import QueueFigures, Supervisor
from ctnode.tls import server_context

log = get_logger("ctnode.daemon")

__all__ = ["open_database", "run"]


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
    metrics: Metrics
    reconciler: Reconciler
    intake: Intake
    routes: RouteHolder
    forwarder: Forwarder
    #: Ingest worker processes (``storage.ingest_processes``), forked before this was built.
    ingest: IngestPool | None = None


def build_runtime(settings: Settings, ingest: IngestPool | None = None) -> Runtime:
    """Open the database, load peers, prepare the store, create (not start) the SCP; start the
    forked *ingest* workers once the database is ready."""
    if not settings.peers_dir.exists() and not settings.is_embedded_default:
        raise ConfigError(
            f"peers_dir {settings.peers_dir} does not exist; create it or fix the key"
        )
    # The storage SOP classes are built on first use (from pynetdicom's list): build them here
    # so that the first association does not wait for them.
    storage_classes()
    registry = load_peers(settings.peers_dir)
    for warning in registry.warnings:
        log.warning("config.peer_warning", detail=warning)
    routes = RouteHolder(load_routes(settings.routes_dir, registry), settings.node.name)
    tls = settings.node.tls
    tls_context = server_context(tls) if tls.enabled else None  # ConfigError before the database
    engine = open_database(
        settings,
        migrate_sqlite=True,
        on_migrated=lambda before, after: log.info(
            "db.migrated", from_revision=before, to_revision=after
        ),
    )
    sessions = session_factory(engine)
    # Routing decisions are committed with each instance row.
    store = Store(settings.storage, sessions, settings.node.name, decisions=routes)
    recovered = store.prepare()
    if recovered:
        log.info("storage.spool_recovered", files=recovered)
    if ingest is not None:
        attach(ingest, store, routes())
    # SQLite was migrated above, never back-filled: say so (before the event loop starts).
    warn_pending(engine, settings.node.name, shared=settings.storage.shared)
    peers = PeerHolder(registry)
    metrics = Metrics()
    repo = JobRepository(engine, lease_seconds=settings.queue.lease_seconds)
    # -- storage commitment: reports reconciled on :4006, commit jobs, retention --
    commits = CommitmentRepository(repo)
    # Retention composes with routing: removal waits until routing delivered everywhere.
    retention = Retention(settings.storage, store, holds=lambda uids: holding(engine, uids))
    reconciler = Reconciler(commits, retention)
    _warn_commitment_peers(settings, registry)
    # -- storage commitment SCP: requests peers send us, their reports --
    incoming = IncomingCommitments(sessions)
    upstream = (
        UpstreamRequests(settings, repo, commits, peers)
        if settings.commitment_scp.mode == "upstream"
        else None
    )
    reports = ReportOperation(
        settings.node,
        incoming,
        commits,
        upstream,
        held_on=None if settings.storage.shared else settings.node.name,
    )
    intake = Intake(settings, incoming, repo, reports=reports)
    moves = MoveRegistry()  # C-MOVE arrivals: SCP -> move jobs of this process
    app = ScpApplication(
        settings.node,
        store,
        peers,
        report_handler=reconciler.handle_inbound,
        observer=metrics,
        on_stored=moves.note,
        action_handler=intake.on_action,
        qr_handlers=qr_handlers(settings, engine, store, peers, metrics),
        is_retrieval=moves.owns,
    )
    server = ScpServer(settings.node, app, peers, tls_context=tls_context)
    push = PushOperation(
        settings.node, observer=metrics, after_success=commit_after_push(settings, repo)
    )
    operations: dict[JobKind, Operation] = {
        JobKind.PUSH: push,
        JobKind.COMMIT: CommitOperation(settings.node, commits, reconciler, retention, push),
        JobKind.COMMIT_REPORT: reports,
        JobKind.QUERY: QueryOperation(settings.node),
        JobKind.MOVE: MoveOperation(
            settings.node, moves, IndexReader(repo.sessions), shared_storage=settings.storage.shared
        ),
    }
    workers = WorkerPool(
        repo,
        settings.queue,
        peers,
        operations,
        node_name=settings.node.name,
        on_attempt=metrics.attempt_finished,
    )
    metrics.add_collector(StateCollector(repo.summary, store.free_bytes, commits.counts))
    metrics.add_collector(
        CountsCollector(
            "ctnode_commitment_scp_transactions",
            "Storage commitment requests peers sent us, by state",
            "state",
            incoming.counts,
        )
    )
    forwarder = Forwarder(settings, engine, repo, peers)
    forwarder.deliveries.release = retention.apply
    forwarder.shortest_wait = routes.shortest_wait
    counts = RouteCounts(engine)
    metrics.add_collector(counts.collector())
    return Runtime(
        settings,
        engine,
        sessions,
        peers,
        store,
        app,
        server,
        repo,
        workers,
        metrics,
        reconciler,
        intake,
        routes,
        forwarder,
        ingest,
    )


def _reload_routes(runtime: Runtime, registry: PeerRegistry) -> Callable[[], None]:
    """Load the routes against the reloaded peers (ConfigError refuses the whole reload) and
    return how to install them."""
    routes = load_routes(runtime.settings.routes_dir, registry)

    def install() -> None:
        kept = len(runtime.routes())
        runtime.routes.replace(routes)
        if runtime.ingest is not None:
            runtime.ingest.configure(routes)
        log.info("route.reloaded", routes=len(routes), previous_routes=kept)

    return install


def _recover_reports(runtime: Runtime) -> None:
    """Queue the report of a commitment request persisted just before a crash (its job was
    not yet queued); best effort: the database may be briefly unavailable."""

    def peer_for(name: str) -> Peer | None:
        return runtime.peers().peers.get(name)

    try:
        count = runtime.intake.recover(peer_for)
    except Exception as exc:
        log.warning("commit_scp.recovery_failed", error=str(exc).splitlines()[0])
        return
    if count:
        log.info("commit_scp.reports_recovered", transactions=count)


#: Seconds between two passes of the commitment reports' recovery (after the one at start-up).
RECOVER_REPORTS_INTERVAL = 30.0


async def recover_reports_periodically(
    runtime: Runtime, stop: asyncio.Event, interval: float = RECOVER_REPORTS_INTERVAL
) -> None:
    """``_recover_reports`` every *interval* seconds until *stop* (after the pass at start-up):
    a report whose job could not be queued when its N-ACTION was answered; a report job that
    ended without the report is recorded ``failed``."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        await asyncio.to_thread(_recover_reports, runtime)


def qr_handlers(
    settings: Settings, engine: Engine, store: Store, peers: PeerHolder, metrics: Metrics
) -> dict[Service, QrHandler]:
    """The Query/Retrieve SCP's handlers (C-FIND, C-MOVE, C-GET) over this node's index."""
    index = QrIndex(engine, store.root, settings.node.name, settings.storage.shared)
    find = FindService(
        index,
        settings.node.ae_title,
        metrics,
        case_insensitive_names=settings.query_scp.case_insensitive_names,
    )
    retrieve = RetrieveService(index, settings.node, peers, metrics)
    return {Service.FIND: find, Service.MOVE: retrieve.move, Service.GET: retrieve.get}


def _warn_commitment_peers(settings: Settings, registry: PeerRegistry) -> None:
    """``storage.commitment_peers`` should name configured peers (retention counts only them)."""
    for name in settings.storage.commitment_peers:
        if name not in registry.peers:
            log.warning(
                "config.commitment_peer_unknown",
                peer=name,
                detail="storage.commitment_peers names no peer file; its commitments never "
                "remove local instances",
            )
    if settings.storage.delete_after_commit and not settings.storage.commitment_peers:
        log.warning(
            "config.retention_without_peers",
            detail="storage.delete_after_commit is true but storage.commitment_peers is empty: "
            "nothing will be removed",
        )


def readiness_checks(runtime: Runtime) -> list[ReadyCheck]:
    """What /readyz checks: database at head, SCP listening, data dir, peers loaded."""

    def database() -> tuple[bool, str]:
        if not migrate.is_at_head(runtime.engine):
            return False, "schema not at head: run `ctnode db upgrade`"
        return True, f"reachable, at revision {migrate.head_revision(runtime.engine)}"

    def scp() -> tuple[bool, str]:
        server = runtime.server
        if not server.listening:
            return False, "not listening"
        return True, f"listening on {runtime.settings.node.bind}:{server.port}"

    def peers() -> tuple[bool, str]:
        return True, f"{len(runtime.peers())} peer(s) loaded"

    storage = runtime.settings.storage
    return [
        ReadyCheck("database", database),
        ReadyCheck("scp", scp),
        data_dir_check(storage.data_dir, int(storage.min_free_bytes)),
        ReadyCheck("peers", peers),
    ]


async def queue_figures(repo: JobRepository) -> QueueFigures:
    """Queue depth and the oldest runnable queued job's age, for the STATUS= line."""
    summary = await asyncio.to_thread(repo.summary)
    return QueueFigures(summary.by_state.get("queued", 0), summary.oldest_queued_age)


async def supervise(
    runtime: Runtime,
    stop: asyncio.Event,
    *,
    notifier: Notifier | None = None,
    reload: asyncio.Event | None = None,
) -> int:
    """Start the SCP, wait for *stop*, shut down in order. Returns the exit code.

    ``READY=1`` goes to *notifier* once the port is bound (the database was checked at head and
    the peers were loaded by ``build_runtime``); setting *reload* reloads the peers.
    """
    settings = runtime.settings
    notifier = notifier or Notifier(None)
    supervisor = Supervisor(
        notifier=notifier,
        server=runtime.server,
        engine=runtime.engine,
        peers=runtime.peers,
        peers_dir=settings.peers_dir,
        peers_required=not settings.is_embedded_default,
        reload=reload or asyncio.Event(),
        queue_figures=lambda: queue_figures(runtime.repo),
        also_reload=lambda registry: _reload_routes(runtime, registry),
    )
    # Fixed-size pools, started in full now: the thread count is constant once ready.
    io_pool = ThreadPoolExecutor(settings.queue.workers + 4, thread_name_prefix="io")
    asyncio.get_running_loop().set_default_executor(io_pool)
    prewarm([io_pool, runtime.workers.executor, supervisor.database.executor])
    runtime.server.start()
    # /healthz and /metrics answer before daemon.ready is logged (scripts wait for that line).
    health: HealthServer | None = None
    if settings.metrics.enabled:
        checks = readiness_checks(runtime)
        health = HealthServer(
            settings.metrics.bind, settings.metrics.port, runtime.metrics, lambda: readiness(checks)
        )
        health.start()
        log.info("metrics.listening", bind=settings.metrics.bind, port=health.port)
    # Before daemon.ready: scripts submit right after it.
    wake = open_wake_channel(settings, runtime.workers)
    handoff = open_handoff(settings, runtime.repo)
    log.info(
        "daemon.ready",
        ae_title=settings.node.ae_title,
        bind=settings.node.bind,
        port=runtime.server.port,
        tls_port=runtime.server.tls_port,
        data_dir=str(settings.storage.data_dir),
        database=runtime.engine.url.render_as_string(hide_password=True),
        peers=len(runtime.peers()),
        embedded_default=settings.is_embedded_default,
        watchdog_interval=notifier.watchdog_interval(),
    )
    stop_workers = asyncio.Event()
    # A commitment report (SCP thread) makes its job runnable: tell idle workers at once.
    loop = asyncio.get_running_loop()

    def notify() -> None:
        loop.call_soon_threadsafe(runtime.workers.wake)

    runtime.reconciler.notify = notify
    runtime.intake.notify = notify
    runtime.forwarder.notify = notify
    await asyncio.to_thread(_recover_reports, runtime)
    recovery = asyncio.create_task(
        recover_reports_periodically(runtime, stop_workers), name="commit_scp_recovery"
    )
    workers = asyncio.create_task(runtime.workers.run(stop_workers), name="workers")
    forwarding = asyncio.create_task(runtime.forwarder.run(stop_workers), name="forwarder")
    supervisor.ready()
    supervision = asyncio.create_task(supervisor.run(stop), name="supervisor")
    await stop.wait()
    supervision.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await supervision
    log.info(
        "daemon.stopping",
        active_associations=runtime.server.active,
        running_jobs=runtime.workers.busy,
    )
    stop_workers.set()  # attempts stop at the next item boundary and are released
    runtime.server.stop_accepting()
    if handoff is not None:  # no new submission; followers follow through the database
        asyncio.get_running_loop().remove_reader(handoff.fileno())
        handoff.stop()
    idle = await asyncio.to_thread(runtime.server.wait_idle, settings.node.shutdown_grace)
    if not idle:
        log.warning("daemon.grace_expired", aborted=runtime.server.active)
        await asyncio.to_thread(runtime.server.abort_all)
    if runtime.ingest is not None:  # every association has ended: no place is in flight
        await asyncio.to_thread(runtime.ingest.close)
    with contextlib.suppress(Exception):
        await forwarding
    with contextlib.suppress(Exception):
        await recovery
    try:
        await asyncio.wait_for(workers, settings.node.shutdown_grace)
    except TimeoutError:
        log.warning("daemon.workers_grace_expired", running_jobs=runtime.workers.busy)
    if handoff is not None and not await asyncio.to_thread(
        handoff.wait, settings.node.shutdown_grace
    ):
        log.warning("handoff.grace_expired")
    if wake is not None:
        asyncio.get_running_loop().remove_reader(wake.fileno())
        wake.close()
    if health is not None:
        health.stop()
    runtime.engine.dispose()
    log.info("daemon.stopped")
    return 0


def run(settings: Settings) -> int:
    """Run the node until SIGTERM/SIGINT. Returns the process exit code."""
    pool = ingest_pool(settings)
    if pool is not None:
        pool.fork()  # before any thread exists
    try:
        runtime = build_runtime(settings, pool)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    notifier = Notifier.from_environ()

    async def main() -> int:
        stop, reload = asyncio.Event(), asyncio.Event()

        def terminate() -> None:  # STOPPING=1 is the very first thing a stop does
            notifier.stopping(f"stopping; {runtime.server.active} association(s) in progress")
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, terminate)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        return await supervise(runtime, stop, notifier=notifier, reload=reload)

    try:
        return asyncio.run(main())
    finally:
        notifier.close()
