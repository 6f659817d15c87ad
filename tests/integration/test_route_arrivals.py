"""Routing decisions written at ingest as arrivals (one ``route_arrivals`` row per instance) and
expanded by the forwarder into ``route_matches`` rows, on SQLite and PostgreSQL: every reader
sees an arrival as its pending decisions, expansion is idempotent and survives a crash between
its insert and its delete, retention keeps an instance whose arrival is not yet expanded, and
replay adds nothing for it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from ctnode.db.models import Instance, InstanceCommitment, RouteArrival, RouteMatch
from ctnode.db.types import utcnow
from ctnode.dicom.contexts import CT_IMAGE, MR_IMAGE
from ctnode.peers import load_peers
from ctnode.retention import Retention
from ctnode.routing import arrivals as arrivals_module
from ctnode.routing import replay as replay_module
from ctnode.routing.arrivals import expand
from ctnode.routing.decisions import RouteHolder
from ctnode.routing.reader import committed_forwards
from ctnode.routing.replay import replay
from ctnode.routing.rules import load_routes
from ctnode.routing.state import holding, oldest_waiting_age, route_counters, study_routes
from tests.helpers.dicomgen import make_dataset, new_ids
from tests.helpers.procs import write_yaml
from tests.integration.test_routing import NODE, _arrivals, _ingest, _matches, _setup

ARCHIVE = {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 104}
#: CT to pacs with commitment after a quiet study; everything to archive as it arrives.
ROUTES: dict[str, dict[str, Any]] = {
    "ct": {"match": {"modality": ["CT"]}, "stable_after": 30, "to": ["pacs"], "commit": True},
    "all": {"trigger": "instance", "to": ["archive"]},
}
_ARRIVAL_COLUMNS = (
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "node_name",
    "matched_at",
    "decisions",
)


def _saved(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The arrivals as rows to insert again (what a crash before their delete leaves)."""
    return [{c: getattr(a, c) for c in _ARRIVAL_COLUMNS} for a in _arrivals(sessions)]


def _put_back(sessions: sessionmaker[Session], rows: list[dict[str, Any]]) -> None:
    with sessions() as session:
        session.execute(insert(RouteArrival), rows)
        session.commit()


def test_readers_see_an_arrival_as_its_pending_decisions(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Route counters, each study's routing state, the oldest waiting age, what a route commits
    to a destination and what retention must keep read the same before the arrivals are
    expanded as after."""
    write_yaml(tmp_path / "peers" / "archive.yaml", ARCHIVE)
    _, store, forwarder, clock = _setup(tmp_path, engine, ROUTES)
    ids = new_ids()
    ct = [_ingest(store, make_dataset(CT_IMAGE, ids, number=n)) for n in range(3)]
    mr = _ingest(store, make_dataset(MR_IMAGE, ids))
    with sessions() as session:  # pacs committed one CT already (pushed by hand, say)
        session.add(
            InstanceCommitment(
                sop_instance_uid=ct[0], peer="pacs", transaction_uid="1", committed_at=utcnow()
            )
        )
        session.commit()
    clock.now = utcnow() + timedelta(seconds=2)
    uids = [*ct, mr, "1.2.3"]

    def observe() -> tuple[Any, ...]:
        with sessions() as session:
            return (
                route_counters(session),
                study_routes(session, [ids.study], clock.now),
                oldest_waiting_age(session, clock.now),
                committed_forwards(session, "pacs", uids),
                committed_forwards(session, "archive", uids),
                holding(engine, uids),
            )

    before = observe()
    assert len(_arrivals(sessions)) == 4 and _matches(sessions) == []
    assert forwarder.expand() == 4
    assert _arrivals(sessions) == []
    assert len(_matches(sessions)) == 7
    assert observe() == before
    counters, studies, oldest, to_pacs, to_archive, held = before
    assert {name: c.to_json() for name, c in counters.items()} == {
        "ct": {"matched": 3, "forwarded": 0, "failed": 0, "waiting": 3},
        "all": {"matched": 4, "forwarded": 0, "failed": 0, "waiting": 4},
    }
    by_route = {s.route: s for s in studies[ids.study]}
    assert by_route["ct"].state == "waiting" and by_route["ct"].instances == 3
    assert by_route["ct"].committed == 1 and 27 < (by_route["ct"].stable_in or 0) < 28.5
    assert by_route["all"].instances == 4 and by_route["all"].committed is None
    assert 2 <= oldest < 3
    assert to_pacs == dict.fromkeys(ct, "pending") and to_archive == {}
    assert held == {*ct, mr}


def _not_called(*args: Any) -> None:
    raise AssertionError("expanded in Python")


def test_expansion_is_idempotent_and_survives_a_crash_before_its_delete(
    tmp_path: Path,
    engine: Engine,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Arrivals expanded in batches by the database, matched_at kept; the same arrivals back
    (a crash after the insert, before the delete) expand again into nothing new, leaving the
    rows as the forwarder moved them; another node's arrival is left to it; an unreadable one
    is dropped with an error (the batch expanded in Python instead)."""
    _, store, forwarder, _ = _setup(
        tmp_path, engine, {"all": {"trigger": "instance", "to": ["pacs"]}}
    )
    uids = [_ingest(store, make_dataset(CT_IMAGE)) for _ in range(5)]
    saved = _saved(sessions)
    with monkeypatch.context() as patched:  # the database expands them, not the fallback
        patched.setattr(arrivals_module, "_expand_in_python", _not_called)
        assert expand(sessions, NODE, batch=2) == 5  # three transactions
    first = _matches(sessions)
    assert [r.sop_instance_uid for r in first] == uids
    assert [r.matched_at for r in first] == [a["matched_at"] for a in saved]
    assert {(r.state, r.route, r.destination, r.node_name) for r in first} == {
        ("pending", "all", "pacs", NODE)
    }
    with sessions() as session:  # the forwarder took one into a forward meanwhile
        session.execute(
            update(RouteMatch)
            .where(RouteMatch.sop_instance_uid == uids[0])
            .values(state="queued", batch="t")
        )
        session.commit()
    _put_back(sessions, saved)
    assert forwarder.expand() == 5
    again = _matches(sessions)
    assert [(r.id, r.state, r.batch, r.matched_at) for r in again] == [
        (
            r.id,
            "queued" if r.sop_instance_uid == uids[0] else "pending",
            "t" if r.sop_instance_uid == uids[0] else None,
            r.matched_at,
        )
        for r in first
    ]
    assert _arrivals(sessions) == [] and forwarder.expand() == 0

    _put_back(sessions, [dict(saved[0], node_name="node-b", sop_instance_uid="1.2.3.4")])
    assert forwarder.expand() == 0 and len(_arrivals(sessions)) == 1  # node-b's to expand
    assert expand(sessions, None) == 1  # a shared store: any node expands any arrival
    assert {r.sop_instance_uid for r in _matches(sessions)} == {*uids, "1.2.3.4"}

    _put_back(sessions, [dict(saved[0], sop_instance_uid="1.2.3.5", decisions="not json")])
    with capture_logs() as logs:
        assert forwarder.expand() == 1
    assert [(e["event"], e["sop_instance_uid"]) for e in logs] == [
        ("route.decide_failed", "1.2.3.5")
    ]
    assert _arrivals(sessions) == [] and len(_matches(sessions)) == 6


def test_retention_keeps_an_instance_whose_arrival_is_not_expanded(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Committed by a commitment peer: an instance no route matched goes; a routed one stays
    while its decision is an arrival, and while it is pending; delivered, it goes."""
    settings, store, forwarder, _ = _setup(
        tmp_path, engine, {"ct": {"match": {"modality": ["CT"]}, "to": ["pacs"]}}
    )
    routed = _ingest(store, make_dataset(CT_IMAGE))
    unrouted = _ingest(store, make_dataset(MR_IMAGE))
    storage = settings.storage.model_copy(
        update={"delete_after_commit": True, "commitment_peers": ("pacs",)}
    )
    retention = Retention(storage, store, holds=lambda uids: holding(engine, uids))
    assert retention.apply("pacs", [routed, unrouted]) == 1
    assert (settings.storage.store_dir / _path(sessions, routed)).exists()
    assert forwarder.expand() == 1
    assert retention.apply("pacs", [routed]) == 0
    with sessions() as session:
        session.execute(update(RouteMatch).values(state="delivered"))
        session.commit()
    assert retention.apply("pacs", [routed]) == 1


def _path(sessions: sessionmaker[Session], uid: str) -> str:
    with sessions() as session:
        return str(session.scalar(select(Instance.path).where(Instance.sop_instance_uid == uid)))


@pytest.mark.parametrize("blind_read", [False, True])
def test_replay_adds_nothing_for_a_decision_still_in_its_arrival(
    tmp_path: Path,
    engine: Engine,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    blind_read: bool,
) -> None:
    """``routes replay`` of a study whose decisions are still arrivals skips them (no row of
    its own, so the arrival's decision, route and matched_at, is the one expanded); also when
    the arrivals appear only by the time replay writes (its read did not see them)."""
    settings, store, forwarder, _ = _setup(
        tmp_path, engine, {"ct": {"match": {"modality": ["CT"]}, "to": ["pacs"]}}
    )
    ids = new_ids()
    uids = [_ingest(store, make_dataset(CT_IMAGE, ids, number=n)) for n in range(3)]
    if blind_read:
        real, calls = replay_module.arriving, []

        def first_blind(session: Session, wanted: list[str]) -> Any:
            calls.append(wanted)
            return {} if len(calls) == 1 else real(session, wanted)

        monkeypatch.setattr(replay_module, "arriving", first_blind)
    routes = load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False))

    def run() -> Any:
        return replay(
            engine, routes.get("ct"), routes, settings.storage.store_dir, NODE, study=ids.study
        )

    outcome = run()
    assert (outcome.examined, outcome.added, outcome.retried, outcome.skipped) == (3, 0, 0, 3)
    assert _matches(sessions) == []
    saved = _saved(sessions)
    assert forwarder.expand() == 3
    rows = _matches(sessions)
    assert [(r.sop_instance_uid, r.route, r.state) for r in rows] == [
        (uid, "ct", "pending") for uid in uids
    ]
    assert [r.matched_at for r in rows] == [a["matched_at"] for a in saved]
    outcome = run()
    assert (outcome.added, outcome.skipped) == (0, 3) and len(_matches(sessions)) == 3


def test_an_arrival_records_the_routes_as_they_were_when_it_matched(
    tmp_path: Path, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Each arrival lists its destinations with the route's trigger, stable_after and commit
    at the time; a reload (new route set) changes what later arrivals record, not earlier."""
    _, store, _, _ = _setup(tmp_path, engine, {"ct": {"stable_after": 30, "to": ["pacs"]}})
    _ingest(store, make_dataset(CT_IMAGE))
    _ingest(store, make_dataset(CT_IMAGE))
    write_yaml(tmp_path / "routes" / "ct.yaml", {"stable_after": 5, "commit": True, "to": ["pacs"]})
    holder = store.decisions
    assert isinstance(holder, RouteHolder)
    holder.replace(load_routes(tmp_path / "routes", load_peers(tmp_path / "peers", resolve=False)))
    _ingest(store, make_dataset(CT_IMAGE))
    assert [a.decisions for a in _arrivals(sessions)] == [
        '[["ct","pacs","study",30.0,false]]',
        '[["ct","pacs","study",30.0,false]]',
        '[["ct","pacs","study",5.0,true]]',
    ]
