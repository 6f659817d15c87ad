"""The wake channel: a CLI that has just committed a job tells the local node at once.

The node listens on a UNIX datagram socket, ``<data_dir>/run/wake.sock``. After committing a job,
``ctnode push`` (and every command that submits a job) sends one datagram there; the node's idle
workers then look for work at once instead of at their next poll (``queue.poll_interval``). The
datagram carries nothing the node trusts: the job itself is in the database, committed before
the datagram is sent, and a worker only ever claims from the database.

A command that follows its job (``--wait``) also names a socket of its own (an abstract UNIX
address ``\\0ctnode-follow-...``); the node sends one datagram there when an attempt of that job
ends, and the command reads the job again at once instead of at its next poll.

Everything here is best effort and silent: no node listening (not started, another host, a
long path), a full socket buffer or any other error leaves the job queued exactly as before, and
it is found by polling. Linux only (abstract addresses); elsewhere it degrades the same way.

Datagrams are ASCII: ``job <id>`` or ``job <id> <follow-address-hex>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import select
import socket
import stat
from collections.abc import Callable
from pathlib import Path

#: ``<data_dir>/run/wake.sock``.
WAKE_SOCKET = "wake.sock"
#: Longest filesystem path a UNIX socket address can hold (Linux ``sun_path`` less the NUL).
MAX_PATH_BYTES = 107
#: Abstract addresses the node will send follow notifications to.
FOLLOW_PREFIX = b"\0ctnode-follow-"
MAX_DATAGRAM = 512

Address = str | bytes


def wake_address(run_dir: Path) -> Address:
    """The node's wake address for a data dir's run directory: the socket file, or — when its
    path is too long for a UNIX address — an abstract address derived from that path (both sides
    compute the same)."""
    path = run_dir.absolute() / WAKE_SOCKET
    if len(os.fsencode(path)) <= MAX_PATH_BYTES:
        return str(path)
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    return b"\0ctnode-wake-" + digest.encode()


def encode(job_id: int, reply: bytes | None = None) -> bytes:
    """A wake datagram for *job_id* (asking for follow notifications at *reply*)."""
    text = f"job {job_id}"
    if reply is not None:
        text += " " + reply.hex()
    return text.encode("ascii")


def decode(data: bytes) -> tuple[int, bytes | None] | None:
    """(job id, follow address or None) of a datagram, or None if it is not one of ours."""
    try:
        parts = data.decode("ascii").split(" ")
        if len(parts) not in (2, 3) or parts[0] != "job" or not parts[1].isdigit():
            return None
        reply = bytes.fromhex(parts[2]) if len(parts) == 3 else None
    except (UnicodeDecodeError, ValueError):
        return None
    if reply is not None and not (reply.startswith(FOLLOW_PREFIX) and len(reply) <= 64):
        return None
    return int(parts[1]), reply


def poke(address: Address, job_id: int, reply: bytes | None = None) -> bool:
    """Tell the node at *address* that *job_id* was committed; False (silently) if nobody
    is listening or anything else failed."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(encode(job_id, reply), address)
    except OSError:
        return False
    return True


class FollowChannel:
    """The follower's end: an abstract datagram socket the node notifies when an attempt of a
    followed job ends. ``wait`` doubles as the follower's sleep between reads."""

    def __init__(self) -> None:
        self.address = FOLLOW_PREFIX + f"{os.getpid()}-{secrets.token_hex(6)}".encode()
        self.sock: socket.socket | None = None
        with contextlib.suppress(OSError, AttributeError):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(self.address)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    def wait(self, timeout: float) -> bool:
        """Sleep up to *timeout* seconds; True as soon as a notification arrived (all pending
        ones are consumed)."""
        if self.sock is None:
            select.select([], [], [], max(timeout, 0))
            return False
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        got = False
        if ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self.sock.recv(MAX_DATAGRAM):
                    got = True
        return got

    def close(self) -> None:
        """Close the socket (the abstract address goes with it)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> FollowChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WakeListener:
    """The node's end: a non-blocking datagram socket read by the event loop.

    *on_job* is called with (job id, follow address or None) for every valid datagram.
    """

    def __init__(self, run_dir: Path, on_job: Callable[[int, bytes | None], None]) -> None:
        self.run_dir = run_dir
        self.address = wake_address(run_dir)
        self.on_job = on_job
        self.sock: socket.socket | None = None
        self._out: socket.socket | None = None
        self._inode: int | None = None

    def open(self) -> bool:
        """Bind the socket (replacing a stale socket file); False if that failed (the node
        then works by polling alone)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if isinstance(self.address, str):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                path = Path(self.address)
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
            sock.bind(self.address)
            sock.setblocking(False)
            if isinstance(self.address, str):
                self._inode = Path(self.address).lstat().st_ino
        except OSError:
            sock.close()
            return False
        self.sock = sock
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        return True

    def fileno(self) -> int:
        """The listening socket's descriptor (for ``loop.add_reader``)."""
        assert self.sock is not None
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every pending datagram, calling *on_job* for each valid one; how many."""
        count = 0
        while self.sock is not None:
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            decoded = decode(data)
            if decoded is not None:
                count += 1
                self.on_job(*decoded)
        return count

    def notify(self, job_id: int, addresses: list[bytes]) -> None:
        """Tell followers that an attempt of *job_id* ended (best effort)."""
        if self._out is None:
            return
        for address in addresses:
            with contextlib.suppress(OSError):
                self._out.sendto(encode(job_id), address)

    def close(self) -> None:
        """Close and remove the socket file (only if it is still ours)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            if isinstance(self.address, str):
                path = Path(self.address)
                if path.lstat().st_ino == self._inode:  # not replaced by another node since
                    path.unlink()
        self.sock.close()
        self.sock = None
