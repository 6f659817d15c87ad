"""Follow a job until it ends (``--wait``): a progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

from ctnode.queue.jobs import Job, JobKind, JobState
from ctnode.queue.wakeup import Address, FollowChannel, poke

#: How long a job may stay queued with no live node before the user is told.
NO_NODE_WARNING_AFTER = 5.0


class FollowedQueue(Protocol):
    """What following reads (``JobRepository`` is one): the job, and which nodes are alive."""

    def get(self, job_id: int) -> Job:
        """The job as it is now (``queue.reads.JobReader.get``)."""

    def live_nodes(self, within: float = 30.0) -> list[str]:
        """Nodes seen within *within* seconds (``queue.nodes.NodeLiveness.live_nodes``)."""


def describe(job: Job) -> str:
    """One line: ``job 12 (push to pacs) running: 120/600 delivered, 0 failed``."""
    items = job.items
    direction = "from" if job.kind is JobKind.MOVE else "to"
    text = f"job {job.id} ({job.kind.value} {direction} {job.peer}) {job.state.value}"
    progress = job.progress or {}
    if "completed" in progress:  # C-MOVE sub-operations
        text += (
            f": {progress.get('completed', 0)} completed, {progress.get('failed', 0)} failed, "
            f"{progress.get('warning', 0)} warning, {progress.get('remaining', '?')} remaining"
        )
        if "arrived" in progress:
            text += f", {progress['arrived']} arrived"
    elif items.total:
        done = "committed" if job.kind is JobKind.COMMIT else "delivered"
        text += f": {items.delivered}/{items.total} {done}"
        if items.warning:
            text += f" ({items.warning} with warnings)"
        text += f", {items.failed} failed"
    if job.state is JobState.QUEUED and job.attempts:
        text += f" (attempt {job.attempts} failed: {job.last_error}; retrying)"
    if job.state is JobState.FAILED and job.last_error:
        text += f" — {job.last_error}"
    return text


def follow(
    repo: FollowedQueue,
    job_id: int,
    *,
    until: Callable[[Job], bool] = lambda job: job.state.final,
    interval: float = 0.5,
    out: TextIO | None = None,
    timeout: float | None = None,
    wake: Address | None = None,
) -> Job:
    """Poll *job_id* until *until* holds; show progress; returns the last job seen.

    With *wake* (the node's wake address), the local node is asked to say when an attempt of
    the job ends, and the job is read again at once then instead of at the next poll.
    """
    with _waiter(job_id, wake) as wait:
        return _follow(repo, job_id, until, interval, out or sys.stderr, timeout, wait)


@contextmanager
def _waiter(job_id: int, wake: Address | None) -> Iterator[Callable[[float], object]]:
    """A sleep for the follow loop: plain, or cut short by the node's notification."""
    if wake is None:
        yield time.sleep
        return
    with FollowChannel() as channel:
        if channel.sock is None:
            yield time.sleep
            return
        reply = channel.address
        poke(wake, job_id, reply)  # before the first read: no attempt can end unseen
        rearm = False

        def wait(seconds: float) -> bool:
            nonlocal rearm
            if rearm:  # the job was read after the notification and is not over: next attempt
                poke(wake, job_id, reply)
                rearm = False
            rearm = channel.wait(seconds)
            return rearm

        yield wait


def _follow(
    repo: FollowedQueue,
    job_id: int,
    until: Callable[[Job], bool],
    interval: float,
    out: TextIO,
    timeout: float | None,
    sleep: Callable[[float], object],
) -> Job:
    started = time.monotonic()
    # Poll often at first (short jobs end quickly), then every *interval*.
    pause = min(interval, 0.05)
    warned = False
    if out.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=out)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"job {job_id}", total=None)
            while True:
                job = repo.get(job_id)
                total, done = _totals(job)
                bar.update(
                    task,
                    total=total or None,
                    completed=done,
                    description=f"job {job.id} {job.state.value}",
                )
                warned = _warn_no_node(repo, job, started, warned, out)
                if until(job) or _timed_out(started, timeout):
                    return job
                sleep(pause)
                pause = min(interval, pause * 1.5)
    last = ""
    while True:
        job = repo.get(job_id)
        line = describe(job)
        if line != last:
            print(line, file=out, flush=True)
            last = line
        warned = _warn_no_node(repo, job, started, warned, out)
        if until(job) or _timed_out(started, timeout):
            return job
        sleep(pause)
        pause = min(interval, pause * 1.5)


def _totals(job: Job) -> tuple[int, int]:
    progress = job.progress or {}
    if job.items.total and "remaining" not in progress:
        return job.items.total, job.items.delivered + job.items.failed
    done = sum(int(progress.get(k, 0) or 0) for k in ("completed", "failed", "warning"))
    remaining = int(progress.get("remaining", 0) or 0)
    return done + remaining, done


def _timed_out(started: float, timeout: float | None) -> bool:
    return timeout is not None and time.monotonic() - started > timeout


def _warn_no_node(repo: FollowedQueue, job: Job, started: float, warned: bool, out: TextIO) -> bool:
    if warned or job.state is not JobState.QUEUED or job.attempts:
        return warned
    if time.monotonic() - started < NO_NODE_WARNING_AFTER:
        return warned
    if not repo.live_nodes(within=30):
        print(
            f"ctnode: warning: job {job.id} is queued but no `ctnode run` has been seen on this "
            "database in the last 30 s; start the node (systemctl start ctnode)",
            file=out,
            flush=True,
        )
        return True
    return warned
