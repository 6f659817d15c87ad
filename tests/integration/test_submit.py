"""``ctnode.submit``: the jobs ``push``, ``commit``, ``query`` and ``move`` write, on SQLite and
PostgreSQL — items, payloads, pinning, retry policy, the peer checks and idempotency."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from ctnode.config import Settings
from ctnode.db.models import Instance
from ctnode.db.types import utcnow
from ctnode.errors import NotFound, UsageError
from ctnode.queue.jobs import ItemOutcome, ItemState, JobKind
from ctnode.queue.repository import JobRepository
from ctnode.queue.wakeup import decode
from ctnode.scu.files import collect_files
from ctnode.scu.move_request import make_request
from ctnode.scu.query_keys import QueryKey
from ctnode.submit import (
    submit_commit,
    submit_move,
    submit_push,
    submit_query,
    wake_address,
)
from tests.helpers.dicomgen import write_series
from tests.helpers.node import make_settings, write_peers

PEERS: dict[str, dict[str, Any]] = {
    # May do everything; may store here and send commitment reports; its own retry policy.
    "pacs": {
        "ae_title": "PACS",
        "accept": ["echo", "store", "commitment_report"],
        "retry": {"max_attempts": 3},
    },
    # May be asked for nothing but C-FIND.
    "finder": {"ae_title": "FINDER", "services": ["find"]},
    # May be asked for nothing but C-STORE.
    "storer": {"ae_title": "STORER", "services": ["store"]},
    # May be asked for everything, but may not call us back with C-STORE.
    "closed": {"ae_title": "CLOSED", "accept": ["echo"]},
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str, engine: Engine) -> Settings:
    """Settings on the migrated database, with the peers above (default queue.retry: 5)."""
    write_peers(
        tmp_path,
        {name: {**peer, "host": "127.0.0.1", "port": 104} for name, peer in PEERS.items()},
    )
    return make_settings(tmp_path, db_url)


@pytest.fixture
def repo(engine: Engine) -> JobRepository:
    """A repository on the same database."""
    return JobRepository(engine, lease_seconds=30)


@pytest.fixture
def woken(settings: Settings) -> Iterator[socket.socket]:
    """A datagram socket standing in for the node's wake channel."""
    settings.storage.run_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(wake_address(settings))
        sock.setblocking(False)
        yield sock


def pokes(sock: socket.socket) -> list[int]:
    """The job ids the node was poked for so far."""
    ids: list[int] = []
    while True:
        try:
            data = sock.recv(1024)
        except BlockingIOError:
            return ids
        decoded = decode(data)
        assert decoded is not None, data
        ids.append(decoded[0])


def test_push_from_a_directory_creates_one_job_with_its_files(
    settings: Settings, tmp_path: Path
) -> None:
    """Every DICOM file under the directory becomes an item, in the order collected, with its
    absolute path; other files are reported and returned as skipped; the job is pinned to this
    node, carries the source paths and the peer's retry policy, and the repository it was
    written through (opened from the settings) reads it back."""
    files = write_series(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    reported: list[str] = []
    submission = submit_push(
        settings, peer="pacs", paths=[tmp_path / "in"], priority=4, report=reported.append
    )
    try:
        repo = submission.repository
        job = submission.job
        assert submission.created
        assert job.kind is JobKind.PUSH and job.peer == "pacs" and job.priority == 4
        assert job.payload == {"source": "files", "paths": [str(tmp_path / "in")]}
        assert job.node_name == settings.node.name
        assert job.max_attempts == 3
        expected, _ = collect_files(files)
        items = repo.items(job.id)
        assert [(i.sop_instance_uid, i.path) for i in items] == [
            (e.sop_instance_uid, e.path) for e in expected
        ]
        assert all(Path(str(i.path)).is_absolute() for i in items)
        assert all(i.state is ItemState.PENDING for i in items)
        assert [s.path for s in submission.skipped] == [str(tmp_path / "in" / "notes.txt")]
        assert reported == [f"skipped {tmp_path / 'in' / 'notes.txt'}: not a DICOM Part 10 file"]
        assert [j.id for j in repo.list_jobs()] == [job.id]
    finally:
        submission.repository.engine.dispose()


def test_push_from_the_store_reads_the_index(
    settings: Settings, repo: JobRepository, tmp_path: Path
) -> None:
    """A push of a stored series sends the indexed files under store_dir; with a shared store
    the job is not pinned to a node, and ``--commit`` is recorded in the payload."""
    with repo.sessions() as session:
        for number, uid in enumerate(("1.2.3.4.5.1", "1.2.3.4.5.2"), start=1):
            session.add(
                Instance(
                    sop_instance_uid=uid,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_instance_uid="1.2.3",
                    series_instance_uid="1.2.3.4",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    instance_number=number,
                    size_bytes=10,
                    sha256="0" * 64,
                    received_at=utcnow(),
                    path=f"1.2.3/1.2.3.4/{uid}.dcm",
                    node_name=settings.node.name,
                )
            )
        session.commit()
    shared = settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"shared": True})}
    )
    submission = submit_push(shared, peer="pacs", series="1.2.3.4", commit=True, repository=repo)
    assert submission.job.payload == {
        "source": "store",
        "study": None,
        "series": "1.2.3.4",
        "commit": True,
    }
    assert submission.job.node_name is None
    root = settings.storage.store_dir.absolute()
    assert [i.path for i in repo.items(submission.job.id)] == [
        str(root / "1.2.3/1.2.3.4/1.2.3.4.5.1.dcm"),
        str(root / "1.2.3/1.2.3.4/1.2.3.4.5.2.dcm"),
    ]
    with pytest.raises(UsageError) as refused:
        submit_push(settings, peer="pacs", study="9.9", repository=repo)
    assert str(refused.value) == (
        "nothing to push: no such study/series in the local store (see `ctnode studies`)"
    )


@pytest.mark.parametrize("kind", ["push", "commit", "query", "move"])
def test_peer_checks_give_the_cli_messages_and_write_nothing(
    settings: Settings, repo: JobRepository, tmp_path: Path, kind: str
) -> None:
    """An unknown peer is NotFound naming the peers directory and the known peers; a peer
    without the service is a UsageError naming its file — the lines ``ctnode`` prints; no job
    is written either way."""
    write_series(tmp_path / "in", 1)

    def submit(peer: str) -> None:
        if kind == "push":
            submit_push(settings, peer=peer, paths=[tmp_path / "in"], repository=repo)
        elif kind == "commit":
            submit_commit(settings, peer=peer, paths=[tmp_path / "in"], repository=repo)
        elif kind == "query":
            submit_query(settings, peer=peer, keys=["PatientID=1"], repository=repo)
        else:
            submit_move(settings, peer=peer, request=make_request("1.2.3"), repository=repo)

    with pytest.raises(NotFound) as unknown:
        submit("nope")
    peers_dir = settings.peers_dir
    assert str(unknown.value) == (
        f"no peer named 'nope' in {peers_dir} (known: closed, finder, pacs, storer); "
        "add nope.yaml to peers_dir"
    )
    service = {"push": "store", "commit": "commit", "query": "find", "move": "move"}[kind]
    without = "storer" if kind == "query" else "finder"
    with pytest.raises(UsageError) as refused:
        submit(without)
    assert str(refused.value) == (
        f"peer {without!r} does not allow {service} (services in {peers_dir / without}.yaml)"
    )
    assert repo.list_jobs() == []


def test_idempotency_key_submits_once(
    settings: Settings, repo: JobRepository, tmp_path: Path, woken: socket.socket
) -> None:
    """A second submission with the same key returns the first job unchanged (created False)
    and does not poke the node; a new key creates and pokes; ``wake=False`` never pokes."""
    write_series(tmp_path / "in", 2)
    first = submit_push(
        settings, peer="pacs", paths=[tmp_path / "in"], idempotency_key="k", repository=repo
    )
    again = submit_push(
        settings, peer="pacs", paths=[tmp_path / "in"], idempotency_key="k", repository=repo
    )
    assert first.created and not again.created
    assert again.job.id == first.job.id and again.job.items.total == 2
    other = submit_move(
        settings, peer="pacs", request=make_request("1.2.3"), idempotency_key="m", repository=repo
    )
    repeated = submit_move(
        settings, peer="pacs", request=make_request("1.2.3"), idempotency_key="m", repository=repo
    )
    assert repeated.job.id == other.job.id and not repeated.created
    quiet = submit_query(settings, peer="pacs", repository=repo, wake=False)
    assert pokes(woken) == [first.job.id, other.job.id]
    assert sorted(j.id for j in repo.list_jobs()) == [first.job.id, other.job.id, quiet.job.id]


def test_query_job_holds_level_keys_and_limit(settings: Settings, repo: JobRepository) -> None:
    """A query job has no items and is not pinned; its payload is what the worker reads: the
    level, the user's keys plus the level's default return keys, and the limit."""
    submission = submit_query(
        settings,
        peer="finder",
        keys=["PatientName=DOE*", "Modality"],
        level="SERIES",
        limit=5,
        priority=2,
        repository=repo,
    )
    job = submission.job
    assert job.kind is JobKind.QUERY and job.items.total == 0 and job.node_name is None
    assert job.priority == 2 and job.max_attempts == 5
    assert job.payload["level"] == "SERIES" and job.payload["limit"] == 5
    keys = {k.keyword: k.value for k in map(QueryKey.from_json, job.payload["keys"])}
    assert keys["PatientName"] == "DOE*" and keys["Modality"] is None
    assert keys["SeriesInstanceUID"] is None
    with pytest.raises(UsageError):
        submit_query(settings, peer="finder", level="NOPE", repository=repo)


def test_move_pins_moves_to_this_node_only(settings: Settings, repo: JobRepository) -> None:
    """A move to this node runs here (it tracks the arrivals) and needs the peer to be allowed
    to store here; a move to another AE may run anywhere."""
    request = make_request("1.2.3", "1.2.3.4")
    here = submit_move(settings, peer="pacs", request=request, repository=repo).job
    assert here.kind is JobKind.MOVE and here.node_name == settings.node.name
    assert here.payload == request.to_payload()
    elsewhere = make_request("1.2.3", destination="OTHER")
    away = submit_move(settings, peer="closed", request=elsewhere, repository=repo).job
    assert away.node_name is None and away.payload == elsewhere.to_payload()
    with pytest.raises(UsageError) as refused:
        submit_move(settings, peer="closed", request=request, repository=repo)
    assert str(refused.value) == (
        "peer 'closed' may not store to this node, so it cannot deliver a move here: add "
        f"store to accept in {settings.peers_dir / 'closed.yaml'}"
    )


def test_commit_of_a_push_job_takes_exactly_its_delivered_instances(
    settings: Settings, repo: JobRepository, tmp_path: Path
) -> None:
    """``commit --job`` asks for the push's delivered items only, runs where the push ran and
    names the push in its payload; a push with nothing delivered, or to another peer, is a
    usage error; a peer that may not report on a new association is warned about."""
    write_series(tmp_path / "in", 3)
    pushed = submit_push(settings, peer="pacs", paths=[tmp_path / "in"], repository=repo).job
    claimed = repo.claim("me", settings.node.name)
    assert claimed is not None and claimed.id == pushed.id
    with pytest.raises(UsageError) as nothing:
        submit_commit(settings, peer="pacs", push_job=pushed.id, repository=repo)
    assert str(nothing.value) == f"nothing to commit: job {pushed.id} delivered no instance"
    items = repo.items(pushed.id)
    outcomes = [
        ItemOutcome(items[0].id, ItemState.SUCCEEDED),
        ItemOutcome(items[1].id, ItemState.FAILED, 0xA700, "out of resources"),
        ItemOutcome(items[2].id, ItemState.WARNING, 0xB000),
    ]
    assert repo.record_items(pushed.id, "me", outcomes)
    job = submit_commit(settings, peer="pacs", push_job=pushed.id, repository=repo).job
    assert job.kind is JobKind.COMMIT and job.node_name == pushed.node_name
    assert job.payload == {"source": "push", "push_job": pushed.id}
    assert [i.sop_instance_uid for i in repo.items(job.id)] == [
        items[0].sop_instance_uid,
        items[2].sop_instance_uid,
    ]
    with pytest.raises(UsageError):
        submit_commit(settings, peer="closed", push_job=pushed.id, repository=repo)
    reported: list[str] = []
    files = submit_commit(
        settings, peer="closed", paths=[tmp_path / "in"], repository=repo, report=reported.append
    ).job
    assert files.items.total == 3 and files.payload["source"] == "files"
    assert reported == [
        "warning: peer 'closed' may not send commitment reports to us: add commitment_report "
        f"to accept in {settings.peers_dir / 'closed.yaml'} (only reports on the N-ACTION's "
        "own association can arrive)"
    ]
    with pytest.raises(UsageError) as ambiguous:
        submit_commit(settings, peer="pacs", repository=repo)
    assert str(ambiguous.value) == "give one of PATH..., --study/--series, or --job PUSH_JOB_ID"
