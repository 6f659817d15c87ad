"""Store.receive on SQLite and PostgreSQL: durability order, validation, duplicates, recovery."""

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
from ctnode.storage import SpoolFile, Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset
from tests.helpers.waiting import wait_until


def _store(tmp_path: Path, sessions: sessionmaker[Session], **kw: object) -> Store:
    settings = StorageSettings(data_dir=tmp_path / "data", min_free_bytes=0, **kw)  # type: ignore[arg-type]
    store = Store(settings, sessions, "node-a")
    store.prepare()
    return store


def _ingest(
    store: Store, data: bytes, sop_class: str, sop_instance: str, ts: str = EXPLICIT_VR_LE
) -> tuple[int, str]:
    reception = store.receive(StoreRequest(sop_class, sop_instance, ts, "MOD", "127.0.0.1"))
    reception.write(memoryview(data))
    result = reception.complete()
    reception.close()
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
    request = StoreRequest(CT_IMAGE, ds2.SOPInstanceUID, EXPLICIT_VR_LE)
    spool = SpoolFile(store.spool / "linked.part", request)
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


@pytest.mark.parametrize("windowed", [False, True])
def test_sha256_of_the_data_set(
    tmp_path: Path, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, windowed: bool
) -> None:
    """The index row holds the SHA-256 of exactly the data set bytes, whether the spool file is
    hashed in one call or window by window (as a large one is)."""
    import hashlib

    import ctnode.storage.spool

    if windowed:
        monkeypatch.setattr(ctnode.storage.spool, "_POPULATE_LIMIT", 0)
        monkeypatch.setattr(ctnode.storage.spool, "_HASH_WINDOW", 4096)
    store = _store(tmp_path, sessions)
    ds = make_dataset(CT_IMAGE, size=128)
    data = encode_dataset(ds)
    assert _ingest(store, data, CT_IMAGE, ds.SOPInstanceUID) == (0, "stored")
    with sessions() as s:
        row = s.scalars(select(Instance)).one()
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.size_bytes == len(data)


def _row(uid: str) -> dict[str, object]:
    from ctnode.db.types import utcnow

    return {
        "sop_instance_uid": uid,
        "sop_class_uid": CT_IMAGE,
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "transfer_syntax_uid": EXPLICIT_VR_LE,
        "size_bytes": 1,
        "sha256": "0" * 64,
        "received_at": utcnow(),
        "path": f"1.2.3/1.2.3.4/{uid}.dcm",
        "node_name": "node-a",
    }


def test_group_commit_batches_concurrent_rows(sessions: sessionmaker[Session]) -> None:
    """Rows queued while a commit runs are committed together in the next transaction; each
    caller returns once its own row is committed; a duplicate fails only its own caller."""
    from sqlalchemy.exc import IntegrityError

    from ctnode.storage import GroupCommit

    committer = GroupCommit(sessions.kw["bind"])
    committer.insert(_row("1.9.0"))  # already there: its second insert must fail alone
    batches: list[list[str]] = []
    first_started, others_queued = threading.Event(), threading.Event()
    real = committer._transaction

    def transaction(rows: list) -> None:  # type: ignore[type-arg]
        batches.append([r.values["sop_instance_uid"] for r in rows])
        if len(batches) == 1:
            first_started.set()
            assert others_queued.wait(10)
        real(rows)

    committer._transaction = transaction  # type: ignore[method-assign]
    errors: dict[str, BaseException | None] = {}

    def insert(uid: str) -> None:
        try:
            committer.insert(_row(uid))
            errors[uid] = None
        except BaseException as exc:
            errors[uid] = exc

    leader = threading.Thread(target=insert, args=("1.9.1",))
    leader.start()
    assert first_started.wait(10)
    followers = [threading.Thread(target=insert, args=(u,)) for u in ("1.9.2", "1.9.3", "1.9.0")]
    for t in followers:
        t.start()
    try:
        wait_until(lambda: len(committer._queue) >= 3, 10, interval=0.01, message="3 queued rows")
    finally:
        others_queued.set()
    for t in [leader, *followers]:
        t.join(10)
    assert batches[0] == ["1.9.1"]
    assert sorted(batches[1]) == ["1.9.0", "1.9.2", "1.9.3"]  # one transaction for three rows
    assert sorted(uid for b in batches[2:] for uid in b) == [
        "1.9.0",
        "1.9.2",
        "1.9.3",
    ]  # one by one
    assert errors["1.9.1"] is None and errors["1.9.2"] is None and errors["1.9.3"] is None
    assert isinstance(errors["1.9.0"], IntegrityError)
    with sessions() as s:
        uids = sorted(s.scalars(select(Instance.sop_instance_uid)))
    assert uids == ["1.9.0", "1.9.1", "1.9.2", "1.9.3"]


def test_group_commit_many_threads(sessions: sessionmaker[Session]) -> None:
    """Sixteen threads inserting at once: every row is committed exactly once."""
    from ctnode.storage import GroupCommit

    committer = GroupCommit(sessions.kw["bind"])
    uids = [f"1.8.{i}.{j}" for i in range(16) for j in range(10)]

    def worker(i: int) -> None:
        for j in range(10):
            committer.insert(_row(f"1.8.{i}.{j}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with sessions() as s:
        assert sorted(s.scalars(select(Instance.sop_instance_uid))) == sorted(uids)


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
