"""Follow a job until it ends (``--wait``): a progress bar on a terminal, plain lines otherwise;
and what a command that submitted a job prints at its end (``finish_job``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ctnode.db.engine import READ_ONLY
from ctnode.progress import Display, DisplayFactory, Snapshot, terminal
from ctnode.queue.jobs import Job, JobKind, JobState
from ctnode.queue.nodes import NodeLiveness
from ctnode.queue.reads import JobReader
from ctnode.queue.wakeup import Address, FollowChannel, poke

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: How long a job may stay queued with no live node before the user is told.
NO_NODE_WARNING_AFTER = 5.0


class FollowedQueue(Protocol):
    """What following reads (``JobRepository`` is one): the job, and which nodes are alive."""

    def get(self, job_id: int) -> Job:
        """The job as it is now (``queue.reads.JobReader.get``)."""

    def live_nodes(self, within: float = 30.0) -> list[str]:
        """Nodes seen within *within* seconds (``queue.nodes.NodeLiveness.live_nodes``)."""


class _Watch(JobReader, NodeLiveness):
    """The reads of following, in read-only transactions."""


def watch(engine: Engine) -> FollowedQueue:
    """What following reads, on *engine* in read-only transactions: on SQLite a plain BEGIN,
    which neither takes nor waits for the write lock, so a follower polling its job never
    holds up the job's own writes (or the receive path's)."""
    return _Watch(engine.execution_options(**{READ_ONLY: True}))


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
    display: DisplayFactory = terminal,
) -> Job:
    """Poll *job_id* until *until* holds; show progress; returns the last job seen.

    With *wake* (the node's wake address), the local node is asked to say when an attempt of
    the job ends, and the job is read again at once then instead of at the next poll. Each
    reading goes to *display* (default: a bar or plain lines on *out*, stderr by default).
    """
    with _waiter(job_id, wake) as wait, display(job_id, out or sys.stderr) as shown:
        return _follow(repo, job_id, until, interval, shown, timeout, wait)


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


def snapshot(job: Job) -> Snapshot:
    """How *job* is shown while followed."""
    total, done = _totals(job)
    return Snapshot(describe(job), total, done, f"job {job.id} {job.state.value}")


def _follow(
    repo: FollowedQueue,
    job_id: int,
    until: Callable[[Job], bool],
    interval: float,
    display: Display,
    timeout: float | None,
    sleep: Callable[[float], object],
) -> Job:
    started = time.monotonic()
    # Poll often at first (short jobs end quickly), then every *interval*.
    pause = min(interval, 0.05)
    warned = False
    while True:
        job = repo.get(job_id)
        display.show(snapshot(job))
        warned = _warn_no_node(repo, job, started, warned, display)
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


def _warn_no_node(
    repo: FollowedQueue, job: Job, started: float, warned: bool, display: Display
) -> bool:
    if warned or job.state is not JobState.QUEUED or job.attempts:
        return warned
    if time.monotonic() - started < NO_NODE_WARNING_AFTER:
        return warned
    if not repo.live_nodes(within=30):
        display.warn(
            f"ctnode: warning: job {job.id} is queued but no `ctnode run` has been seen on this "
            "database in the last 30 s; start the node (systemctl start ctnode)"
        )
        return True
    return warned


# ------------------------------------------------------------------ how a submitting command ends


@dataclass(frozen=True, slots=True)
class Finished:
    """What a command that submitted a job prints on stdout (one line each), and its exit code."""

    lines: tuple[str, ...]
    code: int = 0


def json_text(value: object) -> str:
    """*value* as ``--json`` prints it."""
    return json.dumps(value, indent=2, default=str)


def finish_job(
    repo: FollowedQueue,
    job_id: int,
    *,
    wait: bool,
    as_json: bool,
    wake: Address,
    extra: dict[str, Any] | None = None,
    display: DisplayFactory = terminal,
) -> Finished:
    """The end of ``push``/``commit``: with *wait*, follow the job (exit 1 unless it succeeded);
    without, wake the node. Then the job id, its JSON (with *extra*), or its final line."""
    if wait:
        job = follow(repo, job_id, wake=wake, display=display)
    else:
        poke(wake, job_id)
        job = repo.get(job_id)
    if as_json:
        line = json_text({**job.to_json(), **(extra or {})})
    elif wait:
        line = describe(job)
    else:
        line = str(job.id)
    return Finished((line,), 1 if wait and job.state is not JobState.SUCCEEDED else 0)


def finish_push_and_commit(
    repo: FollowedQueue,
    push_id: int,
    *,
    as_json: bool,
    wake: Address,
    extra: dict[str, Any],
    display: DisplayFactory = terminal,
) -> Finished:
    """``push --commit --wait``: follow the push, then its commit job; exit 0 only if every
    instance was delivered and committed."""
    pushed = follow(repo, push_id, wake=wake, display=display)
    commit_id = (pushed.result or {}).get("commit_job")
    committed = (
        follow(repo, int(commit_id), wake=wake, display=display) if commit_id is not None else None
    )
    if as_json:
        lines: tuple[str, ...] = (
            json_text(
                {**pushed.to_json(), **extra, "commit": committed.to_json() if committed else None}
            ),
        )
    else:
        lines = (describe(pushed),) + ((describe(committed),) if committed is not None else ())
    ok = committed is not None and committed.state is JobState.SUCCEEDED
    return Finished(lines, 0 if ok else 1)
