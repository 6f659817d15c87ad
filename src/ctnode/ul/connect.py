"""Opening an outbound association's transport connection: TCP (PS3.8 9.1.1, 9.2: the
requestor's TRANSPORT CONNECT), then TLS when the peer is configured for it (PS3.15 B.1, the
Basic TLS Secure Transport Connection Profile). Either failure is ``PeerUnreachable``, worded for
the administrator who has to fix it.
"""

from __future__ import annotations

import socket
import ssl

from ctnode.errors import PeerUnreachable
from ctnode.ul.transport import set_socket_options


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to *host*:*port* within *timeout* seconds, with ctnode's socket options."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise PeerUnreachable(f"cannot connect to {host}:{port}: {reason}") from exc
    set_socket_options(sock)
    return sock


def wrap_tls(
    raw: socket.socket, context: ssl.SSLContext, server_name: str, peer: str, timeout: float
) -> ssl.SSLSocket:
    """The TLS handshake over *raw* (closed if it fails), checking the certificate against
    *server_name*; *peer* (``host:port``) names the peer in the error."""
    try:
        raw.settimeout(timeout)
        return context.wrap_socket(raw, server_hostname=server_name)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        reason = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else ""
        raise PeerUnreachable(
            f"TLS handshake with {peer} failed: "
            + (f"certificate verify failed: {reason}" if reason else str(exc))
            + " (check the peer's tls settings: ca, cert, key, server_name)"
        ) from exc
