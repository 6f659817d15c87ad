"""The ledger itself (tests/helpers/ledger.py) catches every kind of broken promise: an
oracle that cannot fail proves nothing. Built on a real store and index, no process."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import StorageSettings
from ctnode.db import migrate
from ctnode.db.engine import create_db_engine, session_factory
from ctnode.db.models import Instance, InstanceCommitment
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE
from ctnode.queue.commit_rounds import CommitmentRepository
from ctnode.queue.jobs import ItemOutcome, ItemState, JobKind, JobState, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import write_series
from tests.helpers.ledger import DirectoryPeer, Ledger, NodeView, dataset_of, uid_of


@pytest.fixture
def world(tmp_path: Path) -> tuple[NodeView, Store, sessionmaker[Session], list[Path]]:
    """A data dir with three stored instances and the files they came from."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    sessions = session_factory(engine)
    settings = StorageSettings(data_dir=tmp_path / "data", min_free_bytes=0)  # type: ignore[arg-type]
    store = Store(settings, sessions, "node-a")
    store.prepare()
    files = write_series(tmp_path / "in", 3)
    for path in files:
        reception = store.receive(StoreRequest(CT_IMAGE, uid_of(path), EXPLICIT_VR_LE))
        reception.write(memoryview(dataset_of(path)))
        assert reception.complete().status == 0
        reception.close()
    return NodeView("node", tmp_path / "data", url, "node-a"), store, sessions, files


def _ledger(view: NodeView, files: list[Path]) -> Ledger:
    ledger = Ledger("self-test")
    ledger.add_node(view)
    for path in files:
        ledger.acknowledge(uid_of(path), path)
    return ledger


def test_a_consistent_node_verifies(world: tuple[NodeView, Store, Any, list[Path]]) -> None:
    """The baseline: everything acknowledged is there."""
    view, _, _, files = world
    counts = _ledger(view, files).verify()
    assert counts.acknowledged == 3 and counts.lost == 0


def test_missing_file_is_lost(world: tuple[NodeView, Store, Any, list[Path]]) -> None:
    """An acknowledged instance whose store file vanished counts as lost."""
    view, store, _, files = world
    next(store.root.rglob(f"{uid_of(files[0])}.dcm")).unlink()
    with pytest.raises(AssertionError, match="LOST"):
        _ledger(view, files).verify()


def test_missing_row_is_lost_and_file_is_an_orphan(
    world: tuple[NodeView, Store, sessionmaker[Session], list[Path]],
) -> None:
    """No index row: lost, and its file is reported as an orphan."""
    view, _, sessions, files = world
    with sessions() as session:
        session.execute(delete(Instance).where(Instance.sop_instance_uid == uid_of(files[1])))
        session.commit()
    with pytest.raises(AssertionError, match="LOST") as info:
        _ledger(view, files).verify()
    assert "store files without an index row" in str(info.value)


def test_different_bytes_are_lost(world: tuple[NodeView, Store, Any, list[Path]]) -> None:
    """A stored data set differing from what was sent is not what was promised."""
    view, store, _, files = world
    stored = next(store.root.rglob(f"{uid_of(files[2])}.dcm"))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="LOST") as info:
        _ledger(view, files).verify()
    assert "SHA-256" in str(info.value)


def test_leftovers_are_reported(world: tuple[NodeView, Store, Any, list[Path]]) -> None:
    """A spool file and a temporary link in the store are half-written state."""
    view, store, _, files = world
    (store.spool / "x.part").write_bytes(b"partial")
    stored = next(store.root.rglob("*.dcm"))
    os.link(stored, stored.with_name(f".{stored.name}.1234.tmp"))
    with pytest.raises(AssertionError) as info:
        _ledger(view, files).verify()
    assert "spool not empty" in str(info.value) and "temporary files" in str(info.value)


def test_jobs_duplicates_and_peer(
    world: tuple[NodeView, Store, Any, list[Path]], tmp_path: Path
) -> None:
    """A job not final, a succeeded push missing at its peer, and duplicates over the bound
    are all problems; a failed job needs a reason."""
    view, _, _, files = world
    repo = JobRepository(create_db_engine(view.db_url))
    items = [NewItem(CT_IMAGE, uid_of(p), EXPLICIT_VR_LE, str(p)) for p in files]
    policy = RetryPolicy()
    pending, _ = repo.submit(JobKind.PUSH, "peer", {}, items, policy=policy)
    done, _ = repo.submit(JobKind.PUSH, "peer", {}, items, policy=policy)
    claimed = repo.claim("me", "n")
    assert claimed is not None and claimed.id == pending.id
    outcomes = [ItemOutcome(i.id, ItemState.SUCCEEDED) for i in repo.items(pending.id)]
    repo.record_items(pending.id, "me", outcomes)
    repo.finish(pending.id, "me", JobState.SUCCEEDED)
    peer_dir = tmp_path / "peer"
    peer_dir.mkdir()
    for n, path in enumerate(files[:2]):  # the third never arrived; the first arrived twice
        (peer_dir / f"a{n}").write_bytes(path.read_bytes())
    (peer_dir / "dup").write_bytes(files[0].read_bytes())
    ledger = _ledger(view, files)
    ledger.add_peer("peer", DirectoryPeer(peer_dir))
    ledger.submitted(pending.id, peer="peer", max_duplicates=0)
    ledger.submitted(done.id, peer="peer")
    with pytest.raises(AssertionError) as info:
        ledger.verify()
    text = str(info.value)
    assert f"job {done.id} on node is queued, not final" in text
    assert "1 instance(s) are not at peer 'peer'" in text
    assert "1 duplicate(s) at 'peer', more than the bound of 0" in text
    repo.engine.dispose()


class _Copies:
    """A peer view with fixed copies."""

    def __init__(self, copies: dict[str, int]) -> None:
        self._copies = Counter(copies)

    def copies(self) -> Counter[str]:
        return Counter(self._copies)


def _finished(repo: JobRepository, kind: JobKind, items: list[NewItem], owner: str) -> int:
    """A job of *kind* claimed by *owner*, its items succeeded, finished succeeded."""
    job, _ = repo.submit(kind, "peer", {}, items, policy=RetryPolicy())
    claimed = repo.claim(owner, "n")
    assert claimed is not None and claimed.id == job.id
    outcomes = [ItemOutcome(i.id, ItemState.SUCCEEDED) for i in repo.items(job.id)]
    assert repo.record_items(job.id, owner, outcomes)
    assert repo.finish(job.id, owner, JobState.SUCCEEDED)
    return job.id


def test_move_check(world: tuple[NodeView, Store, Any, list[Path]]) -> None:
    """A succeeded move whose source holds an instance the node has not indexed is a problem,
    and duplicate receptions at the node over the bound are counted and a problem."""
    view, _, _, files = world
    repo = JobRepository(create_db_engine(view.db_url))
    job_id = _finished(repo, JobKind.MOVE, [], "me")
    uids = {uid_of(p) for p in files}
    ledger = _ledger(view, files)
    ledger.add_receptions(_Copies(dict.fromkeys(uids, 1) | {uid_of(files[0]): 3}))
    ledger.submitted(job_id, kind="move", uids=uids | {"1.2.3.999"}, max_duplicates=1)
    with pytest.raises(AssertionError) as info:
        ledger.verify()
    text = str(info.value)
    assert "1 instance(s) the source holds are not indexed on 'node', e.g. 1.2.3.999" in text
    assert "2 duplicate reception(s) at 'node', more than the bound of 1" in text
    repo.engine.dispose()


def test_commit_check(world: tuple[NodeView, Store, Any, list[Path]]) -> None:
    """A succeeded commit job with an instance that has no instance_commitments row, one the
    peer does not hold (a lie), and a transaction of a final job left requested: all
    problems."""
    view, _, _, files = world
    repo = JobRepository(create_db_engine(view.db_url))
    items = [NewItem(CT_IMAGE, uid_of(p), EXPLICIT_VR_LE, str(p)) for p in files]
    job, _ = repo.submit(JobKind.COMMIT, "peer", {}, items, policy=RetryPolicy())
    assert repo.claim("me", "n") is not None
    commits = CommitmentRepository(repo)
    ids = [i.id for i in repo.items(job.id)]
    assert commits.begin(
        job.id,
        "me",
        transaction_uid="2.25.1",
        peer="peer",
        peer_ae_title="PEER",
        item_ids=ids,
        payload={},
    )
    assert commits.mark_requested(job.id, "me", "2.25.1", 60) is not None
    outcomes = [ItemOutcome(i, ItemState.SUCCEEDED) for i in ids]
    assert repo.record_items(job.id, "me", outcomes)
    assert repo.finish(job.id, "me", JobState.SUCCEEDED)
    uids = [uid_of(p) for p in files]
    with repo.sessions() as session:
        for uid in uids[:2]:
            session.add(
                InstanceCommitment(
                    sop_instance_uid=uid,
                    peer="peer",
                    transaction_uid="2.25.1",
                    committed_at=datetime.now(UTC),
                )
            )
        session.commit()
    ledger = _ledger(view, files)
    ledger.add_peer("peer", _Copies({uids[0]: 1, uids[2]: 1}))
    ledger.submitted(job.id, kind="commit", peer="peer", uids=uids)
    with pytest.raises(AssertionError) as info:
        ledger.verify()
    text = str(info.value)
    assert "transaction(s) ['2.25.1'] are still open or requested" in text
    assert f"1 instance(s) have no instance_commitments row for 'peer', e.g. {uids[2]}" in text
    assert f"1 instance(s) recorded as committed are not at peer 'peer', e.g. {uids[1]}" in text
    repo.engine.dispose()
