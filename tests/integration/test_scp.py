"""The SCP in-process, driven by pynetdicom as an independent client: access control,
crafted bad commands, and what ends up on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from ctnode.daemon import Runtime
from ctnode.db.models import Instance
from ctnode.dicom.contexts import (
    CT_IMAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE,
    VERIFICATION,
)
from tests.helpers import rawclient
from tests.helpers.dicomgen import SIX_CLASSES, encode_dataset, make_dataset
from tests.helpers.node import make_settings, running_node, write_peers
from tests.helpers.scu import (
    associate,
    echo_ok,
    raw_store,
    store_dataset,
    try_associate,
)

PEERS = {
    "modality": {
        "ae_title": "MODALITY",
        "host": "127.0.0.1",
        "port": 104,
        "accept": ["echo", "store"],
    },
    "echoonly": {"ae_title": "ECHOONLY", "host": "127.0.0.1", "port": 104, "accept": ["echo"]},
    "faraway": {
        "ae_title": "FARAWAY",
        "host": "127.0.0.2",
        "port": 104,
        "accept": ["echo", "store"],
    },
}


@pytest.fixture
def node(tmp_path: Path, db_url: str, engine: Engine) -> Iterator[Runtime]:
    """A node with three peers, on SQLite and on PostgreSQL (migrated by ``engine``)."""
    write_peers(tmp_path, PEERS)
    with running_node(make_settings(tmp_path, db_url)) as runtime:
        yield runtime


def _snapshot(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def test_echo_from_configured_peer(node: Runtime) -> None:
    """A configured peer calling from its host can C-ECHO."""
    assert echo_ok(node.server.port, calling="MODALITY")


def test_six_classes_stored_byte_identical(node: Runtime) -> None:
    """Each of the six scanner classes is stored with the data set bytes as sent."""
    for name, sop_class in SIX_CLASSES.items():
        ds = make_dataset(sop_class)
        assert store_dataset(node.server.port, ds) == 0, name
        stored = next(node.store.root.rglob(f"{ds.SOPInstanceUID}.dcm")).read_bytes()
        assert stored.endswith(encode_dataset(ds)), name
    with node.sessions() as s:
        assert len(s.scalars(select(Instance)).all()) == 6


@pytest.mark.parametrize(
    ("calling", "called", "bind", "expected"),
    [
        ("STRANGER", "CTNODE", "127.0.0.1", (1, 1, 3)),  # unknown calling AE
        ("MODALITY", "NOTME", "127.0.0.1", (1, 1, 7)),  # wrong called AE
        ("FARAWAY", "CTNODE", "127.0.0.1", (1, 1, 3)),  # known AE, wrong address (parsed)
        ("MODALITY", "CTNODE", "127.0.0.3", (1, 1, 3)),  # unknown address (before parsing)
    ],
)
def test_rejections(
    node: Runtime, calling: str, called: str, bind: str, expected: tuple[int, int, int]
) -> None:
    """Unknown caller, wrong called AE and wrong source address are rejected as specified.

    (Read with a raw-socket client: pynetdicom sometimes reports a rejection that closes the
    connection at once as an abort.)"""
    sock = rawclient.connect(node.server.port, source=bind)
    try:
        sock.sendall(rawclient.associate_rq(calling=calling, called=called))
        assert rawclient.expect_rj(sock) == expected
    finally:
        sock.close()


def test_known_ae_from_its_own_other_address(node: Runtime) -> None:
    """FARAWAY is configured at 127.0.0.2 and is accepted from there."""
    assoc = try_associate(
        node.server.port,
        [(VERIFICATION, [IMPLICIT_VR_LE])],
        calling="FARAWAY",
        bind_address=("127.0.0.2", 0),
    )
    assert assoc.is_established
    assoc.release()


def test_service_not_in_accept_list(node: Runtime) -> None:
    """A peer allowed only to echo: storage alone is rejected, mixed gets storage refused."""
    only_store = rawclient.rejection_of(
        node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE])], calling="ECHOONLY"
    )
    assert only_store == (1, 1, 3)
    with associate(
        node.server.port,
        [(VERIFICATION, [IMPLICIT_VR_LE]), (CT_IMAGE, [EXPLICIT_VR_LE])],
        calling="ECHOONLY",
    ) as a:
        assert [c.abstract_syntax for c in a.accepted_contexts] == [VERIFICATION]
        assert [c.abstract_syntax for c in a.rejected_contexts] == [CT_IMAGE]


@pytest.mark.parametrize(
    "uid",
    ["../../../../../tmp/ctnode-escape", "1.2/../../x", "1.2\\3", "1." + "2" * 70, "1.2\x00.3"],
)
def test_traversal_looking_uids_are_refused(node: Runtime, tmp_path: Path, uid: str) -> None:
    """Affected SOP Instance UIDs with /, .., \\, NUL or over 64 chars: 0xC000, nothing written."""
    before = _snapshot(tmp_path)
    ds = make_dataset(CT_IMAGE, sop_instance=uid)
    with associate(node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE])]) as assoc:
        assert raw_store(assoc, CT_IMAGE, uid, encode_dataset(ds)) == 0xC000
    assert _snapshot(tmp_path) == before
    assert not Path("/tmp/ctnode-escape").exists()
    with node.sessions() as s:
        assert s.scalars(select(Instance)).all() == []


def test_study_uid_traversal_in_dataset(node: Runtime, tmp_path: Path) -> None:
    """A valid command with a traversal-looking StudyInstanceUID in the data set: 0xC000."""
    before = _snapshot(tmp_path)
    ds = make_dataset(CT_IMAGE)
    ds.StudyInstanceUID = "../../../../../tmp/ctnode-escape2"
    with associate(node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE])]) as assoc:
        assert raw_store(assoc, CT_IMAGE, ds.SOPInstanceUID, encode_dataset(ds)) == 0xC000
    assert _snapshot(tmp_path) == before
    assert not Path("/tmp/ctnode-escape2").exists()


def test_command_dataset_mismatch(node: Runtime) -> None:
    """Command and data set SOP Instance UIDs differ: 0xA900, nothing stored."""
    ds = make_dataset(CT_IMAGE)
    with associate(node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE])]) as assoc:
        assert raw_store(assoc, CT_IMAGE, "1.2.3.4.5", encode_dataset(ds)) == 0xA900
    assert list(node.store.root.rglob("*.dcm")) == []


def test_garbage_dataset(node: Runtime) -> None:
    """An undecodable data set: 0xC000 (never 0xC211), nothing stored, spool empty."""
    with associate(node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE])]) as assoc:
        assert raw_store(assoc, CT_IMAGE, "1.2.3.4", os.urandom(3000)) == 0xC000
        # the association survives and the next object is stored
        ds = make_dataset(CT_IMAGE)
        assert raw_store(assoc, CT_IMAGE, ds.SOPInstanceUID, encode_dataset(ds)) == 0
    assert list(node.store.spool.iterdir()) == []


def test_sop_class_not_matching_context(node: Runtime) -> None:
    """A C-STORE whose SOP class is not the context's abstract syntax: 0x0122."""
    ds = make_dataset(MR_IMAGE)
    with associate(
        node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE]), (MR_IMAGE, [EXPLICIT_VR_LE])]
    ) as assoc:
        ctx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CT_IMAGE)
        from io import BytesIO

        from pynetdicom.dimse_primitives import C_STORE

        req = C_STORE()
        req.MessageID = 5
        req.Priority = 2
        req.AffectedSOPClassUID = MR_IMAGE
        req.AffectedSOPInstanceUID = ds.SOPInstanceUID
        req.DataSet = BytesIO(encode_dataset(ds))
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            pass
        assoc.dimse.send_msg(req, ctx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        assert rsp.Status == 0x0122


def test_self_echo_is_allowed_from_loopback(node: Runtime) -> None:
    """`ctnode echo --self`: our own AE title from 127.0.0.1 may echo, not store."""
    assert echo_ok(node.server.port, calling="CTNODE")
    assert rawclient.rejection_of(
        node.server.port, [(CT_IMAGE, [EXPLICIT_VR_LE])], calling="CTNODE"
    ) == (1, 1, 3)


def test_peer_local_ae_title_is_also_ours(tmp_path: Path, db_url: str, engine: Engine) -> None:
    """A peer we call as `local_ae_title` calls back with that called AE title (move results,
    commitment reports): accepted; any other called AE title is still 1/1/7."""
    write_peers(
        tmp_path,
        {
            "pacs": {
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": 104,
                "accept": ["echo", "store"],
                "local_ae_title": "CTALT",
            }
        },
    )
    with running_node(make_settings(tmp_path, db_url)) as node:
        assert echo_ok(node.server.port, calling="PACS", called="CTALT")
        assert rawclient.rejection_of(
            node.server.port, [(VERIFICATION, [IMPLICIT_VR_LE])], calling="PACS", called="ELSE"
        ) == (1, 1, 7)
