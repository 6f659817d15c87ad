"""Store.receive: one Reception owns the spool file from the command to the answer."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import ctnode.storage.store
from ctnode.config import StorageSettings
from ctnode.db import migrate
from ctnode.db.engine import create_db_engine, session_factory
from ctnode.db.models import Instance
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """An SQLite index (a reception's life does not depend on the database)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate.upgrade(engine)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def _store(tmp_path: Path, sessions: sessionmaker[Session], **kw: object) -> Store:
    settings = StorageSettings(data_dir=tmp_path / "data", min_free_bytes=0, **kw)  # type: ignore[arg-type]
    store = Store(settings, sessions, "node-a")
    store.prepare()
    return store


def _request(uid: str) -> StoreRequest:
    return StoreRequest(CT_IMAGE, uid, EXPLICIT_VR_LE, "MOD", "127.0.0.1")


def _fragments(data: bytes, size: int = 1000) -> Iterator[memoryview]:
    for start in range(0, len(data), size):
        yield memoryview(data)[start : start + size]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_complete_stores_and_close_removes_the_spool_name(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """Fragments are stored as one object; complete() answers Success with the object durable
    and indexed, keeping the spool name until close() removes it."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    data = encode_dataset(ds)
    reception = store.receive(_request(ds.SOPInstanceUID))
    assert len(_files(store.spool)) == 1  # created with its file meta at once
    for fragment in _fragments(data):
        reception.write(fragment)
    result = reception.complete()
    assert (result.status, result.outcome) == (0, "stored")
    assert reception.size == len(data)
    stored = store.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert stored.read_bytes().endswith(data)
    assert [os.path.samefile(p, stored) for p in _files(store.spool)] == [True]
    reception.close()
    reception.close()  # idempotent
    assert _files(store.spool) == []
    assert stored.exists()
    with sessions() as s:
        assert s.scalars(select(Instance.size_bytes)).one() == len(data)


def test_beyond_max_instance_bytes_is_refused_and_not_written(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """Bytes beyond storage.max_instance_bytes are counted, not written; complete() answers
    0xA700 with the size received, and nothing is left once closed."""
    store = _store(tmp_path, sessions, max_instance_bytes=4096)
    ds = make_dataset(CT_IMAGE, size=128)
    data = encode_dataset(ds)
    assert len(data) > 4096
    reception = store.receive(_request(ds.SOPInstanceUID))
    (spool_file,) = _files(store.spool)
    header = spool_file.stat().st_size
    for fragment in _fragments(data):
        reception.write(fragment)
    assert spool_file.stat().st_size <= header + 4096
    result = reception.complete()
    assert (result.status, result.outcome) == (0xA700, "refused")
    assert result.reason == (f"data set of {len(data)} bytes exceeds storage.max_instance_bytes")
    assert reception.size == len(data)
    reception.close()
    assert _files(store.settings.data_dir / "store") == []
    assert _files(store.spool) == []


def test_empty_data_set_is_refused(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """A data set without a byte: 0xC000, nothing stored."""
    store = _store(tmp_path, sessions)
    reception = store.receive(_request("1.2.3.4"))
    result = reception.complete()
    assert (result.status, result.reason) == (0xC000, "empty data set")
    reception.close()
    assert _files(store.spool) == [] and _files(store.root) == []


def test_abort_discards_the_spool_file(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """abort() (the association ended mid data set) removes the partial spool file; twice is
    harmless."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    reception = store.receive(_request(ds.SOPInstanceUID))
    reception.write(memoryview(encode_dataset(ds))[:500])
    reception.abort()
    reception.abort()
    assert _files(store.spool) == [] and _files(store.root) == []


def test_write_failure_discards_at_once_and_refuses(
    tmp_path: Path, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write (disk full) removes the spool file at once; the rest of the data set is
    counted, and complete() answers 0xA700 naming the error."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    data = encode_dataset(ds)
    reception = store.receive(_request(ds.SOPInstanceUID))

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    for fragment in _fragments(data):
        reception.write(fragment)
    monkeypatch.undo()
    assert _files(store.spool) == []
    result = reception.complete()
    assert (result.status, result.outcome) == (0xA700, "refused")
    assert result.reason == f"cannot write to the spool: {os.strerror(errno.ENOSPC)}"
    assert reception.size == len(data)
    reception.close()
    assert _files(store.spool) == [] and _files(store.root) == []


def test_spool_file_that_cannot_be_created(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """receive() raises OSError when the spool file cannot be created, leaving nothing."""
    store = _store(tmp_path, sessions)
    store.spool.rmdir()
    with pytest.raises(OSError):
        store.receive(_request("1.2.3.4"))
    assert _files(store.settings.data_dir / "store") == []


def test_error_while_ingesting_removes_the_spool_file(
    tmp_path: Path, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error inside the ingest propagates from complete() and the spool file is
    gone."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    reception = store.receive(_request(ds.SOPInstanceUID))
    reception.write(memoryview(encode_dataset(ds)))

    def broken(fd: int) -> None:
        raise RuntimeError("broken")

    monkeypatch.setattr(ctnode.storage.store, "start_writeback", broken)
    with pytest.raises(RuntimeError):
        reception.complete()
    assert _files(store.spool) == [] and _files(store.root) == []
