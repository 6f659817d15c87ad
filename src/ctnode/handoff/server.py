"""The node's side of the hand-off: submissions from ``ctnode push`` over a local stream socket.

The socket is ``<data_dir>/run/submit.sock``, mode 0600 (bound in a private directory, then moved
into place, so it is never reachable with wider permissions). That mode keeps other users out,
but it is not what the node relies on: every connection is checked with the kernel's
credentials of the connecting process (SO_PEERCRED): only a process of the node's own user and
group, with the same supplementary groups, in the same mount namespace and with the same root
directory — one that reads the same files the node reads — is served. Anyone else is told to
fall back (the command then runs the ordinary path, with its own rights); another user is also
logged as a warning (``handoff.refused``), a process of the node's user that sees other files
(a node under systemd's ``PrivateTmp=``, say) only as ``handoff.fallback``.

For a served command the node loads the settings as the command would (``load_settings`` with
its ``--config``, its ``CTNODE_*`` variables and ``STATE_DIRECTORY``, its working directory) and
goes on only when they name this node's database and data dir, and paths in them do not depend on
the working directory (or both have the same); else ``fallback``. Then, after the command's
``submit``, the job is written by ``submit.submit_push`` (the same validation, the same errors,
the job row committed before the command hears of it) and finished by ``follow.finish_job`` with
a display that sends each reading to the command: the command prints exactly what the ordinary
path prints, and exits with the same code.

Connections are served by a fixed set of threads (``queue.workers`` of them, started with the
listener); when all are busy, a new command is told to fall back. A command that goes away
stops the following (the job goes on); a node that stops tells its followers to ``detach``
(they follow the job through the database).
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ctnode.config import Settings, load_settings
from ctnode.errors import ConfigError, CtnodeError
from ctnode.follow import finish_job, finish_push_and_commit, watch
from ctnode.handoff.credentials import (
    ANOTHER_USER,
    identity_of,
    own_identity,
    peer_credentials,
    refusal,
)
from ctnode.handoff.request import PushRequest
from ctnode.handoff.wire import Closed, Message, Reader, send, submit_address
from ctnode.logs import get_logger
from ctnode.progress import Display, Snapshot
from ctnode.queue.repository import JobRepository
from ctnode.submit import EXISTING, submit_push, wake_address

log = get_logger("ctnode.handoff")

#: Seconds a command has to send its request, and then ``submit``.
REQUEST_TIMEOUT = 5.0
#: Seconds a send to a command may block (a command that stopped reading is gone).
SEND_TIMEOUT = 60.0


def _cwd_free(settings: Settings) -> bool:
    """Whether what a push reads from *settings* means the same from any working directory:
    the data dir, the peers dir, the database."""
    url = settings.database.url
    relative_sqlite = (
        url is not None
        and url.startswith("sqlite")
        and not url.partition("://")[2].startswith("//")
    )
    return (
        settings.storage.data_dir.is_absolute()
        and settings.peers_dir.is_absolute()
        and not relative_sqlite
    )


# ------------------------------------------------------------------ one connection


class ClientGone(Exception):
    """The command closed its end (or can no longer be written to)."""


class Detached(Exception):
    """The node is stopping: the command follows the job by itself."""


class _Connection:
    """A served command: sending to it, and noticing it went away."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.stopping = stopping

    def send(self, message: Message) -> None:
        try:
            send(self.sock, message)
        except OSError as exc:
            raise ClientGone from exc

    def check(self) -> None:
        """Raise Detached when the node stops, ClientGone when the command went away (it sends
        nothing after ``submit``: anything readable is its end)."""
        if self.stopping.is_set():
            raise Detached
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError) as exc:
            raise ClientGone from exc
        if readable:
            raise ClientGone

    @contextmanager
    def display(self, job_id: int, out: TextIO) -> Iterator[Display]:
        """The follow display of ``follow.follow``: each reading sent to the command."""
        self.check()
        self.send({"t": "follow", "job": job_id})
        yield _RemoteDisplay(self)
        self.send({"t": "unfollow"})


class _RemoteDisplay:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.last: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self.connection.check()
        if snapshot != self.last:
            self.connection.send({"t": "show", **snapshot.to_json()})
            self.last = snapshot

    def warn(self, text: str) -> None:
        self.connection.send({"t": "warn", "text": text})


# ------------------------------------------------------------------ the server


class HandoffServer:
    """The listener and its threads (see the module docstring)."""

    def __init__(self, settings: Settings, repo: JobRepository, *, threads: int) -> None:
        self.settings = settings
        self.repo = repo
        self.watch = watch(repo.engine)
        self.address = submit_address(settings.storage.run_dir)
        self.threads = threads
        self.sock: socket.socket | None = None
        self.stopping = threading.Event()
        self._inode: int | None = None
        self._own = own_identity()
        self._pending: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- life cycle

    def open(self) -> bool:
        """Listen (replacing a stale socket file) and start the threads; False if binding
        failed (commands then take the ordinary path)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if isinstance(self.address, str):
                self._bind_file(sock, Path(self.address))
            else:
                sock.bind(self.address)
            sock.listen(16)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return False
        self.sock = sock
        for number in range(self.threads):
            thread = threading.Thread(
                target=self._serve_forever, name=f"handoff-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return True

    def _bind_file(self, sock: socket.socket, path: Path) -> None:
        """Bind *sock* to *path* with mode 0600: bound in a private directory, chmod-ed, then
        renamed over whatever stale socket was there."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
        private = Path(tempfile.mkdtemp(prefix=".handoff-", dir=path.parent))
        try:
            staged = private / "s"
            sock.bind(str(staged))
            os.chmod(staged, 0o600)
            os.replace(staged, path)
        finally:
            with contextlib.suppress(OSError):
                (private / "s").unlink()
            with contextlib.suppress(OSError):
                private.rmdir()
        self._inode = path.lstat().st_ino

    def fileno(self) -> int:
        """The listening socket's descriptor (for ``loop.add_reader``)."""
        assert self.sock is not None
        return self.sock.fileno()

    def accept(self) -> None:
        """Accept every pending connection (non-blocking; from the event loop): each goes to a
        free thread, or is told to fall back when none is free."""
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("handoff.accept_failed", error=str(exc))
                return
            with self._lock:
                free = self._busy < self.threads and not self.stopping.is_set()
                if free:
                    self._busy += 1
            if free:
                self._pending.put(conn)
                continue
            log.info("handoff.fallback", pid=None, reason="busy")
            with conn:  # a fresh socket's buffer takes this at once
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    send(conn, {"t": "fallback", "reason": "busy"})

    def stop(self) -> None:
        """Stop listening (the socket file goes) and tell every follower to detach."""
        self.stopping.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                if isinstance(self.address, str):
                    path = Path(self.address)
                    if path.lstat().st_ino == self._inode:  # not replaced by another node since
                        path.unlink()
            self.sock.close()
            self.sock = None
        for _ in self._threads:
            self._pending.put(None)

    def wait(self, timeout: float) -> bool:
        """After ``stop``: wait up to *timeout* s in all for the threads to end; True if they
        did."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    # -- serving

    def _serve_forever(self) -> None:
        while (conn := self._pending.get()) is not None:
            try:
                with conn:
                    self._serve(conn)
            except Exception as exc:  # a bug: the node keeps running
                log.exception("handoff.crashed", error=str(exc))
            finally:
                with self._lock:
                    self._busy -= 1

    def _serve(self, conn: socket.socket) -> None:
        started = time.monotonic()
        conn.setblocking(True)
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            pid, uid, gid = peer_credentials(conn)
        except (OSError, AttributeError):
            self._fall_back(conn, "no peer credentials", None)
            return
        reason = refusal(identity_of(pid, uid, gid), self._own)
        if reason == ANOTHER_USER:
            log.warning("handoff.refused", pid=pid, uid=uid, gid=gid, reason=reason)
            with contextlib.suppress(OSError):
                send(conn, {"t": "fallback", "reason": reason})
            return
        if reason is not None:  # the node would not read the files the command names
            self._fall_back(conn, reason, pid)
            return
        reader = Reader(conn)
        try:
            request = PushRequest.from_message(reader.read())
        except ValueError:
            self._fall_back(conn, "not a request of this ctnode", pid)
            return
        except (OSError, Closed):
            return
        settings, why = self._settings_for(request)
        if settings is None:
            self._fall_back(conn, why, pid)
            return
        try:
            send(conn, {"t": "ready"})
            if reader.read().get("t") != "submit":
                return
        except (OSError, Closed):
            return  # the command gave up: it runs the ordinary path, nothing was written
        conn.settimeout(SEND_TIMEOUT)
        self._submit(_Connection(conn, self.stopping), settings, request, pid, started)

    def _fall_back(self, conn: socket.socket, reason: str, pid: int | None) -> None:
        log.info("handoff.fallback", pid=pid, reason=reason)
        with contextlib.suppress(OSError):
            send(conn, {"t": "fallback", "reason": reason})

    def _settings_for(self, request: PushRequest) -> tuple[Settings | None, str]:
        """The command's settings, if this node may submit with them; else why not."""
        try:
            settings = load_settings(
                Path(request.config) if request.config is not None else None,
                env=request.env,
                cwd=request.cwd,
            )
        except (CtnodeError, OSError):
            return None, "the settings do not load"  # the command says why itself
        own = self.settings
        try:
            same_cwd = request.cwd == Path(os.getcwd())
        except OSError:  # the node's working directory is gone
            same_cwd = False
        if not same_cwd and not (_cwd_free(settings) and _cwd_free(own)):
            return None, "paths in the settings depend on the working directory"
        if (
            settings.database != own.database
            or settings.database_url != own.database_url
            or settings.storage.run_dir.absolute() != own.storage.run_dir.absolute()
        ):
            return None, "the settings name another database or data dir"
        return settings, ""

    def _submit(
        self,
        connection: _Connection,
        settings: Settings,
        request: PushRequest,
        pid: int,
        started: float,
    ) -> None:
        """Submit, then finish as ``ctnode push`` does, every line going to the command
        (*started*: when the connection was taken, for the log)."""
        job_id: int | None = None
        try:
            submission = submit_push(
                settings,
                peer=request.peer,
                paths=[Path(p) for p in request.paths],
                study=request.study,
                series=request.series,
                commit=request.commit,
                priority=request.priority,
                idempotency_key=request.idempotency_key,
                repository=self.repo,
                wake=False,  # finishing wakes the node (following it does too)
                report=lambda line: connection.send({"t": "stderr", "text": f"ctnode: {line}"}),
                cwd=request.cwd,
            )
            job_id = submission.job.id
            log.info(
                "handoff.submitted",
                job=job_id,
                created=submission.created,
                peer=request.peer,
                items=submission.job.items.total,
                pid=pid,
                wait=request.wait,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            if not submission.created:
                connection.send({"t": "stderr", "text": f"ctnode: {EXISTING.format(job_id)}"})
            extra = {"skipped": [{"path": s.path, "reason": s.reason} for s in submission.skipped]}
            connection.send({"t": "job", "id": job_id, "extra": extra})
            wake = wake_address(settings)
            if request.commit and request.wait:
                finished = finish_push_and_commit(
                    self.watch,
                    job_id,
                    as_json=request.as_json,
                    wake=wake,
                    extra=extra,
                    display=connection.display,
                )
            else:
                finished = finish_job(
                    self.watch,
                    job_id,
                    wait=request.wait,
                    as_json=request.as_json,
                    wake=wake,
                    extra=extra,
                    display=connection.display,
                )
            connection.send({"t": "end", "stdout": list(finished.lines), "code": finished.code})
        except ClientGone:
            log.info("handoff.client_gone", job=job_id, pid=pid)
        except Detached:
            log.info("handoff.detached", job=job_id, pid=pid)
            with contextlib.suppress(ClientGone):
                connection.send({"t": "detach"})
        except CtnodeError as exc:
            log.info("handoff.rejected", job=job_id, pid=pid, error=str(exc))
            problems = exc.problems if isinstance(exc, ConfigError) else []
            _error(connection, str(exc), problems, exc.exit_code)
        except OSError as exc:
            log.info("handoff.rejected", job=job_id, pid=pid, error=str(exc))
            _error(connection, str(exc), [], 1)


def _error(connection: _Connection, message: str, problems: list[str], code: int) -> None:
    with contextlib.suppress(ClientGone):
        connection.send({"t": "error", "message": message, "problems": problems, "code": code})
