"""Wiring of the ingest worker processes (``storage.ingest_processes``; see
``storage.ingest_pool``): what a worker builds, and how the node hands it the routes.

A worker's store is the node's store minus its recovery and its index writer: the same settings,
its own database engine (opened after the fork, once the node migrated the database) and the
node's current route set, replaced whole on every reload.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ctnode.config import Settings
from ctnode.db.engine import session_factory
from ctnode.db.opening import open_database
from ctnode.logs import configure_logging
from ctnode.routing.decisions import RouteHolder
from ctnode.routing.rules import RouteSet
from ctnode.storage.ingest_pool import IngestPool
from ctnode.storage.recovery import recover_spool_file
from ctnode.storage.store import Store


def ingest_pool(settings: Settings) -> IngestPool | None:
    """The pool the settings ask for (not forked yet), or None for in-process ingest."""
    size = settings.storage.ingest_processes
    if size <= 0:
        return None
    return IngestPool(size, partial(_worker_store, settings), _install_routes)


def attach(pool: IngestPool, store: Store, routes: RouteSet) -> None:
    """The database is ready: start the workers with *routes* and let *store* use them."""

    def recover(path: Path) -> None:
        recover_spool_file(path, store.root, store.sessions)

    pool.start(routes, recover)
    store.offload = pool


def _worker_store(settings: Settings, routes: RouteSet) -> Store:
    configure_logging(settings.logging)  # a spawned replacement starts unconfigured
    engine = open_database(settings, migrate_sqlite=False)
    holder = RouteHolder(routes, settings.node.name)
    return Store(settings.storage, session_factory(engine), settings.node.name, decisions=holder)


def _install_routes(store: Store, routes: RouteSet) -> None:
    decisions = store.decisions
    if isinstance(decisions, RouteHolder):
        decisions.replace(routes)
