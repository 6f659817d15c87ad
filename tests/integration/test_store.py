"""Store.ingest on SQLite and PostgreSQL: durability order, validation, duplicates, recovery."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import OnDuplicate, StorageSettings
from ctnode.db.engine import create_db_engine, session_factory
from ctnode.db.models import Instance
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset


def _store(tmp_path: Path, sessions: sessionmaker[Session], **kw: object) -> Store:
    settings = StorageSettings(data_dir=tmp_path / "data", min_free_bytes=0, **kw)  # type: ignore[arg-type]
    store = Store(settings, sessions, "node-a")
    store.prepare()
    return store


def _ingest(
    store: Store, data: bytes, sop_class: str, sop_instance: str, ts: str = EXPLICIT_VR_LE
) -> tuple[int, str]:
    spool = store.open_spool(StoreRequest(sop_class, sop_instance, ts, "MOD", "127.0.0.1"))
    spool.write(memoryview(data))
    result = store.ingest(spool)
    return result.status, result.outcome


def _all_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix != ".db" and "ctnode.db" not in p.name
    )


def test_ingest_stores_file_and_row(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """A valid object lands in store/<study>/<series>/<sop>.dcm with its row; spool is empty."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    data = encode_dataset(ds)
    assert _ingest(store, data, CT_IMAGE, ds.SOPInstanceUID) == (0, "stored")
    path = store.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert path.read_bytes().endswith(data)
    assert list(store.spool.iterdir()) == []
    with sessions() as s:
        row = s.scalars(select(Instance)).one()
    assert row.sop_instance_uid == ds.SOPInstanceUID
    assert row.patient_id == "PAT001" and row.patient_name == "Doe^Jane"
    assert row.modality == "CT" and row.size_bytes == len(data)
    assert row.received_at.tzinfo is not None
    assert row.node_name == "node-a"


def test_implicit_vr_object(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """Implicit VR little endian data sets are scanned and indexed too."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    assert (
        _ingest(
            store, encode_dataset(ds, explicit=False), CT_IMAGE, ds.SOPInstanceUID, IMPLICIT_VR_LE
        )[0]
        == 0
    )


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        ("instance_mismatch", 0xA900),
        ("class_mismatch", 0xA900),
        ("traversal_study", 0xC000),
        ("garbage", 0xC000),
        ("no_series", 0xA900),
    ],
)
def test_refusals_write_nothing(
    tmp_path: Path, sessions: sessionmaker[Session], mutate: str, status: int
) -> None:
    """Mismatch (0xA900), bad UIDs and garbage (0xC000): no file, no row, empty spool."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    command_uid = ds.SOPInstanceUID
    sop_class = CT_IMAGE
    if mutate == "instance_mismatch":
        command_uid = "1.2.3.4.5.9"
    elif mutate == "class_mismatch":
        sop_class = "1.2.840.10008.5.1.4.1.1.4"
    elif mutate == "traversal_study":
        ds.StudyInstanceUID = "../../../../tmp"
    elif mutate == "no_series":
        del ds.SeriesInstanceUID
    data = b"\x01\x02garbage" * 40 if mutate == "garbage" else encode_dataset(ds)
    assert _ingest(store, data, sop_class, command_uid)[0] == status
    assert _all_files(store.settings.data_dir) == []
    with sessions() as s:
        assert s.scalars(select(Instance)).all() == []


def test_same_bytes_twice_is_one_copy(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """An identical resend is Success and stored once."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)
    data = encode_dataset(ds)
    assert _ingest(store, data, CT_IMAGE, ds.SOPInstanceUID) == (0, "stored")
    assert _ingest(store, data, CT_IMAGE, ds.SOPInstanceUID) == (0, "duplicate")
    assert len(_all_files(store.root)) == 1
    assert list(store.quarantine.iterdir()) == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (OnDuplicate.KEEP_FIRST, (0, "quarantined")),
        (OnDuplicate.OVERWRITE, (0, "overwritten")),
        (OnDuplicate.REJECT, (0xA900, "refused")),
    ],
)
def test_conflicting_duplicates(
    tmp_path: Path, sessions: sessionmaker[Session], mode: OnDuplicate, expected: tuple[int, str]
) -> None:
    """Different bytes under a known UID: quarantine, overwrite or reject, per on_duplicate."""
    store = _store(tmp_path, sessions, on_duplicate=mode)
    ds = make_dataset(CT_IMAGE)
    first = encode_dataset(ds)
    ds.PatientID = "OTHER"
    second = encode_dataset(ds)
    assert _ingest(store, first, CT_IMAGE, ds.SOPInstanceUID)[0] == 0
    assert _ingest(store, second, CT_IMAGE, ds.SOPInstanceUID) == expected
    stored = next(store.root.rglob("*.dcm")).read_bytes()
    quarantined = list(store.quarantine.iterdir())
    with sessions() as s:
        row = s.scalars(select(Instance)).one()
    if mode is OnDuplicate.OVERWRITE:
        assert stored.endswith(second) and row.patient_id == "OTHER" and not quarantined
    else:
        assert stored.endswith(first) and row.patient_id == "PAT001"
        if mode is OnDuplicate.KEEP_FIRST:
            assert len(quarantined) == 1 and quarantined[0].read_bytes().endswith(second)
        else:
            assert not quarantined
    assert list(store.spool.iterdir()) == []


def test_database_locked_is_out_of_resources(
    tmp_path: Path, sessions: sessionmaker[Session], db_url: str
) -> None:
    """A write lock held elsewhere beyond the busy timeout gives 0xA700 and leaves no file."""
    engine = sessions.kw["bind"]
    impatient = create_db_engine(db_url, busy_timeout=1)  # give up on the lock after 1 s
    store = _store(tmp_path, session_factory(impatient))
    ds = make_dataset(CT_IMAGE)
    data = encode_dataset(ds)
    held = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with engine.connect() as conn:
            if db_url.startswith("sqlite"):
                conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE already holds the write lock
            else:
                conn.execute(text("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE"))
            held.set()
            release.wait(30)
            conn.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert held.wait(10)
    try:
        assert _ingest(store, data, CT_IMAGE, ds.SOPInstanceUID) == (0xA700, "refused")
    finally:
        release.set()
        holder.join()
    assert _all_files(store.root) == []
    assert list(store.spool.iterdir()) == []
    # and it recovers at once
    assert _ingest(store, data, CT_IMAGE, ds.SOPInstanceUID) == (0, "stored")
    impatient.dispose()


def test_recovery_of_spool_leftovers(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    """At start-up: partial spool files go; a store link without a committed row goes;
    a committed object keeps its store file."""
    store = _store(tmp_path, sessions)
    # 1. committed object whose spool link survived a crash
    ds1 = make_dataset(CT_IMAGE)
    assert _ingest(store, encode_dataset(ds1), CT_IMAGE, ds1.SOPInstanceUID)[0] == 0
    stored1 = next(store.root.rglob(f"{ds1.SOPInstanceUID}.dcm"))
    os.link(stored1, store.spool / "committed.part")
    # 2. linked into the store, crash before the row was committed
    ds2 = make_dataset(CT_IMAGE)
    spool = store.open_spool(StoreRequest(CT_IMAGE, ds2.SOPInstanceUID, EXPLICIT_VR_LE))
    spool.write(memoryview(encode_dataset(ds2)))
    spool.sync()
    spool.close()
    target = store.root / ds2.StudyInstanceUID / ds2.SeriesInstanceUID / f"{ds2.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True)
    os.link(spool.path, target)
    # 3. a partial receive
    (store.spool / "partial.part").write_bytes(b"\x00" * 50)

    fresh = Store(store.settings, sessions, "node-a")
    assert fresh.prepare() == 3
    assert list(store.spool.iterdir()) == []
    assert stored1.exists()
    assert not target.exists()
    with sessions() as s:
        assert [r.sop_instance_uid for r in s.scalars(select(Instance))] == [ds1.SOPInstanceUID]


class _Killed(BaseException):
    """Stands for kill -9 at one precise point."""


def test_crash_between_link_and_rename_leaves_nothing_in_the_store(
    tmp_path: Path, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the temporary link was made and before the rename into place:
    the next start-up's recovery leaves neither a stray link in the store nor a spool file."""
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE)

    def killed(src: object, dst: object) -> None:
        raise _Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        _ingest(store, encode_dataset(ds), CT_IMAGE, ds.SOPInstanceUID)
    monkeypatch.undo()
    Store(store.settings, sessions, "node-a").prepare()
    assert _all_files(store.root) == []
    assert list(store.spool.iterdir()) == []
    with sessions() as s:
        assert s.scalars(select(Instance)).all() == []
