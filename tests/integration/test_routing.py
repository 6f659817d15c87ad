"""Routing on SQLite and PostgreSQL without sockets: decisions committed with the instance row
(an arrival) and expanded by the forwarder, stable detection with a moved clock, forward jobs,
delivery states per item, crash recovery between taking a batch and writing its job, replay."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import Settings
from ctnode.db import migrate
from ctnode.db.engine import create_db_engine
from ctnode.db.models import Instance, RouteArrival, RouteMatch
from ctnode.db.types import utcnow
from ctnode.dicom.contexts import CT_IMAGE, EXPLICIT_VR_LE, MR_IMAGE
from ctnode.peers import load_peers
from ctnode.queue.jobs import ItemOutcome, ItemState, JobState
from ctnode.queue.repository import JobRepository
from ctnode.routing import forwarder as forwarding
from ctnode.routing import replay as replay_module
from ctnode.routing.decisions import RouteHolder
from ctnode.routing.forwarder import Forwarder
from ctnode.routing.replay import replay
from ctnode.routing.rules import load_routes
from ctnode.routing.state import RouteCounts, holding, route_counters, study_routes
from ctnode.storage import Store, StoreRequest
from tests.helpers.dicomgen import encode_dataset, make_dataset, new_ids
from tests.helpers.procs import write_yaml

NODE = "node-a"


def make_settings(tmp: Path, db_url: str) -> Settings:
    """A node in *tmp* (no socket is opened) with its routes in tmp/routes."""
    return Settings(
        node={"ae_title": "CTNODE", "name": NODE},
        storage={"data_dir": str(tmp / "data"), "min_free_bytes": 0},
        database={"url": db_url},
        peers_dir=str(tmp / "peers"),
        routes_dir=str(tmp / "routes"),
    )


def write_peers(tmp: Path, peers: dict[str, dict[str, Any]]) -> None:
    """Peer files in tmp/peers."""
    for name, peer in peers.items():
        write_yaml(tmp / "peers" / f"{name}.yaml", peer)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _setup(
    tmp: Path, engine: Engine, routes: dict[str, dict[str, Any]]
) -> tuple[Settings, Store, Forwarder, Clock]:
    settings = make_settings(tmp, engine.url.render_as_string(hide_password=False))
    write_peers(
        tmp,
        {
            "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            "scanner": {"ae_title": "SCANNER", "host": "127.0.0.1", "port": 104},
        },
    )
    for name, spec in routes.items():
        write_yaml(tmp / "routes" / f"{name}.yaml", spec)
    peers = load_peers(tmp / "peers", resolve=False)
    holder = RouteHolder(load_routes(tmp / "routes", peers), settings.node.name)
    from ctnode.db.engine import session_factory

    store = Store(settings.storage, session_factory(engine), settings.node.name, decisions=holder)
    store.prepare()
    clock = Clock()
    forwarder = Forwarder(settings, engine, JobRepository(engine), lambda: peers, clock=clock)
    return settings, store, forwarder, clock


def _ingest(store: Store, ds: Any, calling_ae: str = "SCANNER", retrieved: bool = False) -> str:
    request = StoreRequest(
        ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT_VR_LE, calling_ae, "127.0.0.1", retrieved
    )
    reception = store.receive(request)
    reception.write(memoryview(encode_dataset(ds)))
    result = reception.complete()
    reception.close()
    assert result.outcome == "stored", result
    return str(ds.SOPInstanceUID)


def _read(sessions: sessionmaker[Session], work: Any) -> Any:
    with sessions() as session:
        return work(session)


def _study_routes(sessions: sessionmaker[Session], studies: list[str], now: Any = None) -> Any:
    with sessions() as session:
        return study_routes(session, studies, now)


def _matches(sessions: sessionmaker[Session]) -> list[RouteMatch]:
    with sessions() as session:
        return list(session.scalars(select(RouteMatch).order_by(RouteMatch.id)))


def _arrivals(sessions: sessionmaker[Session]) -> list[RouteArrival]:
    with sessions() as session:
        return list(session.scalars(select(RouteArrival).order_by(RouteArrival.id)))


def _run_job(repo: JobRepository, job_id: int, fail_uid: str | None = None) -> None:
    """Play a worker: claim the job, record every item (one failed), finish it."""
    job = repo.claim("test-owner", NODE)
    assert job is not None and job.id == job_id
    outcomes = [
        ItemOutcome(
            i.id,
            ItemState.FAILED if i.sop_instance_uid == fail_uid else ItemState.SUCCEEDED,
            error="refused" if i.sop_instance_uid == fail_uid else None,
        )
        for i in repo.items(job_id)
    ]
    assert repo.record_items(job_id, "test-owner", outcomes)
    state = JobState.FAILED if fail_uid else JobState.SUCCEEDED
    assert repo.finish(job_id, "test-owner", state, error="1 failed" if fail_uid else None)


def test_decisions_are_committed_with_the_instance_and_forwarded_once_stable(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Matching instances get an arrival each (non-matching and retrieved ones none), expanded
    by the forwarder into a pending row each, matched when they arrived; the study is not
    forwarded before stable_after, then in one job naming the route; item outcomes become
    delivered/failed; a late instance goes in a job of its own."""
    settings, store, forwarder, clock = _setup(
        tmp_path,
        engine,
        {"ct": {"match": {"modality": ["CT"]}, "stable_after": 30, "to": ["pacs"]}},
    )
    ids = new_ids()
    uids = [_ingest(store, make_dataset(CT_IMAGE, ids, number=n)) for n in range(3)]
    _ingest(store, make_dataset(MR_IMAGE, ids))  # modality MR: no match
    _ingest(store, make_dataset(CT_IMAGE, ids), retrieved=True)  # retrieved: not routed
    arrivals = _arrivals(sessions)
    assert [a.sop_instance_uid for a in arrivals] == uids and _matches(sessions) == []
    assert forwarder.expand() == 3
    assert _arrivals(sessions) == []
    rows = _matches(sessions)
    assert [r.sop_instance_uid for r in rows] == uids
    assert [r.matched_at for r in rows] == [a.matched_at for a in arrivals]
    assert {(r.state, r.route, r.destination, r.trigger) for r in rows} == {
        ("pending", "ct", "pacs", "study")
    }
    newest = max(r.matched_at for r in rows)
    clock.now = newest + timedelta(seconds=29)
    assert forwarder.step() == 0
    # the next pass is timed to the study's due time (at most a second away)
    assert forwarder.next_due == newest + timedelta(seconds=30)
    assert forwarder.pause() == forwarder.interval
    clock.now = newest + timedelta(seconds=29.75)
    assert 0.25 <= forwarder.pause() <= 0.26
    clock.now = newest + timedelta(seconds=29)
    (waiting,) = _study_routes(sessions, [ids.study], clock.now)[ids.study]
    assert waiting.state == "waiting" and 0 < waiting.stable_in <= 1.5
    assert waiting.text().startswith("pacs: stable in")
    clock.advance(2)
    assert forwarder.step() == 1
    assert forwarder.next_due is None and forwarder.pause() == forwarder.interval
    rows = _matches(sessions)
    assert {r.state for r in rows} == {"queued"} and len({r.job_id for r in rows}) == 1
    repo = forwarder.repo
    job = repo.get(rows[0].job_id)
    assert job.payload["route"] == "ct" and job.payload["study"] == ids.study
    assert job.items.total == 3 and job.node_name == settings.node.name
    _run_job(repo, job.id, fail_uid=uids[2])
    forwarder.step()
    states = {r.sop_instance_uid: r.state for r in _matches(sessions)}
    assert states == {uids[0]: "delivered", uids[1]: "delivered", uids[2]: "failed"}
    assert _read(sessions, route_counters)["ct"].to_json() == {
        "matched": 3,
        "forwarded": 2,
        "failed": 1,
        "waiting": 0,
    }
    (failed,) = _study_routes(sessions, [ids.study])[ids.study]
    assert failed.state == "failed" and failed.text() == "pacs: failed — refused"
    late = _ingest(store, make_dataset(CT_IMAGE, ids, number=9))
    clock.advance(31)
    forwarder.step()
    late_row = next(r for r in _matches(sessions) if r.sop_instance_uid == late)
    late_job = repo.get(late_row.job_id)
    assert late_job.items.total == 1
    # replay: the failed one is pending again, delivered and queued ones are skipped
    outcome = replay(
        engine,
        forwarder_route(tmp_path),
        load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False)),
        settings.storage.store_dir,
        settings.node.name,
        study=ids.study,
    )
    # the retrieved instance is new to replay (the index does not say how an instance came)
    assert (outcome.retried, outcome.added) == (1, 1) and outcome.skipped == 3


def forwarder_route(tmp: Path) -> Any:
    return load_routes(tmp / "routes", load_peers(tmp / "peers", resolve=False)).get("ct")


def test_a_batch_taken_before_a_crash_gets_exactly_one_job(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Rows taken into a batch whose job was written but not noted (crash in between) are
    recovered onto that same job (the batch token is its idempotency key)."""
    _, store, forwarder, clock = _setup(
        tmp_path, engine, {"all": {"trigger": "instance", "to": ["pacs"]}}
    )
    for _ in range(4):
        _ingest(store, make_dataset(CT_IMAGE))
    clock.advance(5)
    assert forwarder.step() == 1
    first = _matches(sessions)
    job_id = first[0].job_id
    assert len({r.job_id for r in first}) == 1  # four studies, one association (instance trigger)
    with sessions() as session:  # forget the job id, as if killed before the last step
        session.execute(update(RouteMatch).values(job_id=None))
        session.commit()
    assert forwarder.step() == 1
    assert {r.job_id for r in _matches(sessions)} == {job_id}
    assert len(forwarder.repo.list_jobs()) == 1


def test_an_unknown_destination_fails_the_rows_with_a_reason(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """A destination removed from the peers after the match: rows fail, saying so."""
    _, store, forwarder, clock = _setup(
        tmp_path, engine, {"all": {"trigger": "instance", "to": ["pacs"]}}
    )
    _ingest(store, make_dataset(CT_IMAGE))
    forwarder.peers = lambda: load_peers(tmp_path / "nowhere", resolve=False)
    clock.advance(5)
    forwarder.step()
    (row,) = _matches(sessions)
    assert row.state == "failed" and "not configured" in str(row.error)
    with sessions() as session:
        assert session.scalar(select(Instance.id)) is not None


@pytest.mark.parametrize("skew_minutes", [5, -5])
def test_failed_forwards_are_reconciled_once_whatever_the_database_clock(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session], skew_minutes: int
) -> None:
    """The database's clock (which writes the job's finished_at) minutes ahead of or behind
    this host's: a failed forward is reconciled once (not on every pass), and the same job
    retried and succeeding later is reconciled too."""
    _, store, forwarder, clock = _setup(
        tmp_path, engine, {"all": {"trigger": "instance", "to": ["pacs"]}}
    )
    repo = JobRepository(engine, clock_offset=lambda: timedelta(minutes=skew_minutes))
    forwarder.repo = forwarder.deliveries.repo = repo
    uid = _ingest(store, make_dataset(CT_IMAGE))
    clock.advance(5)
    assert forwarder.step() == 1
    (row,) = _matches(sessions)
    _run_job(repo, row.job_id, fail_uid=uid)
    assert forwarder.reconcile() == 1
    assert forwarder.reconcile() == 0  # not matched again on the next pass
    (row,) = _matches(sessions)
    assert row.state == "failed"
    repo.retry(row.job_id)
    _run_job(repo, row.job_id)
    assert forwarder.reconcile() == 1
    (row,) = _matches(sessions)
    assert row.state == "delivered" and row.error is None
    assert forwarder.reconcile() == 0


def test_routing_reads_do_not_wait_for_the_sqlite_write_lock(tmp_path: Path) -> None:
    """While another connection holds SQLite's write lock (an ingest committing), what routing
    only reads (instances to hold, metrics, pending groups, batches to recover, whether a pass
    can be put off, a pass with nothing to reconcile) is answered without waiting for it."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'ctnode.db'}", busy_timeout=0.2)
    migrate.upgrade(engine)
    try:
        _, store, forwarder, _ = _setup(
            tmp_path, engine, {"all": {"trigger": "instance", "to": ["pacs"]}}
        )
        uid = _ingest(store, make_dataset(CT_IMAGE))
        assert forwarder.expand() == 1
        arriving = _ingest(store, make_dataset(CT_IMAGE))  # its arrival not yet expanded
        writer = sqlite3.connect(tmp_path / "ctnode.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            assert holding(engine, [uid, arriving, "1.2.3"]) == {uid, arriving}
            instances, _ = RouteCounts(engine)._build()
            assert {(s.labels["state"], s.value) for s in instances.samples} >= {("waiting", 2.0)}
            assert len(forwarder.pending_groups()) == 1
            assert forwarder.recover() == 0
            assert forwarder.reconcile() == 0  # nothing ended: the lock is not asked for
            forwarder.shortest_wait, forwarder.last_pass = (lambda: 30.0), time.monotonic()
            assert forwarder.deferrable(utcnow())  # the arrival is streaming in
        finally:
            writer.rollback()
            writer.close()
    finally:
        engine.dispose()


def test_replay_reads_files_without_holding_the_write_lock_and_writes_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: while replay reads the stored files, another connection writes (an ingest)
    without waiting; replay's rows are written in batches, each committed as it fills."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'ctnode.db'}", busy_timeout=0.2)
    migrate.upgrade(engine)
    try:
        settings, store, _, _ = _setup(
            tmp_path, engine, {"other": {"match": {"modality": ["MR"]}, "to": ["pacs"]}}
        )
        write_yaml(tmp_path / "routes" / "ct.yaml", {"match": {"modality": ["CT"]}, "to": ["pacs"]})
        routes = load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False))
        ids = new_ids()
        for n in range(5):
            _ingest(store, make_dataset(CT_IMAGE, ids, number=n))
        seen: list[int] = []
        real = replay_module.read_facts

        def reading(*args: Any, **kwargs: Any) -> Any:
            with sqlite3.connect(tmp_path / "ctnode.db", timeout=0.2) as other:
                other.execute("UPDATE instances SET calling_ae = calling_ae")  # a write
                seen.append(other.execute("SELECT count(*) FROM route_matches").fetchone()[0])
            return real(*args, **kwargs)

        monkeypatch.setattr(replay_module, "read_facts", reading)
        outcome = replay(
            engine,
            routes.get("ct"),
            routes,
            settings.storage.store_dir,
            NODE,
            study=ids.study,
            batch=2,
        )
        assert (outcome.examined, outcome.added, outcome.skipped) == (5, 5, 0)
        assert seen == [0, 0, 2, 2, 4]  # batches of two committed while files are read
    finally:
        engine.dispose()


def test_a_pass_is_put_off_only_while_instances_stream_in_and_none_can_be_due(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While arrivals stream in and none can be due before the next pass, ``tick`` leaves them
    unexpanded (the receive path's commits do not wait for the forwarder); it runs the pass at
    start-up, once the stream pauses, when an arrival or a waiting group could be due by the
    next pass, while a forward is in flight, MAX_DEFER after the last pass, and always without
    a shortest wait or with a shared store."""
    _, store, forwarder, clock = _setup(
        tmp_path,
        engine,
        {"ct": {"match": {"modality": ["CT"]}, "stable_after": 30, "to": ["pacs"]}},
    )
    holder = store.decisions
    assert isinstance(holder, RouteHolder) and holder.shortest_wait() == 30
    forwarder.shortest_wait = holder.shortest_wait
    ids = new_ids()
    first = _ingest(store, make_dataset(CT_IMAGE, ids, number=1))
    (arrival,) = _arrivals(sessions)
    clock.now = arrival.matched_at + timedelta(seconds=0.2)
    assert forwarder.tick() == 0 and _arrivals(sessions) == []  # the first pass always runs
    _ingest(store, make_dataset(CT_IMAGE, ids, number=2))
    (arrival,) = _arrivals(sessions)
    clock.now = arrival.matched_at + timedelta(seconds=0.2)
    assert forwarder.deferrable(clock.now)
    assert forwarder.tick() == 0 and len(_arrivals(sessions)) == 1  # put off
    # the stream paused: the pass runs
    assert not forwarder.deferrable(arrival.matched_at + timedelta(seconds=1.5))
    # a pass is put off for at most MAX_DEFER
    ran = forwarder.last_pass
    assert ran is not None
    forwarder.last_pass = ran - forwarding.MAX_DEFER
    assert not forwarder.deferrable(clock.now)
    forwarder.last_pass = ran
    # a waiting group due by the next pass
    forwarder.next_due = clock.now + timedelta(seconds=0.5)
    assert not forwarder.deferrable(clock.now)
    forwarder.next_due = None
    # no shortest wait known, or a shared store (other nodes decided its arrivals)
    forwarder.shortest_wait = None
    assert not forwarder.deferrable(clock.now)
    forwarder.shortest_wait, forwarder.shared = holder.shortest_wait, True
    assert not forwarder.deferrable(clock.now)
    forwarder.shared = False
    # a route with a shorter wait (instance: the 2 s window) was loaded: an arrival may be
    # due before the next pass once it is a second old; the shortest wait never goes back up
    routes = {"ct": {"match": {"modality": ["CT"]}, "trigger": "instance", "to": ["pacs"]}}
    write_yaml(tmp_path / "routes" / "ct.yaml", routes["ct"])
    holder.replace(load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False)))
    assert holder.shortest_wait() == 2
    monkeypatch.setattr(forwarding, "STREAMING", 5.0)  # (the stream has not paused yet)
    assert forwarder.deferrable(arrival.matched_at + timedelta(seconds=0.5))
    assert not forwarder.deferrable(arrival.matched_at + timedelta(seconds=1.5))
    monkeypatch.undo()
    write_yaml(tmp_path / "routes" / "ct.yaml", {"stable_after": 300, "to": ["pacs"]})
    holder.replace(load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False)))
    assert holder.shortest_wait() == 2
    # a forward in flight (queued rows): every pass runs, so its end is reconciled promptly
    clock.now = arrival.matched_at + timedelta(seconds=31)
    assert forwarder.tick() == 1
    assert {r.state for r in _matches(sessions)} == {"queued"}
    _ingest(store, make_dataset(CT_IMAGE, ids, number=3))
    (late_arrival,) = _arrivals(sessions)
    clock.now = late_arrival.matched_at + timedelta(seconds=0.2)
    assert not forwarder.deferrable(clock.now)
    job_id = _matches(sessions)[0].job_id
    _run_job(forwarder.repo, job_id)
    assert forwarder.tick() == 0
    delivered = {r.sop_instance_uid for r in _matches(sessions) if r.state == "delivered"}
    assert first in delivered and len(delivered) == 2
    _ingest(store, make_dataset(CT_IMAGE, ids, number=4))
    (arrival,) = _arrivals(sessions)
    clock.now = arrival.matched_at + timedelta(seconds=0.2)
    assert forwarder.deferrable(clock.now)  # nothing in flight any more
