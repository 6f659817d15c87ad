"""Workers: claim a job with a lease, make one attempt, report, decide what happens next.

What an operation is given for an attempt and what it reports back is ``queue.attempt``.

Each worker is an asyncio task. The attempt itself (blocking socket I/O) runs in a bounded
thread pool; every database call goes through ``asyncio.to_thread``. While an attempt runs, a
heartbeat renews the lease every third of its length and carries cancellation requests to the
operation, which checks its ``StopFlag`` between items. After the attempt the retry policy — a
pure function — decides: done, retry at T, or failed.

Recording that decision is retried while the database is unavailable (locked beyond its busy
timeout, full, unreachable): the outcome is known, and a job whose worker gave up on recording
it would stay ``running`` under this process's lease, which its own pool never reclaims. A
worker never dies of an error; it logs it and claims the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from ctnode import __version__
from ctnode.config import QueueSettings
from ctnode.db.engine import is_unavailable
from ctnode.errors import NotFound
from ctnode.logs import get_logger
from ctnode.peers import PeerRegistry
from ctnode.queue.attempt import (
    Attempt,
    AttemptResult,
    Operation,
    Outcome,
    StopFlag,
    StopReason,
)
from ctnode.queue.jobs import Job, JobKind, JobState
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import GiveUp, RetryPolicy, decide

log = get_logger("ctnode.queue")

#: Most jobs (and followers per job) the pool keeps follow notifications for.
MAX_WATCHERS = 256


def _run_with_context(operation: Operation, attempt: Attempt) -> AttemptResult:
    """Run an attempt with the job bound to every log line of its thread."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**attempt.job.log_context())
    try:
        return operation.run(attempt)
    finally:
        structlog.contextvars.clear_contextvars()


def _loggable(result: dict[str, Any] | None) -> dict[str, Any]:
    """The scalar fields of a job result (counts, status): lists and objects stay out of
    logs, so a query's matches (patient names and IDs) never reach them."""
    return {
        k: v
        for k, v in (result or {}).items()
        if (v is None or isinstance(v, (str, int, float, bool))) and k not in _LOG_RESERVED
    }


#: Keys of a log line that a result field must not overwrite.
_LOG_RESERVED = frozenset({"event", "level", "logger", "timestamp"})


def new_owner(node_name: str) -> str:
    """A lease owner id unique to this process: ``node:host:pid:random``."""
    return f"{node_name}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def dead_local_owners(owners: Iterable[str]) -> list[str]:
    """Owners that were processes on this host and no longer exist (crashed, killed).

    Their leases can end at once instead of after ``lease_seconds``: nobody can be running
    those attempts any more.
    """
    host = socket.gethostname()
    dead = []
    for owner in owners:
        parts = owner.split(":")
        if len(parts) < 4 or parts[-3] != host or not parts[-2].isdigit():
            continue
        pid = int(parts[-2])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(owner)
        except PermissionError:
            continue
    return dead


class WorkerPool:
    """``queue.workers`` asyncio workers sharing one executor and per-peer limits."""

    def __init__(
        self,
        repo: JobRepository,
        settings: QueueSettings,
        peers: Callable[[], PeerRegistry],
        operations: Mapping[JobKind, Operation],
        *,
        node_name: str,
        owner: str | None = None,
        on_attempt: Callable[[str, str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.peers = peers
        self.operations = dict(operations)
        self.node_name = node_name
        self.owner = owner or new_owner(node_name)
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="job")
        self._active_peers: Counter[str] = Counter()
        self._claim_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        #: Idle polling is shared: once a claim found nothing, the other idle workers skip
        #: their timed claims for a poll interval (one claim per interval, not one per idle
        #: worker, so idle workers do not compete with running attempts for the database and
        #: the GIL); a wake, a freed peer slot or a successful claim lifts that at once.
        self._last_empty = -float("inf")
        self._claim_now = True
        self._stopping = False
        self._running: dict[int, StopFlag] = {}
        self.attempts_finished = 0
        #: Told (kind, outcome) after every attempt (metrics).
        self.on_attempt = on_attempt
        #: Told (job id, follower addresses) when an attempt of a watched job ended.
        self.on_concluded: Callable[[int, list[bytes]], None] | None = None
        self._watchers: dict[int, set[bytes]] = {}

    # -- control -------------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be available (in-process submitters, the wake channel)."""
        self._claim_now = True
        self._wake.set()

    def watch(self, job_id: int, address: bytes) -> None:
        """Tell *address* (through ``on_concluded``) when the next attempt of *job_id* in this
        process ends. Bounded: beyond MAX_WATCHERS jobs the oldest watch is forgotten (jobs
        another node runs are never concluded here); a forgotten follower still polls."""
        if job_id not in self._watchers and len(self._watchers) >= MAX_WATCHERS:
            del self._watchers[next(iter(self._watchers))]
        addresses = self._watchers.setdefault(job_id, set())
        if len(addresses) < MAX_WATCHERS:
            addresses.add(address)

    def _concluded(self, job_id: int) -> None:
        addresses = self._watchers.pop(job_id, None)
        if addresses and self.on_concluded is not None:
            try:
                self.on_concluded(job_id, sorted(addresses))
            except Exception as exc:  # best effort: followers also poll
                log.warning("queue.notify_failed", job=job_id, error=str(exc))

    @property
    def busy(self) -> int:
        """Attempts running now."""
        return len(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Run the workers until *stop* is set, then stop them at item boundaries.

        The workers start even if the database does not answer yet (locked, full,
        unreachable): their claims are retried every poll, and the start-up housekeeping
        (registering this process, ending the leases of dead local processes) is retried by
        the node heartbeat until it succeeds.
        """
        registered = await self._start_up()
        tasks = [
            asyncio.create_task(self._worker(i), name=f"worker-{i}")
            for i in range(self.settings.workers)
        ]
        heartbeat = asyncio.create_task(self._node_heartbeat(registered), name="node-heartbeat")
        await stop.wait()
        self._stopping = True
        self._wake.set()
        for flag in list(self._running.values()):
            flag.set(StopReason.SHUTDOWN)
        await asyncio.gather(*tasks, return_exceptions=True)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        self.executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.repo.node_stopped, self.owner)

    async def _start_up(self) -> bool:
        """Register this process and end dead local leases; False if the database failed."""
        try:
            await asyncio.to_thread(self.repo.node_started, self.owner, self.node_name, __version__)
            await asyncio.to_thread(self._expire_dead_local_leases)
        except Exception as exc:
            log.warning("queue.start_up_deferred", error=str(exc).splitlines()[0])
            return False
        return True

    def _expire_dead_local_leases(self) -> None:
        dead = dead_local_owners(self.repo.lease_owners())
        count = self.repo.expire_leases(dead, "its process on this host is gone")
        if count:
            log.info("queue.leases_recovered", jobs=count, owners=len(dead))

    async def _node_heartbeat(self, registered: bool = True) -> None:
        while not registered:
            await asyncio.sleep(1)
            registered = await self._start_up()
        while True:
            await asyncio.sleep(10)
            try:
                await asyncio.to_thread(self.repo.node_heartbeat, self.owner)
            except Exception as exc:  # the database may be briefly unavailable
                log.warning("queue.heartbeat_failed", error=str(exc).splitlines()[0])

    # -- one worker ------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        while not self._stopping:
            try:
                job = await self._claim()
            except Exception as exc:
                log.warning("queue.claim_failed", error=str(exc).splitlines()[0])
                job = None
            if job is None:
                if not self._claim_now:  # else a wake came during the claim: look again
                    self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                continue
            try:
                await self._execute(job)
            except Exception as exc:  # a worker must survive anything one job does
                log.exception("queue.worker_error", job=job.id, error=str(exc).splitlines()[0])
            finally:
                self._active_peers[job.peer] -= 1
                self.wake()  # a peer slot was freed
                self._concluded(job.id)

    async def _claim(self) -> Job | None:
        async with self._claim_lock:
            if self._stopping:
                return None
            since_empty = time.monotonic() - self._last_empty
            if not self._claim_now and since_empty < self.settings.poll_interval * 0.9:
                return None  # another idle worker just found nothing
            self._claim_now = False
            registry = self.peers()
            full = [
                name
                for name, count in self._active_peers.items()
                if count >= self._peer_limit(registry, name)
            ]
            job = await asyncio.to_thread(
                self.repo.claim,
                self.owner,
                self.node_name,
                exclude_peers=full,
                kinds=list(self.operations),
            )
            if job is not None:
                self._active_peers[job.peer] += 1
                self._claim_now = True  # there may be more: the next idle worker looks too
                self._wake.set()
            else:
                self._last_empty = time.monotonic()
            return job

    @staticmethod
    def _peer_limit(registry: PeerRegistry, name: str) -> int:
        try:
            return registry.get(name).config.max_associations
        except NotFound:
            return 1

    async def _execute(self, job: Job) -> None:
        jlog = log.bind(**job.log_context())
        if job.attempts > job.max_attempts:
            message = (
                f"ran out of attempts: attempt {job.attempts - 1} was interrupted "
                "(node stopped or lost its lease)"
            )
            await self._record(
                jlog, self.repo.finish, job.id, self.owner, JobState.FAILED, error=message
            )
            jlog.warning("job.failed", reason=message)
            return
        try:
            peer = self.peers().get(job.peer)
        except NotFound:
            # The CLI that queued the job knew the peer: its file was probably added after this
            # node loaded its peers. A transient failure gives the admin time to reload.
            result = AttemptResult(
                Outcome.TRANSIENT,
                error=f"peer {job.peer!r} is not loaded in the running node: add "
                f"{job.peer}.yaml to peers_dir and reload it (systemctl reload ctnode)",
            )
            await self._record(jlog, self._conclude, job, result, StopFlag(), jlog)
            return
        flag = StopFlag()
        if job.cancel_requested:
            flag.set(StopReason.CANCELLED)
        self._running[job.id] = flag
        jlog.info("job.attempt_started", max_attempts=job.max_attempts)
        heartbeat = asyncio.create_task(self._heartbeat(job, flag))
        attempt = Attempt(job, peer, self.owner, self.repo, flag, jlog)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self.executor, _run_with_context, self.operations[job.kind], attempt
            )
        except Exception as exc:  # a bug in an operation must not kill the worker
            if is_unavailable(exc):
                reason = str(getattr(exc, "orig", exc)).splitlines()[0]
                jlog.warning(
                    "job.attempt_interrupted", error=f"index database unavailable: {reason}"
                )
                error = f"index database unavailable: {reason}"
            else:
                jlog.exception("job.attempt_crashed", error=str(exc))
                error = f"internal error: {exc}"
            result = AttemptResult(Outcome.TRANSIENT, error=error)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._running.pop(job.id, None)
        await self._record(jlog, self._conclude, job, result, flag, jlog)
        self.attempts_finished += 1
        if self.on_attempt is not None:
            self.on_attempt(job.kind.value, result.outcome.value)

    async def _record(
        self, jlog: Any, write: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """Run a job's final write (in a thread), retrying while the database is unavailable.

        Gives up only when the pool is stopping (the next start expires this process's
        leases) or on an error that is not about availability (logged; the worker goes on).
        """
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(write, *args, **kwargs)
                return
            except Exception as exc:
                if not is_unavailable(exc):
                    jlog.exception("job.record_failed", error=str(exc).splitlines()[0])
                    return
                if self._stopping:
                    jlog.warning(
                        "job.record_abandoned",
                        error=str(exc).splitlines()[0],
                        reason="node stopping; the lease is expired at the next start",
                    )
                    return
                jlog.warning(
                    "job.record_retry", error=str(exc).splitlines()[0], delay=round(delay, 1)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat(self, job: Job, flag: StopFlag) -> None:
        interval = self.repo.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                ours, cancel = await asyncio.to_thread(self.repo.renew, job.id, self.owner)
            except Exception as exc:
                log.warning("job.lease_renew_failed", job=job.id, error=str(exc).splitlines()[0])
                continue
            if not ours:
                flag.set(StopReason.LEASE_LOST)
                log.warning("job.lease_lost", job=job.id)
                return
            if cancel:
                flag.set(StopReason.CANCELLED)

    def _conclude(self, job: Job, result: AttemptResult, flag: StopFlag, jlog: Any) -> None:
        """Apply the attempt's outcome (fenced: nothing happens if the lease was lost)."""
        repo, owner = self.repo, self.owner
        fields = {"status": result.status, "error": result.error}
        outcome = result.outcome
        if outcome is Outcome.STOPPED:
            if flag.reason is StopReason.CANCELLED:
                repo.finish(
                    job.id,
                    owner,
                    JobState.CANCELLED,
                    result=result.result,
                    message="cancelled by user",
                    status=result.status,
                )
                jlog.info("job.cancelled")
            elif flag.reason is StopReason.SHUTDOWN:
                repo.release(job.id, owner, "node shutting down; resumes at next start")
                jlog.info("job.released", reason="shutdown")
            else:
                jlog.warning("job.abandoned", reason=flag.reason)
            return
        if outcome is Outcome.DONE:
            if repo.finish(
                job.id,
                owner,
                JobState.SUCCEEDED,
                result=result.result,
                status=result.status,
                message=result.message,
            ):
                jlog.info("job.succeeded", **_loggable(result.result))
            return
        if outcome is Outcome.WAIT:
            if repo.wait_until(
                job.id,
                owner,
                result.wait_seconds,
                message=result.message or "waiting",
                progress=result.result,
                claimed_not_before=job.not_before,
            ):
                jlog.info("job.waiting", seconds=result.wait_seconds)
            return
        policy = RetryPolicy.from_json(job.retry_policy)
        error = result.error or "unknown error"
        decision = decide(policy, job.attempts, transient=outcome is Outcome.TRANSIENT, error=error)
        if isinstance(decision, GiveUp):
            if repo.finish(
                job.id,
                owner,
                JobState.FAILED,
                status=result.status,
                error=decision.reason,
                result=result.result,
            ):
                jlog.warning("job.failed", reason=decision.reason, **fields)
            return
        if repo.schedule_retry(
            job.id, owner, decision.delay, status=result.status, error=error, result=result.result
        ):
            jlog.info("job.retry_scheduled", delay=round(decision.delay, 1), **fields)
