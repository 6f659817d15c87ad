"""Readers of routing state: counters per route, each study's state per destination, and the
scrape-time metrics built from them (``ctnode routes list``, ``ctnode studies``, ``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine, and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from ctnode.db.engine import READ_ONLY, session_factory
from ctnode.db.models import Instance, InstanceCommitment, RouteMatch
from ctnode.db.types import utcnow
from ctnode.logs import get_logger
from ctnode.metrics import CachedCollector

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
    rows = session.execute(
        select(RouteMatch.route, RouteMatch.state, func.count()).group_by(
            RouteMatch.route, RouteMatch.state
        )
    )
    for route, state, count in rows:
        found.setdefault(route, {})[state] = int(count)
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
    oldest = session.scalar(
        select(func.min(RouteMatch.matched_at)).where(RouteMatch.state == "pending")
    )
    if oldest is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())


def read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: on SQLite their transactions start with a plain BEGIN, so
    they neither take nor wait for the write lock (``READ_ONLY``)."""
    return session_factory(engine.execution_options(**{READ_ONLY: True}))


def holding(engine: Engine, sop_instance_uids: list[str]) -> set[str]:
    """The instances among *sop_instance_uids* routing must keep on disk: a match not yet
    delivered (pending, queued, or failed: a failed forward keeps its source). Read-only."""
    held: set[str] = set()
    with read_sessions(engine)() as session:
        for start in range(0, len(sop_instance_uids), 500):
            held.update(
                session.scalars(
                    select(RouteMatch.sop_instance_uid).where(
                        RouteMatch.sop_instance_uid.in_(sop_instance_uids[start : start + 500]),
                        RouteMatch.state != "delivered",
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
    rm = RouteMatch
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        rows = session.execute(
            select(
                rm.study_instance_uid,
                rm.route,
                rm.destination,
                rm.state,
                func.count(),
                func.max(rm.job_id),
                func.max(rm.matched_at),
                func.max(rm.stable_after),
                func.max(rm.error),
                rm.commit,
                func.count(InstanceCommitment.id),
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
            .where(Instance.study_instance_uid.in_(chunk))
            .group_by(rm.study_instance_uid, rm.route, rm.destination, rm.state, rm.commit)
        ).all()
        for study, route, dest, state, count, job, newest, stable, error, commit, committed in rows:
            entry = groups.setdefault(
                (study, route, dest),
                {"states": {}, "job": None, "newest": None, "stable": 0.0, "error": None},
            )
            entry["states"][state] = int(count)
            entry["committed"] = entry.get("committed", 0) + int(committed)
            entry["commit"] = bool(commit) or entry.get("commit", False)
            if job is not None and (entry["job"] is None or job > entry["job"]):
                entry["job"] = int(job)
            if state == "pending":
                entry["newest"], entry["stable"] = newest, float(stable)
            if state == "failed":
                entry["error"] = error
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
