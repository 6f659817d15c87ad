"""A stand-in for systemd's notify socket: a real ``AF_UNIX`` datagram socket the test binds."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Message:
    """One datagram: its ``KEY=VALUE`` fields and when it arrived (``time.monotonic()``)."""

    fields: dict[str, str]
    received: float
    raw: bytes

    def has(self, key: str, value: str | None = None) -> bool:
        """True if the message sets *key* (to *value*, when given)."""
        return key in self.fields and (value is None or self.fields[key] == value)


def parse(datagram: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines of one notification."""
    fields = {}
    for line in datagram.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r} in {datagram!r}"
        fields[key] = value
    return fields


class NotifySocket:
    """Binds a datagram socket at *address* (a path, or ``@name``) and records every message."""

    def __init__(self, address: Path | str) -> None:
        self.address = str(address)
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(target)
        self.sock.settimeout(0.2)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            message = Message(parse(data), time.monotonic(), data)
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def snapshot(self) -> list[Message]:
        """Every message so far."""
        with self._cond:
            return list(self.messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self.messages.clear()

    def wait_for(
        self,
        key: str,
        value: str | None = None,
        *,
        after: float = 0.0,
        timeout: float = 30,
        where: Callable[[Message], bool] | None = None,
    ) -> Message:
        """The first message received after *after* that sets *key* (to *value*)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if (
                        message.received >= after
                        and message.has(key, value)
                        and (where is None or where(message))
                    ):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(repr(m.raw) for m in self.messages[-20:])
                    raise TimeoutError(f"no {key}={value} within {timeout} s; last:\n{seen}")
                self._cond.wait(left)

    def between(
        self, key: str, start: float, end: float, value: str | None = None
    ) -> list[Message]:
        """Messages setting *key* received in [*start*, *end*)."""
        return [m for m in self.snapshot() if start <= m.received < end and m.has(key, value)]

    def close_reader(self) -> None:
        """Stop reading (the socket stays bound, so its receive queue fills up)."""
        self._closed.set()
        self._thread.join(timeout=5)

    def close(self) -> None:
        """Stop recording and close (and unlink) the socket."""
        self._closed.set()
        self.sock.close()
        self._thread.join(timeout=5)
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                Path(self.address).unlink()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
