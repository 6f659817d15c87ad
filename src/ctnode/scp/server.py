"""The listener: accept loop, per-association threads, limits, TLS, orderly stop.

The accept loop does nothing that can block: it accepts, decides from counters and the peers'
addresses whether the connection is admitted (source address checked before any PDU is read;
association limits), and hands the socket to a new thread. Everything else — the TLS handshake
(with a deadline on the whole of it), the A-ASSOCIATE-RJ for a connection that was not admitted,
and the association itself — happens in that thread. A flood beyond the hard caps is closed at
once, without a thread or a reply.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ctnode.config import NodeSettings
from ctnode.logs import get_logger
from ctnode.peers import PeerRegistry, is_self_address, normalize_address
from ctnode.scp.handlers import ScpApplication
from ctnode.tls import describe_failure, server_handshake
from ctnode.ul import pdu as P
from ctnode.ul.acceptor import (
    AcceptorLimits,
    AssociationInfo,
    new_association_id,
    serve_association,
)
from ctnode.ul.transport import close_gracefully, set_socket_options

log = get_logger("ctnode.scp")


#: Longest wait for the requestor's first bytes before an early A-ASSOCIATE-RJ (_reject_early).
EARLY_REJECT_WAIT = 2.0
#: A-ASSOCIATE-RJ for a node or address at its association limit: transient, local limit.
_LIMIT_RJ = (P.RJ_TRANSIENT, P.RJ_SOURCE_PRESENTATION, P.RJ_LOCAL_LIMIT_EXCEEDED)


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    address: str
    admitted: bool
    thread: threading.Thread | None = None


@dataclass(frozen=True, slots=True)
class _Rejection:
    """A-ASSOCIATE-RJ decided when the connection was accepted (before any PDU is read)."""

    rj: tuple[int, int, int]
    why: str


class ScpServer:
    """Listens on ``node.bind:node.port`` (and the TLS port) and serves associations."""

    def __init__(
        self,
        node: NodeSettings,
        app: ScpApplication,
        peers: Callable[[], PeerRegistry],
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.node = node
        self.app = app
        self.peers = peers
        self.tls_context = tls_context
        self._listeners: list[tuple[socket.socket, bool]] = []
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}
        #: Every connection with a thread (admitted or being rejected), per source address.
        self._per_address: Counter[str] = Counter()
        #: Connections admitted to association negotiation: what the limits count.
        self._admitted = 0
        self._admitted_per_address: Counter[str] = Counter()
        #: Connections closed at once because a hard cap was reached (floods).
        self.dropped = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self.total_associations = 0
        self.last_loop = time.monotonic()

    # -- life cycle -------------------------------------------------------------------

    def _listen(self, port: int, tls: bool) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.node.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.node.bind, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"cannot listen on {self.node.bind}:{port}: {exc.strerror} "
                "(another DICOM node on this port? change node.port)",
            ) from exc
        sock.listen(128)
        sock.setblocking(False)
        self._listeners.append((sock, tls))
        self._selector.register(sock, selectors.EVENT_READ, tls)
        return sock

    def start(self) -> None:
        """Bind the listeners and start the accept loop (OSError if a port is taken)."""
        self._listen(self.node.port, False)
        if self.tls_context is not None:
            self._listen(self.node.tls.port, True)
        self._thread = threading.Thread(target=self._accept_loop, name="scp-accept", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound plain port (useful when configured as 0)."""
        return int(self._listeners[0][0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port, if TLS is enabled."""
        for sock, tls in self._listeners:
            if tls:
                return int(sock.getsockname()[1])
        return None

    @property
    def listening(self) -> bool:
        """True while the accept loop runs."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def active(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._connections)

    def stop_accepting(self) -> None:
        """Close the listeners; associations in progress continue."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock, _ in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
        self._listeners.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for every association to end; True if they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active == 0:
                return True
            time.sleep(0.05)
        return self.active == 0

    def abort_all(self) -> None:
        """Cut every remaining connection (their threads clean up and exit)."""
        with self._lock:
            connections = list(self._connections.values())
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for conn in connections:
            if conn.thread is not None:
                conn.thread.join(timeout=5)

    # -- accept -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            self.last_loop = time.monotonic()
            for key, _ in self._selector.select(timeout=0.5):
                if key.fileobj is self._wake_r:
                    continue
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                try:
                    sock, addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    log.warning("scp.accept_failed", error=str(exc))
                    time.sleep(0.1)
                    continue
                self._spawn(sock, normalize_address(str(addr[0])), int(addr[1]), bool(key.data))

    def _verdict(self, address: str) -> _Rejection | None:
        """Why a new connection from *address* is refused, or None if it is admitted.

        Called with the lock held. Only admitted connections count towards the association
        limits, so connections being rejected (a flood, a port scanner) never push a legitimate
        device over them.
        """
        node = self.node
        if (
            not node.accept_unknown_callers
            and not is_self_address(address)
            and address not in self.peers().known_addresses
        ):
            return _Rejection(
                (P.RJ_PERMANENT, P.RJ_SOURCE_USER, P.RJ_CALLING_AE_NOT_RECOGNIZED),
                f"{address} is not the address of any configured peer",
            )
        if self._admitted >= node.max_associations:
            return _Rejection(_LIMIT_RJ, "association limit reached (node.max_associations)")
        if self._admitted_per_address[address] >= node.max_associations_per_address:
            return _Rejection(
                _LIMIT_RJ,
                f"{address} already has {node.max_associations_per_address} associations "
                "(node.max_associations_per_address)",
            )
        return None

    def _spawn(self, sock: socket.socket, address: str, port: int, tls: bool) -> None:
        sock.setblocking(True)
        set_socket_options(sock)
        # Beyond these, a connection is closed at once: no thread, no reply. The per-address one
        # keeps a single flooding address from using up the global one.
        hard_cap = self.node.max_associations * 2 + 16
        per_address_cap = self.node.max_associations_per_address * 2
        with self._lock:
            if len(self._connections) >= hard_cap or self._per_address[address] >= per_address_cap:
                self.dropped += 1
                sock.close()
                return
            info = AssociationInfo(new_association_id(), address, port, tls=tls)
            rejection = self._verdict(address)
            conn = _Connection(sock, address, admitted=rejection is None)
            self._connections[info.id] = conn
            self._per_address[address] += 1
            if conn.admitted:
                self._admitted += 1
                self._admitted_per_address[address] += 1
            self.total_associations += 1
        thread = threading.Thread(
            target=self._serve,
            args=(sock, info, rejection),
            name=f"assoc-{info.id}",
            daemon=True,
        )
        conn.thread = thread
        thread.start()

    def _serve(
        self, sock: socket.socket, info: AssociationInfo, rejection: _Rejection | None
    ) -> None:
        # Every log line from this thread (pydicom's, the stdlib's) carries the association.
        structlog.contextvars.bind_contextvars(association=info.id, peer_address=info.address)
        try:
            if info.tls:
                wrapped = self._handshake(sock, info)
                if wrapped is None:
                    return
                sock = wrapped
                with self._lock:
                    self._connections[info.id].sock = sock
            if rejection is not None:
                self._reject_early(sock, info, rejection.rj, rejection.why)
                return
            limits = AcceptorLimits(
                our_ae_title=self.node.ae_title,
                # a PACS calls us back (move results, commitment reports) by the AE title we
                # called it with
                also_ae_titles=frozenset(
                    p.config.local_ae_title for p in self.peers() if p.config.local_ae_title
                ),
                max_pdu_length=self.node.max_pdu_length,
                acse_timeout=self.node.timeouts.acse,
                network_timeout=self.node.timeouts.network,
                dimse_timeout=self.node.timeouts.dimse,
            )
            serve_association(sock, info, self.app, limits, self._stop.is_set)
        except Exception as exc:  # a bug must not kill the node; log it with context
            log.exception("scp.association_crashed", association=info.id, error=str(exc))
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            self._release(info)

    def _release(self, info: AssociationInfo) -> None:
        with self._lock:
            conn = self._connections.pop(info.id, None)
            address = info.address
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
            if conn is not None and conn.admitted:
                self._admitted -= 1
                self._admitted_per_address[address] -= 1
                if self._admitted_per_address[address] <= 0:
                    del self._admitted_per_address[address]

    def _handshake(self, sock: socket.socket, info: AssociationInfo) -> ssl.SSLSocket | None:
        """The TLS handshake, in the association's thread, bounded by handshake_timeout."""
        assert self.tls_context is not None
        try:
            return server_handshake(sock, self.tls_context, self.node.tls.handshake_timeout)
        except (ssl.SSLError, OSError) as exc:
            info.result = "tls_failed"
            info.detail = f"TLS handshake failed: {describe_failure(exc)}"
            with contextlib.suppress(OSError):
                sock.close()
            self.app.ended(info)
            return None

    def _reject_early(
        self,
        sock: socket.socket,
        info: AssociationInfo,
        rj: tuple[int, int, int],
        why: str,
    ) -> None:
        """A-ASSOCIATE-RJ decided before any PDU was read.

        The requestor's first bytes (its A-ASSOCIATE-RQ, read but never parsed) are awaited
        first, for at most ``EARLY_REJECT_WAIT`` seconds: an RJ that overtakes the request is
        taken for an abort by some stacks (pynetdicom among them), and a request arriving after
        our close would be answered with a TCP RST that can destroy the unread RJ.
        """
        with contextlib.suppress(OSError):
            sock.settimeout(min(self.node.timeouts.acse, EARLY_REJECT_WAIT))
            sock.recv(65536)
        with contextlib.suppress(OSError):
            sock.settimeout(2)
            sock.sendall(P.encode_associate_rj(*rj))
        info.result, info.detail = "rejected", why
        close_gracefully(sock, linger=0.5)
        self.app.ended(info)
