"""Closing a connection: the requestor does not wait for a peer that waits for it."""

from __future__ import annotations

import socket
import time

from ctnode.ul.transport import close_gracefully


def test_close_at_once_drains_what_arrived() -> None:
    """With linger 0 the socket is closed at once (the peer, an acceptor in Sta13, is waiting
    for exactly that), after reading what had already arrived so the close sends a FIN, not a
    RST that could destroy our last PDU at the peer."""
    ours, theirs = socket.socketpair()
    theirs.sendall(b"late bytes")
    started = time.monotonic()
    close_gracefully(ours, linger=0)
    assert time.monotonic() - started < 0.02
    assert ours.fileno() == -1
    assert theirs.recv(10) == b""  # an orderly end of stream, not ECONNRESET
    theirs.close()


def test_linger_waits_for_the_peer_to_close_first() -> None:
    """With a linger the socket waits (bounded) for the peer's close: used after sending our
    own last PDU (A-ABORT), so the peer reads it before the connection goes."""
    ours, theirs = socket.socketpair()
    started = time.monotonic()
    close_gracefully(ours, linger=0.2)
    assert 0.15 <= time.monotonic() - started < 1.0
    theirs.close()
