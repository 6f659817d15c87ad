"""Hostile callers on a node open to unknown callers (``node.accept_unknown_callers: true``,
as in the embedded default): whatever a caller calls itself must not reach a file, a path or
a crash. Same invariants after every case (conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom import dcmread

from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE
from tests.adversarial.harness import HostileNode
from tests.helpers import rawclient as raw
from tests.helpers.dicomgen import encode_dataset, make_dataset


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    """`ctnode run` accepting any calling AE from any address, for the whole module."""
    hostile = HostileNode(tmp_path_factory.mktemp("open-node"), open_to_unknown_callers=True)
    hostile.start()
    try:
        yield hostile
    finally:
        code = hostile.stop()
    assert code == 0, f"ctnode run exited with {code} after the module's cases"


def _store_as(node: HostileNode, calling: bytes, source: str = "127.0.0.1") -> str:
    """C-STORE one CT object calling as *calling* (raw bytes); returns its SOP Instance UID."""
    ds = make_dataset(CT_IMAGE, node.ids, size=8)
    uid = str(ds.SOPInstanceUID)
    with raw.connect(node.port, source) as sock:
        rq = bytearray(raw.associate_rq([(CT_IMAGE, [EXPLICIT_VR_LE])]))
        rq[26:42] = calling[:16].ljust(16, b" ")
        sock.sendall(bytes(rq))
        pdu_type, body = raw.read_pdu(sock)
        assert pdu_type == 2, f"association not accepted: PDU 0x{pdu_type:02X}"
        assoc = raw.RawAssociation(sock, raw.P.decode_associate_ac(body), 0, contexts={})
        assoc.contexts = {1: (CT_IMAGE, EXPLICIT_VR_LE)}
        assert assoc.c_store(CT_IMAGE, uid, encode_dataset(ds)) == 0
        assoc.release()
    node.stored.add(uid)
    return uid


def test_unknown_caller_from_unknown_address_may_store(node: HostileNode) -> None:
    """On an open node an unknown AE from an unknown address is accepted and stores (0x0000):
    the documented behaviour of the embedded default, not an accident."""
    _store_as(node, b"ANYONE", source="127.0.0.3")


@pytest.mark.parametrize(
    "calling",
    [b"MOD\xe9\xff", b"\x1b[2J\\$(id)", b"A\nB\rC\x00D"],
    ids=["non-ascii", "escape-backslash-shell", "newline-nul"],
)
def test_hostile_calling_ae_on_an_open_node(node: HostileNode, calling: bytes) -> None:
    """Calling AE titles with non-ASCII bytes, escape sequences, backslashes, shell syntax,
    newlines or NUL: the object is stored (0x0000) and its file meta carries no Source AE
    Title that is not a valid AE title; nothing crashes (no scp.association_crashed)."""
    uid = _store_as(node, calling)
    stored = node.data_dir / "store" / node.index()[uid]
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    source = meta.get("SourceApplicationEntityTitle")
    if source is not None:
        text = str(source)
        assert text.isascii() and text.isprintable() and "\\" not in text, repr(text)
    assert node.events("scp.association_crashed") == []
