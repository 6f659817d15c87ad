"""DICOM TLS: SSL contexts for the listener (``node.tls``) and for outbound associations (a peer's
``tls``), per the BCP 195 profiles of PS3.15 Annex B, and a server handshake with a deadline.

* TLS 1.2 or newer only (``min_version`` may raise it to 1.3); compression and renegotiation off.
* TLS 1.2 cipher suites: ECDHE/DHE key exchange with AES-GCM or ChaCha20-Poly1305 only, the
  suites of the BCP 195 (non-downgrading) profile and no weaker fallback; TLS 1.3 suites are
  all AEAD and are left at OpenSSL's defaults.
* The listener asks for a client certificate and, with ``require_client_cert`` (the default),
  refuses a connection whose certificate is missing, expired or not signed by ``node.tls.ca``:
  the handshake fails and no PDU is ever read.

Configuration problems are ``ConfigError`` naming the key to fix.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

from ctnode.config import TlsSettings
from ctnode.errors import ConfigError
from ctnode.peers import Peer

#: TLS 1.2 suites allowed (OpenSSL names): forward secrecy and AEAD only (BCP 195 / RFC 9325).
BCP195_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class HandshakeTimeout(TimeoutError):
    """The TLS handshake did not complete within its deadline."""


def _harden(context: ssl.SSLContext, min_version: str = "TLSv1.2") -> None:
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def _readable(path: Path | None, key: str) -> str:
    if path is None:
        raise ConfigError(f"{key}: required when TLS is enabled")
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist or is not a file")
    return str(path)


def server_context(tls: TlsSettings, where: str = "node.tls") -> ssl.SSLContext:
    """The listener's context from ``node.tls`` (ConfigError naming the key if unusable)."""
    cert = _readable(tls.cert, f"{where}.cert")
    key = _readable(tls.key, f"{where}.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, tls.min_version)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}.cert / {where}.key: cannot load the certificate and key: {exc}"
        ) from exc
    if tls.require_client_cert and tls.ca is None:
        raise ConfigError(
            f"{where}.ca: required when {where}.require_client_cert is true (the CA that "
            "signs the client certificates)"
        )
    if tls.ca is not None:
        ca = _readable(tls.ca, f"{where}.ca")
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}.ca: cannot load CA certificates from {ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(peer: Peer) -> ssl.SSLContext | None:
    """A TLS client context for *peer*, or None when its TLS is off (ConfigError if unusable).

    The peer's certificate is verified against its ``tls.ca`` (the system store without one)
    and its host name (or ``tls.server_name``); ``tls.cert``/``tls.key`` are our client
    certificate.
    """
    tls = peer.config.tls
    if not tls.enabled:
        return None
    where = f"{peer.path}: tls"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    _harden(context)
    try:
        if tls.ca is not None:
            context.load_verify_locations(cafile=_readable(tls.ca, f"{where}.ca"))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert is not None or tls.key is not None:
            context.load_cert_chain(
                _readable(tls.cert, f"{where}.cert"), _readable(tls.key, f"{where}.key")
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load certificates: {exc}") from exc
    return context


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a failed handshake (the verification message when there is one)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return str(exc) or type(exc).__name__


def server_handshake(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """Wrap *sock* and complete the server handshake within *timeout* seconds in total.

    A socket timeout would restart with every byte received, so a client trickling its
    ClientHello could hold the thread indefinitely; here the deadline covers the whole
    handshake. Raises HandshakeTimeout, ssl.SSLError or OSError; the socket is returned in
    blocking mode.
    """
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        _complete_handshake(tls_sock, deadline, timeout)
    except BaseException:
        tls_sock.close()  # it owns the descriptor now; closing *sock* would not close it
        raise
    tls_sock.setblocking(True)
    return tls_sock


def _complete_handshake(tls_sock: ssl.SSLSocket, deadline: float, timeout: float) -> None:
    poller = select.poll()
    while True:
        try:
            tls_sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            events = select.POLLIN
        except ssl.SSLWantWriteError:
            events = select.POLLOUT
        left = deadline - time.monotonic()
        if left <= 0:
            raise HandshakeTimeout(f"TLS handshake not complete within {timeout:g} s")
        poller.register(tls_sock.fileno(), events)
        try:
            poller.poll(left * 1000)
        finally:
            with contextlib.suppress(KeyError):
                poller.unregister(tls_sock.fileno())


def configuration_problems(tls: TlsSettings, peers: Iterable[Peer]) -> list[str]:
    """Every TLS problem in ``node.tls`` and the peers' ``tls`` (for ``ctnode config check``).

    Certificates and keys are actually loaded, so a wrong path or a key that does not match its
    certificate is reported before ``ctnode run``.
    """
    problems: list[str] = []
    if tls.enabled:
        try:
            server_context(tls)
        except ConfigError as exc:
            problems.append(str(exc))
    for peer in peers:
        try:
            client_context(peer)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems
