"""The node's local sockets in ``<data_dir>/run``: the wake channel and the push hand-off.

Both are optional: a node that cannot bind one logs why and works without it (jobs start at the
next poll; ``ctnode push`` starts the whole stack itself). Each is read on the event loop
(``add_reader``); the caller removes the reader and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ctnode.config import Settings
from ctnode.handoff.server import HandoffServer
from ctnode.logs import get_logger
from ctnode.queue.repository import JobRepository
from ctnode.queue.wakeup import WakeListener
from ctnode.queue.worker import WorkerPool

log = get_logger("ctnode.daemon")


class _Listener(Protocol):
    address: Any

    def open(self) -> bool: ...

    def fileno(self) -> int: ...


def _listen(
    listener: _Listener, on_readable: Callable[[], object], *, event: str, detail: str
) -> bool:
    """Open *listener* and read it on the running loop; False (logged: *event*, *detail* says
    what the node does without it) when it cannot be bound."""
    if not listener.open():
        log.warning(event, address=str(listener.address), detail=detail)
        return False
    asyncio.get_running_loop().add_reader(listener.fileno(), on_readable)
    return True


def open_wake_channel(settings: Settings, workers: WorkerPool) -> WakeListener | None:
    """Listen on ``<data_dir>/run/wake.sock``: a CLI that committed a job wakes the idle
    workers at once, and a follower is told when an attempt of its job ends. Without it (bind
    failed) the node works by polling alone."""

    def on_job(job_id: int, follower: bytes | None) -> None:
        if follower is not None:
            workers.watch(job_id, follower)
        workers.wake()

    listener = WakeListener(settings.storage.run_dir, on_job)
    if not _listen(
        listener,
        listener.drain,
        event="queue.wake_channel_unavailable",
        detail="submitted jobs start at the next poll (queue.poll_interval)",
    ):
        return None
    workers.on_concluded = listener.notify
    return listener


def open_handoff(settings: Settings, repo: JobRepository) -> HandoffServer | None:
    """Listen on ``<data_dir>/run/submit.sock``: ``ctnode push`` hands its submission to this
    node instead of starting the whole stack itself. Without it (bind failed) every push takes
    the ordinary path."""
    server = HandoffServer(settings, repo, threads=settings.queue.workers)
    if not _listen(
        server,
        server.accept,
        event="handoff.unavailable",
        detail="ctnode push starts the whole stack itself",
    ):
        return None
    return server
