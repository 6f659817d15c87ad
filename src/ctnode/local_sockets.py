"""The node's local sockets in ``<data_dir>/run``: the wake channel and the push hand-off.

Both are optional: a node that cannot bind one logs why and works without it (jobs start at the
next poll; ``ctnode push`` starts the whole stack itself). Each is read on the event loop
(``add_reader``); the caller removes the reader and closes it at shutdown.
"""

from __future__ import annotations

import asyncio

from ctnode.config import Settings
from ctnode.handoff.server import HandoffServer
from ctnode.logs import get_logger
from ctnode.queue.repository import JobRepository
from ctnode.queue.wakeup import WakeListener
from ctnode.queue.worker import WorkerPool

log = get_logger("ctnode.daemon")


def open_wake_channel(settings: Settings, workers: WorkerPool) -> WakeListener | None:
    """Listen on ``<data_dir>/run/wake.sock``: a CLI that committed a job wakes the idle
    workers at once, and a follower is told when an attempt of its job ends. Without it (bind
    failed) the node works by polling alone."""

    def on_job(job_id: int, follower: bytes | None) -> None:
        if follower is not None:
            workers.watch(job_id, follower)
        workers.wake()

    listener = WakeListener(settings.storage.run_dir, on_job)
    if not listener.open():
        log.warning(
            "queue.wake_channel_unavailable",
            address=str(listener.address),
            detail="submitted jobs start at the next poll (queue.poll_interval)",
        )
        return None
    asyncio.get_running_loop().add_reader(listener.fileno(), listener.drain)
    workers.on_concluded = listener.notify
    return listener


def open_handoff(settings: Settings, repo: JobRepository) -> HandoffServer | None:
    """Listen on ``<data_dir>/run/submit.sock``: ``ctnode push`` hands its submission to this
    node instead of starting the whole stack itself. Without it (bind failed) every push takes
    the ordinary path."""
    server = HandoffServer(settings, repo, threads=settings.queue.workers)
    if not server.open():
        log.warning(
            "handoff.unavailable",
            address=str(server.address),
            detail="ctnode push starts the whole stack itself",
        )
        return None
    asyncio.get_running_loop().add_reader(server.fileno(), server.accept)
    return server
