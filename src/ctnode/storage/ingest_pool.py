"""Ingest worker processes: concurrent associations place their objects on both cores.

Every association runs in the node's process, whose Python work shares one core (the GIL). The
CPU-heavy half of an ingest — walking and hashing the data set, ``fdatasync``, the link into
``store/`` and its directory ``fsync``, the routing decision (``Store.place``) — can run in a
worker process instead; the node keeps the rest (the association, the spool writes, the per-UID
lock and the index commit, so that concurrent rows still share one transaction). The order of
the durable steps and the answer do not change: Success only once the row is committed.

Policy: an ingest runs in the calling thread when no other ingest is in flight (a lone
association pays nothing for the pool), else in the least busy ready worker.

Workers are forked from the node before it starts any thread (they share its memory pages
until they write them) and wait for ``start`` (sent once the database is migrated) before they
open anything. A replacement is a fresh interpreter (``spawn``): the node runs threads by then,
and a forked child could inherit a lock held by one of them for good.

A worker ignores SIGTERM/SIGINT/SIGHUP (the node drains its associations first, then stops
it) and dies with the node (``PR_SET_PDEATHSIG``). When a worker dies, its
in-flight objects are answered 0xA700 and their spool files resolved at once
(``recovery.recover_spool_file``: a file linked into ``store/`` without a committed row goes);
a replacement is started and used once it reports ready (it is abandoned if it does not within
``READY_TIMEOUT``; the node then places in-process).

Messages (pickled over a ``multiprocessing`` pipe): to the worker ``("start", config)``,
``("config", config)``, ``("place", id, path, request, dataset_offset, size)``, ``("stop",)``
(answer what is in flight, then exit); from it
``("ready",)``, ``("done", id, IngestResult | Placed)``, ``("error", id, text)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctnode.dicom import status
from ctnode.logs import get_logger
from ctnode.storage.spool import SpoolFile
from ctnode.storage.values import IngestResult, Placed, refused

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from ctnode.storage.store import Store

log = get_logger("ctnode.storage")

#: A replacement worker not ready by then is abandoned.
READY_TIMEOUT = 30.0
#: Places run at once in one worker (each mostly waits for a sync).
WORKER_THREADS = 8

#: In the worker: build the store from the ``start`` message's config.
Build = Callable[[Any], "Store"]
#: In the worker: apply a later ``config`` message (e.g. a reloaded route set).
Reconfigure = Callable[["Store", Any], None]


class WorkerDied(Exception):
    """The worker placing an object exited before answering."""


class IngestWorkerError(RuntimeError):
    """Placing an object raised in the worker (the text is the worker's exception)."""


class _Worker:
    """The node's side of one worker process."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = threading.Event()
        self.alive = True
        self.pending: dict[int, Future[IngestResult | Placed]] = {}
        self.send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            self.conn.send(message)


class IngestPool:
    """*size* worker processes placing spool files for ``Store`` (its ``offload``)."""

    def __init__(self, size: int, build: Build, reconfigure: Reconfigure) -> None:
        self.size = size
        self._build = build
        self._reconfigure = reconfigure
        self._fork = multiprocessing.get_context("fork")
        self._spawn_ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._inflight = 0
        self._config: Any = None
        self._started = False
        self._closing = False
        #: Objects placed in a worker / in the calling thread since start.
        self.placed_in_workers = 0
        self.placed_here = 0
        self.recover: Callable[[Path], None] = lambda path: None
        # Replacements are started by one long-lived thread: PR_SET_PDEATHSIG fires when the
        # *thread* that started a worker exits, not only the process.
        self._replacements: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._keeper: threading.Thread | None = None

    # -- life cycle (node side) ------------------------------------------------------------

    def fork(self) -> None:
        """Fork the workers (call before the node starts any thread); they wait for start().

        Forked, they share the node's memory until they write it. A process that already runs
        threads must not fork (a lock another thread holds, e.g. SQLite's, would stay locked in
        the child for good): then, as for every replacement, a fresh interpreter is started.
        """
        fork = threading.active_count() == 1
        if fork:
            # The node's objects so far go to the permanent generation: a worker's collections
            # neither walk them (a full collection of the inherited heap per few hundred
            # places) nor write to their pages (which would unshare them).
            gc.freeze()
        for _ in range(self.size):
            self._workers.append(self._spawn(fork=fork))

    def start(self, config: Any, recover: Callable[[Path], None]) -> None:
        """The database is ready: let the workers build their store from *config*. *recover*
        resolves the spool file of an object whose worker died."""
        self.recover = recover
        self._keeper = threading.Thread(target=self._keep, name="ingest-pool-keeper", daemon=True)
        self._keeper.start()
        with self._lock:
            self._config = config
            self._started = True
            workers = list(self._workers)
        for worker in workers:
            self._start_worker(worker)

    def configure(self, config: Any) -> None:
        """Send *config* (e.g. a reloaded route set) to every worker, and to replacements."""
        with self._lock:
            self._config = config
            workers = [w for w in self._workers if w.alive]
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.send(("config", config))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (each exits once its places are answered) and reap them."""
        with self._lock:
            self._closing = True
            workers, self._workers = self._workers, []
        self._replacements.put(False)
        for worker in workers:
            # A message, not just closing our end: our reader thread is blocked reading it.
            with contextlib.suppress(OSError, ValueError):
                worker.send(("stop",))
        for worker in workers:
            worker.process.join(timeout)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
            with contextlib.suppress(OSError):
                worker.conn.close()
        log.info(
            "storage.ingest_pool_closed",
            placed_in_workers=self.placed_in_workers,
            placed_here=self.placed_here,
        )

    def _spawn(self, *, fork: bool = False) -> _Worker:
        ctx: Any = self._fork if fork else self._spawn_ctx
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_child_main,
            args=(theirs, os.getpid(), self._build, self._reconfigure),
            name="ctnode-ingest",
            daemon=True,
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        threading.Thread(
            target=self._read, args=(worker,), name="ingest-pool-reader", daemon=True
        ).start()
        return worker

    def _start_worker(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError, ValueError):
            worker.send(("start", self._config))

    # -- placing (node side) -----------------------------------------------------------------

    def __call__(
        self, spool: SpoolFile, here: Callable[[SpoolFile], IngestResult | Placed]
    ) -> IngestResult | Placed:
        """Place *spool* in a worker, or with *here* in this thread when no other place is in
        flight (or no worker is ready)."""
        with self._lock:
            others = self._inflight
            self._inflight += 1
            worker = None
            if others:
                ready = [w for w in self._workers if w.alive and w.ready.is_set()]
                worker = min(ready, key=lambda w: len(w.pending), default=None)
            if worker is not None:
                request_id = next(self._ids)
                future: Future[IngestResult | Placed] = Future()
                worker.pending[request_id] = future
                self.placed_in_workers += 1
            else:
                self.placed_here += 1
        try:
            if worker is None:
                return here(spool)
            return self._place_in(worker, request_id, future, spool)
        finally:
            with self._lock:
                self._inflight -= 1

    def _place_in(
        self,
        worker: _Worker,
        request_id: int,
        future: Future[IngestResult | Placed],
        spool: SpoolFile,
    ) -> IngestResult | Placed:
        message = (
            "place",
            request_id,
            str(spool.path),
            spool.request,
            spool.dataset_offset,
            spool.size,
        )
        try:
            worker.send(message)
        except (OSError, ValueError):
            self._died(worker)
        try:
            return future.result()
        except WorkerDied:
            # Whatever the worker did with the file is resolved now, under the UID's lock.
            self.recover(spool.path)
            return refused(
                status.OUT_OF_RESOURCES,
                "the ingest worker process placing the object died; it was not stored",
            )

    def _read(self, worker: _Worker) -> None:
        """Answers from one worker, until its pipe closes."""
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError, ValueError):
                break
            kind = message[0]
            if kind == "ready":
                worker.ready.set()
                log.info("storage.ingest_worker_ready", pid=worker.process.pid)
                continue
            with self._lock:
                future = worker.pending.pop(message[1], None)
            if future is None:
                continue
            if kind == "done":
                future.set_result(message[2])
            else:
                future.set_exception(IngestWorkerError(message[2]))
        self._died(worker)

    def _died(self, worker: _Worker) -> None:
        with self._lock:
            if not worker.alive:
                return
            worker.alive = False
            pending, worker.pending = worker.pending, {}
            closing = self._closing
            if worker in self._workers:
                self._workers.remove(worker)
        for future in pending.values():
            future.set_exception(WorkerDied())
        if closing:
            return
        worker.process.join(0.5)
        log.error(
            "storage.ingest_worker_died",
            pid=worker.process.pid,
            exitcode=worker.process.exitcode,
            in_flight=len(pending),
        )
        with contextlib.suppress(OSError):
            worker.conn.close()
        if not worker.ready.is_set():
            return  # it failed to start: a replacement would fail the same way
        self._replacements.put(True)

    def _keep(self) -> None:
        """The keeper thread: one replacement per dead worker, until the pool closes."""
        while self._replacements.get():
            self._replace()

    def _replace(self) -> None:
        """Start a replacement (a fresh interpreter: this process runs threads now, it must not
        fork); abandon it if it is not ready within READY_TIMEOUT."""
        with self._lock:
            if self._closing:
                return
            started = self._started
        try:
            worker = self._spawn()
        except OSError as exc:
            log.exception("storage.ingest_worker_replace_failed", error=str(exc))
            return
        with self._lock:
            if self._closing:
                worker.process.kill()
                return
            self._workers.append(worker)
        if started:
            self._start_worker(worker)
        if not worker.ready.wait(READY_TIMEOUT):
            log.error("storage.ingest_worker_not_ready", pid=worker.process.pid)
            worker.process.kill()


# -- the worker process --------------------------------------------------------------------


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): the kernel kills this process when the node exits."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def _detach_inherited_fds(keep: set[int]) -> None:
    """Point every inherited descriptor but *keep* at /dev/null.

    A forked worker must not hold the node's sockets (an association the node closes must
    close for its peer; the listening port must go with the node) nor the node's ends of the
    other workers' pipes (each worker exits when its pipe closes). ``dup2`` rather than
    ``close``: the node's Python objects still own those numbers, and one closing its number
    later must not close a file this worker opened meanwhile.
    """
    try:
        inherited = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in inherited:
        if fd in keep or fd == null:
            continue
        with contextlib.suppress(OSError):
            os.dup2(null, fd, inheritable=False)
    os.close(null)


def _child_main(conn: Connection, parent: int, build: Build, reconfigure: Reconfigure) -> None:
    _die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _detach_inherited_fds({0, 1, 2, conn.fileno()})
    if os.getppid() != parent:  # the node died before PR_SET_PDEATHSIG was set
        return
    serve(conn, build, reconfigure)


def serve(conn: Connection, build: Build, reconfigure: Reconfigure) -> None:
    """A worker's loop: build the store on ``start``, place objects until the pipe closes."""
    send_lock = threading.Lock()
    store: Store | None = None
    executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="place")

    def answer(message: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):
            conn.send(message)

    def place(
        store: Store, request_id: int, path: str, request: Any, offset: int, size: int
    ) -> None:
        try:
            spool = SpoolFile.adopt(Path(path), request, offset, size)
            try:
                outcome = store.place(spool)
            finally:
                spool.close()
        except BaseException as exc:  # told to the node, which answers the C-STORE
            text = str(exc).splitlines()[0] if str(exc) else ""
            answer(("error", request_id, f"{type(exc).__name__}: {text}"))
            return
        answer(("done", request_id, outcome))

    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "stop":
                break
            if kind == "place" and store is not None:
                executor.submit(place, store, *message[1:])
            elif kind == "start" and store is None:
                store = build(message[1])
                answer(("ready",))
            elif kind == "config" and store is not None:
                reconfigure(store, message[1])
    finally:
        executor.shutdown(wait=True)
