"""ctnode.tls: contexts built from settings (errors name the key), BCP 195 choices, and the
server handshake's deadline."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from ctnode.config import TlsSettings
from ctnode.errors import ConfigError
from ctnode.peers import Peer, PeerConfig
from ctnode.tls import (
    HandshakeTimeout,
    client_context,
    configuration_problems,
    server_context,
    server_handshake,
)
from tests.helpers.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _settings(pki: Pki, **overrides: object) -> TlsSettings:
    values: dict[str, object] = {
        "enabled": True,
        "cert": pki.server.cert,
        "key": pki.server.key,
        "ca": pki.ca,
        **overrides,
    }
    return TlsSettings.model_validate(values)


def _peer(tmp_path: Path, **tls: object) -> Peer:
    config = PeerConfig.model_validate(
        {"ae_title": "PACS", "host": "localhost", "port": 104, "tls": tls}
    )
    return Peer("pacs", config, tmp_path / "pacs.yaml")


def test_server_context_is_bcp195(pki: Pki) -> None:
    """TLS >= 1.2, client certificate required against the CA, only ECDHE/DHE + AEAD suites."""
    context = server_context(_settings(pki))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(("ECDHE" in n or "DHE" in n) and ("GCM" in n or "CHACHA20" in n) for n in tls12)
    assert context.options & ssl.OP_NO_COMPRESSION


def test_min_version_13(pki: Pki) -> None:
    """min_version TLSv1.3 is honoured."""
    context = server_context(_settings(pki, min_version="TLSv1.3"))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_optional_client_certificate(pki: Pki) -> None:
    """require_client_cert false: a certificate is verified if sent (with ca), else not asked."""
    assert server_context(_settings(pki, require_client_cert=False)).verify_mode == (
        ssl.CERT_OPTIONAL
    )
    no_ca = server_context(_settings(pki, require_client_cert=False, ca=None))
    assert no_ca.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"cert": None}, "node.tls.cert"),
        ({"key": None}, "node.tls.key"),
        ({"cert": Path("/nonexistent/ctnode.crt")}, "node.tls.cert"),
        ({"ca": None}, "node.tls.ca"),
        ({"ca": Path("/nonexistent/ca.crt")}, "node.tls.ca"),
    ],
)
def test_server_context_errors_name_the_key(
    pki: Pki, overrides: dict[str, object], key: str
) -> None:
    """Missing or unreadable files, and a missing CA while client certificates are required,
    are ConfigErrors naming the key."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        server_context(_settings(pki, **overrides))


def test_key_not_matching_certificate(pki: Pki) -> None:
    """A key that does not belong to the certificate is a ConfigError naming both keys."""
    with pytest.raises(ConfigError, match=r"node\.tls\.cert / node\.tls\.key"):
        server_context(_settings(pki, key=pki.client.key))


def test_client_context(tmp_path: Path, pki: Pki) -> None:
    """None when the peer's TLS is off; otherwise verifies server and name, TLS >= 1.2."""
    assert client_context(_peer(tmp_path)) is None
    context = client_context(
        _peer(tmp_path, enabled=True, ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    )
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_context_errors_name_the_peer_file(tmp_path: Path, pki: Pki) -> None:
    """A client certificate without its key is a ConfigError naming the peer file and key."""
    with pytest.raises(ConfigError, match=r"pacs\.yaml: tls\.key"):
        client_context(_peer(tmp_path, enabled=True, ca=pki.ca, cert=pki.client.cert))


def test_configuration_problems_collects_all(tmp_path: Path, pki: Pki) -> None:
    """config check lists the listener's and every peer's TLS problems together."""
    problems = configuration_problems(
        _settings(pki, ca=None), [_peer(tmp_path, enabled=True, ca=tmp_path / "missing.crt")]
    )
    assert len(problems) == 2
    assert "node.tls.ca" in problems[0] and "pacs.yaml: tls.ca" in problems[1]
    assert configuration_problems(TlsSettings(), []) == []


def test_handshake_deadline_covers_a_silent_client(pki: Pki) -> None:
    """A client that never sends a ClientHello: HandshakeTimeout after the deadline, and the
    connection is closed (the client reads EOF at once)."""
    server, client = socket.socketpair()
    with server, client:
        started = time.monotonic()
        with pytest.raises(HandshakeTimeout):
            server_handshake(server, server_context(_settings(pki)), 0.3)
        assert 0.25 <= time.monotonic() - started < 3
        client.settimeout(2)
        assert client.recv(1) == b""


def test_handshake_succeeds_with_a_trusted_client(tmp_path: Path, pki: Pki) -> None:
    """A trusted client completes the handshake; the socket comes back blocking."""
    server, client = socket.socketpair()
    context = client_context(
        _peer(tmp_path, enabled=True, ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    )
    assert context is not None
    result: list[object] = []

    def connect() -> None:
        try:
            with context.wrap_socket(client, server_hostname="localhost") as tls:
                result.append(tls.recv(5))
        except (OSError, ssl.SSLError) as exc:  # pragma: no cover - reported below
            result.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    with server:
        tls_server = server_handshake(server, server_context(_settings(pki)), 5)
        assert tls_server.getblocking()
        assert tls_server.getpeercert() is not None
        tls_server.sendall(b"hello")
        thread.join(10)
        tls_server.close()
    assert result == [b"hello"]
