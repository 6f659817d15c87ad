"""The hand-off socket and what goes over it: where the node listens, and the messages.

``<data_dir>/run/submit.sock`` (an abstract address derived from that path when it is too long
for a UNIX address, as the wake channel does). A SOCK_STREAM connection carries one submission:
JSON objects, one per line, each with a type ``t``:

* command → node: ``push`` (the request: the command line's values, its ``--config``, its
  ``CTNODE_*`` variables and ``STATE_DIRECTORY``, its working directory, its ctnode version),
  then ``submit`` once the node said ``ready`` (a command that gave up never sends it, so the
  node never submits for a command that then ran the ordinary path).
* node → command: ``fallback`` (run the ordinary path: nothing was written) or ``ready``; then
  ``stderr`` lines, ``job`` (the id, once committed), the followed job's ``follow``/``show``/
  ``warn``/``unfollow``, and one of ``end`` (stdout lines and exit code), ``error`` (a ctnode
  error line, its problems and exit code) or ``detach`` (the node is stopping: follow the job
  through the database).

Standard library only: the command imports this before anything else.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

#: ``<data_dir>/run/submit.sock``.
SUBMIT_SOCKET = "submit.sock"
#: Longest filesystem path a UNIX socket address can hold (Linux ``sun_path`` less the NUL).
MAX_PATH_BYTES = 107
#: Bumped when the messages change: a node answers only its own version (else ``fallback``).
PROTOCOL = 1
#: Longest message line accepted (a request lists its paths).
MAX_LINE = 16 << 20

Address = str | bytes
Message = dict[str, Any]


def submit_address(run_dir: Path) -> Address:
    """The node's hand-off address for a data dir's run directory: the socket file, or — when
    its path is too long for a UNIX address — an abstract address derived from that path (both
    sides compute the same)."""
    path = run_dir.absolute() / SUBMIT_SOCKET
    if len(os.fsencode(path)) <= MAX_PATH_BYTES:
        return str(path)
    import hashlib

    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    return b"\0ctnode-submit-" + digest.encode()


def encode(message: Message) -> bytes:
    """One message as sent: compact JSON and a newline."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def send(sock: socket.socket, message: Message) -> None:
    """Send one message (OSError if the other end is gone)."""
    sock.sendall(encode(message))


class Closed(Exception):
    """The other end closed the connection (or sent something that is not a message)."""


class Reader:
    """Messages read from a stream socket, one JSON object per line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def read(self) -> Message:
        """The next message; Closed at the end of the stream or on a malformed line. The
        socket's timeout applies to each receive (TimeoutError)."""
        searched = 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            if len(self._buffer) > MAX_LINE:
                raise Closed("message too long")
            searched = len(self._buffer)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise Closed("end of stream")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise Closed("not JSON") from exc
        if not isinstance(message, dict) or not isinstance(message.get("t"), str):
            raise Closed("not a message")
        return message
