"""DICOM TLS with `ctnode run` and DCMTK: the second listener (trusted, untrusted, expired and
missing client certificates; handshakes that stall or trickle), and ctnode as a TLS client
(`ctnode echo PEER` to DCMTK `storescp +tls`). Certificates are generated at test time."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctnode.dicom.contexts import CT_IMAGE
from tests.helpers import rawclient as raw
from tests.helpers.certs import Pki, make_pki
from tests.helpers.dicomgen import make_dataset, write
from tests.helpers.procs import CtnodeProcess, free_port, run_tool, started, storescp
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

HANDSHAKE_TIMEOUT = 2.0
SLACK = 5.0
MODALITY = {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104, "accept": ["echo", "store"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, server, trusted/untrusted/expired client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_config(pki: Pki, **overrides: Any) -> dict[str, Any]:
    tls = {
        "enabled": True,
        "port": free_port(),
        "cert": str(pki.server.cert),
        "key": str(pki.server.key),
        "ca": str(pki.ca),
        "require_client_cert": True,
        "handshake_timeout": HANDSHAKE_TIMEOUT,
        **overrides,
    }
    return {"node": {"tls": tls, "timeouts": {"acse": 5, "network": 5, "dimse": 10}}}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[CtnodeProcess]:
    """`ctnode run` with TLS on a second port, one configured modality (STORESCU)."""
    proc = CtnodeProcess(
        tmp_path_factory.mktemp("tls-node"), config=_tls_config(pki), peers={"modality": MODALITY}
    )
    with proc:
        yield proc


def _tls_port(node: CtnodeProcess) -> int:
    return int(node.config["node"]["tls"]["port"])


def _echoscu(node: CtnodeProcess, *tls_args: str) -> Any:
    return run_tool(
        [
            "echoscu",
            "-aet",
            "STORESCU",
            "-aec",
            "CTNODE",
            *tls_args,
            "127.0.0.1",
            str(_tls_port(node)),
        ],
        timeout=60,
    )


def _tls_failures(node: CtnodeProcess) -> list[dict[str, Any]]:
    assert node.log is not None
    return [e for e in node.log.named("scp.association") if e.get("result") == "tls_failed"]


def _wait_tls_failure(node: CtnodeProcess, count: int, timeout: float = 20) -> dict[str, Any]:
    from_count = wait_until(
        lambda: _tls_failures(node)[count - 1 :],
        timeout,
        message=f"tls_failed association #{count} logged",
    )
    return from_count[0]


def test_ready_names_the_tls_port(node: CtnodeProcess) -> None:
    """`daemon.ready` reports the TLS listener's port next to the plain one."""
    assert node.log is not None
    ready = node.log.wait_for("daemon.ready")
    assert ready["tls_port"] == _tls_port(node)
    assert ready["port"] == node.port


def test_trusted_client_echo_and_store(node: CtnodeProcess, pki: Pki, tmp_path: Path) -> None:
    """echoscu and storescu with a certificate signed by node.tls.ca succeed over TLS; the
    association is logged with tls=true and the object is indexed."""
    result = _echoscu(node, "+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca))
    assert result.returncode == 0, result.stdout + result.stderr
    path = write(make_dataset(CT_IMAGE), tmp_path / "ct.dcm")
    stored = run_tool(
        [
            "storescu",
            "-aec",
            "CTNODE",
            "+tls",
            str(pki.client.key),
            str(pki.client.cert),
            "+cf",
            str(pki.ca),
            "127.0.0.1",
            str(_tls_port(node)),
            str(path),
        ]
    )
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert node.log is not None
    node.log.wait_for("scp.store.accepted", calling_ae="STORESCU")
    event = node.log.wait_for("scp.association", tls=True, result="released")
    assert event["calling_ae"] == "STORESCU"


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("untrusted", "certificate verify failed"),
        ("expired", "certificate has expired"),
        ("none", "peer did not return a certificate"),
    ],
)
def test_client_certificate_refused(node: CtnodeProcess, pki: Pki, which: str, reason: str) -> None:
    """A client certificate signed by another CA, an expired one, or none at all: the TLS
    handshake fails (DCMTK reports it, no association), and ctnode logs `scp.association`
    with result `tls_failed` and the reason."""
    before = len(_tls_failures(node))
    if which == "none":
        args = ["+tla", "+cf", str(pki.ca)]
    else:
        identity = pki.untrusted if which == "untrusted" else pki.expired
        args = ["+tls", str(identity.key), str(identity.cert), "+cf", str(pki.ca)]
    result = _echoscu(node, *args)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "TLS" in output or "Association Request Failed" in output, output
    failure = _wait_tls_failure(node, before + 1)
    assert failure["tls"] is True and failure["calling_ae"] == ""
    assert reason in failure["detail"], failure["detail"]


def _client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_idle_client_does_not_block_other_tls_clients(node: CtnodeProcess, pki: Pki) -> None:
    """A TCP client on the TLS port that never sends a ClientHello does not hold up anyone:
    a trusted echoscu succeeds meanwhile, well before the idle one is dropped, which happens
    when node.tls.handshake_timeout expires (logged as tls_failed)."""
    before = len(_tls_failures(node))
    with socket.create_connection(("127.0.0.1", _tls_port(node))) as idle:
        started_at = time.monotonic()
        result = _echoscu(
            node, "+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started_at < HANDSHAKE_TIMEOUT + SLACK
        waited = raw.wait_closed(idle, HANDSHAKE_TIMEOUT + SLACK + 10)
        assert waited <= HANDSHAKE_TIMEOUT + SLACK
    failure = _wait_tls_failure(node, before + 1)
    assert "not complete within" in failure["detail"]


def test_trickling_client_hello_is_dropped_at_the_deadline(node: CtnodeProcess) -> None:
    """A ClientHello sent one byte every 0.2 s (never silent for long) is still dropped when
    the handshake deadline passes: the deadline covers the whole handshake."""
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", _tls_port(node))) as sock:
        started_at = time.monotonic()
        for byte in hello:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - started_at > HANDSHAKE_TIMEOUT + SLACK:
                break
        raw.wait_closed(sock, SLACK)
        assert time.monotonic() - started_at <= HANDSHAKE_TIMEOUT + SLACK + 1


def test_plain_port_still_answers(node: CtnodeProcess) -> None:
    """The plain listener keeps working next to the TLS one."""
    result = run_tool(
        ["echoscu", "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1", str(node.port)]
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- ctnode as a TLS client


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[int]:
    """DCMTK storescp +tls requiring a client certificate signed by the test CA."""
    server = storescp(
        tmp_path / "received",
        extra=["+tls", str(pki.server.key), str(pki.server.cert), "+cf", str(pki.ca)],
    )
    with started(server):
        yield server.port


def _peer(port: int, pki: Pki, ca: Path) -> dict[str, Any]:
    return {
        "ae_title": "STORESCP",
        "host": "127.0.0.1",
        "port": port,
        "tls": {
            "enabled": True,
            "ca": str(ca),
            "cert": str(pki.client.cert),
            "key": str(pki.client.key),
            "server_name": "localhost",
        },
    }


def test_ctnode_echo_over_tls(tmp_path: Path, pki: Pki, tls_storescp: int) -> None:
    """`ctnode echo PEER` to DCMTK storescp +tls (peer tls: ca, cert, key, server_name)."""
    node = CtnodeProcess(tmp_path / "client", peers={"pacs": _peer(tls_storescp, pki, pki.ca)})
    result = node.cli("echo", "pacs")
    assert result.returncode == 0, result.stderr
    assert "success" in result.stdout


def test_ctnode_push_over_tls(tmp_path: Path, pki: Pki, tls_storescp: int) -> None:
    """`ctnode push --wait` of the six scanner classes to DCMTK storescp +tls: all delivered,
    byte-identical at the peer."""
    from tests.helpers.dicomgen import SIX_CLASSES, dataset_bytes

    files = [
        write(make_dataset(uid), tmp_path / "in" / f"{name}.dcm")
        for name, uid in SIX_CLASSES.items()
    ]
    with CtnodeProcess(
        tmp_path / "client",
        config={"queue": {"poll_interval": 0.2}},
        peers={"pacs": _peer(tls_storescp, pki, pki.ca)},
    ) as node:
        result = node.cli("push", "pacs", str(tmp_path / "in"), "--wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"succeeded": 6' in result.stdout
    received = sorted((tmp_path / "received").iterdir())
    assert len(received) == 6
    sent = {dataset_bytes(f) for f in files}
    assert {dataset_bytes(f) for f in received} == sent


def test_ctnode_echo_with_wrong_ca_fails_clearly(
    tmp_path: Path, pki: Pki, tls_storescp: int
) -> None:
    """With a CA that did not sign the peer's certificate, `ctnode echo` exits 1 with one line
    naming the verification failure and the settings to check."""
    node = CtnodeProcess(
        tmp_path / "client", peers={"pacs": _peer(tls_storescp, pki, pki.other_ca)}
    )
    result = node.cli("echo", "pacs")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "certificate verify failed" in lines[0] and "tls settings" in lines[0], lines[0]


def test_config_check_and_run_name_missing_tls_ca(tmp_path: Path, pki: Pki) -> None:
    """node.tls enabled with require_client_cert but no ca: `ctnode config check` and
    `ctnode run` both exit 2 naming node.tls.ca."""
    node = CtnodeProcess(tmp_path, config=_tls_config(pki, ca=None))
    check = node.cli("config", "check")
    assert check.returncode == 2
    assert "node.tls.ca" in check.stderr
    node.start(wait=False)
    assert node.wait(30) == 2
    assert node.log is not None
    time.sleep(0.2)
    assert any("node.tls.ca" in line for line in node.log.lines)
