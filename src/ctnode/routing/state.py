"""Readers of routing state: counters per route, each study's state per destination, and the
scrape-time metrics built from them (``ctnode routes list``, ``ctnode studies``, ``/metrics``).

Each counts the decisions of arrivals not yet expanded (``routing.arrivals``) as pending rows,
read in the same statement as the ``route_matches`` rows (a UNION: one snapshot)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import (
    Engine,
    Float,
    Integer,
    Text,
    and_,
    cast,
    false,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session, sessionmaker

from ctnode.db.engine import READ_ONLY, session_factory
from ctnode.db.models import Instance, InstanceCommitment, RouteArrival, RouteMatch
from ctnode.db.types import utcnow
from ctnode.logs import get_logger
from ctnode.metrics import CachedCollector
from ctnode.routing.arrivals import ARRIVAL, PENDING, decode

log = get_logger("ctnode.routing")

_WAITING = ("pending", "queued")


@dataclass(frozen=True, slots=True)
class RouteCounters:
    """Instances a route matched, delivered (forwarded), failed, and still waiting."""

    matched: int = 0
    forwarded: int = 0
    failed: int = 0
    waiting: int = 0

    def to_json(self) -> dict[str, int]:
        """JSON-ready dict."""
        return {
            "matched": self.matched,
            "forwarded": self.forwarded,
            "failed": self.failed,
            "waiting": self.waiting,
        }


def route_counters(session: Session) -> dict[str, RouteCounters]:
    """Counters of every route that ever matched (by name)."""
    found: dict[str, dict[str, int]] = {}
    rm, ra = RouteMatch, RouteArrival
    rows = session.execute(
        union_all(
            select(rm.route, rm.state, func.count()).group_by(rm.route, rm.state),
            # arrivals with the same decisions (the usual case) in one row
            select(ra.decisions, literal(ARRIVAL), func.count()).group_by(ra.decisions),
        )
    )
    for route, state, count in rows:
        if state == ARRIVAL:
            named = [(d.route, PENDING) for d in decode(route) or ()]
        else:
            named = [(route, state)]
        for name, named_state in named:
            by_state = found.setdefault(name, {})
            by_state[named_state] = by_state.get(named_state, 0) + int(count)
    return {
        route: RouteCounters(
            matched=sum(by_state.values()),
            forwarded=by_state.get("delivered", 0),
            failed=by_state.get("failed", 0),
            waiting=sum(by_state.get(s, 0) for s in _WAITING),
        )
        for route, by_state in found.items()
    }


def oldest_waiting_age(session: Session, now: datetime | None = None) -> float:
    """Seconds since the oldest match still waiting to be forwarded (0 if none)."""
    both = union_all(
        select(func.min(RouteMatch.matched_at).label("oldest")).where(RouteMatch.state == PENDING),
        select(func.min(RouteArrival.matched_at).label("oldest")),
    ).subquery()
    oldest: datetime | None = session.scalar(select(func.min(both.c.oldest)))
    if oldest is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())


def read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: on SQLite their transactions start with a plain BEGIN, so
    they neither take nor wait for the write lock (``READ_ONLY``)."""
    return session_factory(engine.execution_options(**{READ_ONLY: True}))


def holding(engine: Engine, sop_instance_uids: list[str]) -> set[str]:
    """The instances among *sop_instance_uids* routing must keep on disk: a match not yet
    delivered (pending, queued, or failed: a failed forward keeps its source), or an arrival
    not yet expanded. Read-only."""
    held: set[str] = set()
    rm, ra = RouteMatch, RouteArrival
    with read_sessions(engine)() as session:
        for start in range(0, len(sop_instance_uids), 500):
            chunk = sop_instance_uids[start : start + 500]
            held.update(
                session.scalars(
                    union_all(
                        select(rm.sop_instance_uid).where(
                            rm.sop_instance_uid.in_(chunk), rm.state != "delivered"
                        ),
                        select(ra.sop_instance_uid).where(ra.sop_instance_uid.in_(chunk)),
                    )
                )
            )
    return held


@dataclass(frozen=True, slots=True)
class StudyRouteState:
    """One study's routing towards one destination (``ctnode studies``)."""

    study_instance_uid: str
    route: str
    destination: str
    #: waiting (until stable), forwarding, delivered, committed, failed
    state: str
    instances: int
    delivered: int
    committed: int | None
    job: int | None
    error: str | None
    #: Seconds until the study counts as stable (state waiting).
    stable_in: float | None

    def to_json(self) -> dict[str, Any]:
        """The ``routes`` entries of ``ctnode studies --json``."""
        return {
            "route": self.route,
            "destination": self.destination,
            "state": self.state,
            "instances": self.instances,
            "delivered": self.delivered,
            "committed": self.committed,
            "job": self.job,
            "error": self.error,
            "stable_in": None if self.stable_in is None else round(self.stable_in, 1),
        }

    def text(self) -> str:
        """``pacs: stable in 12 s``, ``pacs: 120/120 delivered, committed``, ``archive:
        failed — reason``."""
        head = f"{self.destination}: "
        if self.state == "failed":
            return head + f"failed — {self.error or 'see the job'}"
        if self.state == "waiting":
            return head + f"stable in {max(0, round(self.stable_in or 0))} s"
        if self.state == "forwarding":
            return head + f"forwarding {self.delivered}/{self.instances} (job {self.job})"
        out = head + f"{self.delivered}/{self.instances} delivered"
        if self.committed is not None:
            out += (
                ", committed"
                if self.committed >= self.delivered
                else f", {self.committed} committed"
            )
        return out


def study_routes(
    session: Session, studies: Iterable[str], now: datetime | None = None
) -> dict[str, list[StudyRouteState]]:
    """Routing state per destination of each of *studies*."""
    uids = list(dict.fromkeys(studies))
    if not uids:
        return {}
    now = now or utcnow()
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for start in range(0, len(uids), 500):
        rows = session.execute(_study_rows(uids[start : start + 500])).all()
        arrived = [row for row in rows if row.state == ARRIVAL]
        committed = _committed(session, [row.destination for row in arrived])
        for row in rows:
            if row.state != ARRIVAL:
                _add(groups, row.study, row.route, row.destination, row.state, row)
                continue
            # an arrival: its route column holds its decisions, its destination the instance
            for d in decode(row.route) or ():
                done = int((row.destination, d.destination) in committed)
                pending = (1, None, row.newest, d.stable_after, None, d.commit, done)
                _add(groups, row.study, d.route, d.destination, PENDING, pending)
    out: dict[str, list[StudyRouteState]] = {}
    for (study, route, dest), entry in sorted(groups.items()):
        states: dict[str, int] = entry["states"]
        total = sum(states.values())
        delivered = states.get("delivered", 0)
        stable_in = None
        if states.get("failed"):
            state = "failed"
        elif states.get("pending"):
            state = "waiting"
            stable_in = entry["stable"] - (now - entry["newest"]).total_seconds()
        elif states.get("queued"):
            state = "forwarding"
        elif entry["commit"] and entry["committed"] >= delivered:
            state = "committed"
        else:
            state = "delivered"
        out.setdefault(study, []).append(
            StudyRouteState(
                study,
                route,
                dest,
                state,
                total,
                delivered,
                entry["committed"] if entry["commit"] else None,
                entry["job"],
                entry["error"],
                stable_in,
            )
        )
    return out


def _study_rows(studies: list[str]) -> Any:
    """The ``route_matches`` rows of *studies* grouped by study, route, destination, state and
    commit, with each not yet expanded arrival of theirs (state ``ARRIVAL``): one statement."""
    rm, ra = RouteMatch, RouteArrival
    matches = (
        select(
            rm.study_instance_uid.label("study"),
            rm.route.label("route"),
            rm.destination.label("destination"),
            rm.state.label("state"),
            func.count().label("count"),
            func.max(rm.job_id).label("job"),
            func.max(rm.matched_at).label("newest"),
            func.max(rm.stable_after).label("stable"),
            func.max(rm.error).label("error"),
            rm.commit.label("commit"),
            func.count(InstanceCommitment.id).label("committed"),
        )
        .join(Instance, Instance.sop_instance_uid == rm.sop_instance_uid)
        .join(
            InstanceCommitment,
            and_(
                InstanceCommitment.sop_instance_uid == rm.sop_instance_uid,
                InstanceCommitment.peer == rm.destination,
            ),
            isouter=True,
        )
        .where(Instance.study_instance_uid.in_(studies))
        .group_by(rm.study_instance_uid, rm.route, rm.destination, rm.state, rm.commit)
    )
    arrivals = select(
        ra.study_instance_uid,
        ra.decisions,
        ra.sop_instance_uid,
        literal(ARRIVAL),
        literal(1),
        cast(null(), Integer),
        ra.matched_at,
        cast(null(), Float),
        cast(null(), Text),
        false(),
        literal(0),
    ).where(ra.study_instance_uid.in_(studies))
    return union_all(matches, arrivals)


def _committed(session: Session, sop_instance_uids: list[str]) -> set[tuple[str, str]]:
    """(instance, peer) of the commitments of *sop_instance_uids*."""
    out: set[tuple[str, str]] = set()
    for start in range(0, len(sop_instance_uids), 500):
        chunk = sop_instance_uids[start : start + 500]
        out.update(
            (uid, peer)
            for uid, peer in session.execute(
                select(InstanceCommitment.sop_instance_uid, InstanceCommitment.peer).where(
                    InstanceCommitment.sop_instance_uid.in_(chunk)
                )
            )
        )
    return out


def _add(
    groups: dict[tuple[str, str, str], dict[str, Any]],
    study: str,
    route: str,
    destination: str,
    state: str,
    values: Any,
) -> None:
    """Fold one row (count, job, newest, stable_after, error, commit, committed) into the
    study, route and destination's entry."""
    count, job, newest, stable, error, commit, committed = values[-7:]
    entry = groups.setdefault(
        (study, route, destination),
        {"states": {}, "job": None, "newest": None, "stable": 0.0, "error": None},
    )
    entry["states"][state] = entry["states"].get(state, 0) + int(count)
    entry["committed"] = entry.get("committed", 0) + int(committed)
    entry["commit"] = bool(commit) or entry.get("commit", False)
    if job is not None and (entry["job"] is None or job > entry["job"]):
        entry["job"] = int(job)
    if state == PENDING:
        if entry["newest"] is None or newest > entry["newest"]:
            entry["newest"] = newest
        entry["stable"] = max(entry["stable"], float(stable))
    if state == "failed":
        entry["error"] = error


@dataclass(eq=False)
class RouteCounts(CachedCollector):
    """Scrape-time routing metrics: ``ctnode_route_instances{route,state}`` (matched,
    forwarded, failed, waiting) and ``ctnode_route_oldest_waiting_seconds``."""

    engine: Engine

    def collector(self) -> RouteCounts:
        """Itself (registered with ``Metrics.add_collector``)."""
        return self

    def _build(self) -> list[Any]:
        instances = GaugeMetricFamily(
            "ctnode_route_instances",
            "Instances per route: matched, forwarded (delivered), failed, waiting",
            labels=["route", "state"],
        )
        oldest = GaugeMetricFamily(
            "ctnode_route_oldest_waiting_seconds",
            "Age of the oldest routing match waiting for its study/series to be forwarded",
        )
        try:
            with read_sessions(self.engine)() as session:
                for route, counters in sorted(route_counters(session).items()):
                    for state, count in counters.to_json().items():
                        instances.add_metric([route, state], float(count))
                oldest.add_metric([], oldest_waiting_age(session))
        except Exception as exc:
            log.warning("metrics.collect_failed", error=str(exc).splitlines()[0])
        return [instances, oldest]
