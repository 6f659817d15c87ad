"""The systemd notify protocol (``sd_notify(3)``), in the standard library only.

A service started with ``Type=notify`` finds the address of systemd's datagram socket in
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and sends newline-separated
``KEY=VALUE`` assignments to it: ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=…``,
``WATCHDOG=1``. Without ``NOTIFY_SOCKET`` every method is a no-op, so the daemon calls them
unconditionally. Sending never raises into the daemon and never blocks the event loop (the socket
is non-blocking; a datagram that cannot be sent is dropped): the first failure is logged as
``sdnotify.failed``, later ones are counted silently.

Logging goes through the standard library (``logging``), which ``ctnode.logs`` bridges into the
same structured output as everything else.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

_log = logging.getLogger("ctnode.sdnotify")

#: ``sun_path`` is 108 bytes on Linux, including the terminating NUL of a file system path.
_MAX_PATH_BYTES = 107


def parse_address(value: str) -> str | bytes | None:
    """The socket address for a ``NOTIFY_SOCKET`` value, or None if it is not one we can use.

    ``/path`` is a file system socket; ``@name`` is ``\\0name`` in the abstract namespace.
    (systemd 254's ``vsock:`` addresses are not supported; the daemon then runs un-notified.)
    """
    if len(value) < 2:
        return None
    if value[0] == "@":
        return b"\0" + value[1:].encode()
    if value[0] == "/" and len(value.encode()) <= _MAX_PATH_BYTES:
        return value
    return None


def watchdog_interval_from(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1``, or None if no watchdog applies.

    ``WATCHDOG_USEC`` is the interval in microseconds; when ``WATCHDOG_PID`` is set the
    watchdog applies only to that process (not, say, to a child that inherited the variable).
    """
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def one_line(text: str) -> str:
    """*text* with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(text.split())


class Notifier:
    """Sends notifications to the service manager; a no-op without a notify socket."""

    def __init__(self, address: str | None, *, watchdog_interval: float | None = None) -> None:
        self.address = address
        self._target = parse_address(address) if address else None
        self._watchdog_interval = watchdog_interval if self._target is not None else None
        self._socket: socket.socket | None = None
        self._failed = False
        #: Datagrams that could not be sent (the first one was logged).
        self.failures = 0
        if address and self._target is None:
            self._fail(f"NOTIFY_SOCKET {address!r} is not a socket path or @abstract name")

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` in *env*."""
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        interval = watchdog_interval_from(env, pid)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval=interval)

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to send to."""
        return self._target is not None

    # -- the messages ----------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete; optionally with a status line."""
        return self.send("READY=1", *self._status_field(status))

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (what ``Type=notify-reload`` expects)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1", *self._status_field(status))

    def status(self, text: str) -> bool:
        """``STATUS=…``: a one-line summary shown by ``systemctl status``."""
        return self.send(*self._status_field(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and healthy."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds within which a ``WATCHDOG=1`` is expected, or None without a watchdog."""
        return self._watchdog_interval

    # -- transport -------------------------------------------------------------------------

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={one_line(text)}",)

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` *assignments* in one datagram; True if it was sent."""
        if self._target is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(payload, self._target)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _fail(self, error: str) -> None:
        self.failures += 1
        if not self._failed:
            self._failed = True
            _log.warning(
                "sdnotify.failed",
                extra={
                    "notify_socket": self.address,
                    "error": error,
                    "note": "further failures are not logged",
                },
            )

    def close(self) -> None:
        """Close the socket (sending again reopens it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
