"""Routing decisions as they arrive: one ``route_arrivals`` row per routed instance, committed
with the instance's row at ingest, later expanded by the forwarder into ``route_matches`` rows.

Why two tables: a ``route_matches`` row costs the receive path three B-tree inserts (its key;
instance and destination, unique, at a random place; state and node), and an instance gets one
row per destination. An arrival is one append to one B-tree (its integer key is its only
index), whatever the number of destinations; its ``decisions`` column lists them, each as the
route was when it matched: ``[[route, destination, trigger, stable_after, commit], ...]``.

**Expansion** (``expand``, run by the forwarder at the start of every pass, so at start-up
too, before it looks at pending groups): arrivals oldest first, ``EXPAND_BATCH`` per
transaction; their ``route_matches`` rows (state ``pending``, ``matched_at`` kept) inserted
with ``ON CONFLICT DO NOTHING`` on instance and destination, then the arrivals deleted, in the
same transaction. Expanding again is harmless: a crash before the commit leaves both tables as
they were, and a row already there (from an earlier expansion or ``routes replay``) is left as
it is, whatever its state.

**Readers** of routing decisions count an arrival as its decisions in state ``pending``. Where
both tables are read, they are read in one statement (a UNION, the arrival's row marked
``ARRIVAL``): on PostgreSQL each statement of a READ COMMITTED transaction takes its own
snapshot, so an expansion committed between two statements would be seen twice or not at all.
The table holds what arrived since the forwarder's last pass (about a second of ingest while
the node runs), so reading it without an index is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session, sessionmaker

from ctnode.db.engine import insert_ignoring_conflicts
from ctnode.db.models import RouteArrival, RouteMatch
from ctnode.logs import get_logger

log = get_logger("ctnode.routing")

PENDING = "pending"
#: The ``state`` an arrival's row has in the readers' UNIONs (its decisions in another column).
ARRIVAL = "arrival"
#: Arrivals expanded per transaction.
EXPAND_BATCH = 1000

_MATCHES = RouteMatch.__table__
assert isinstance(_MATCHES, Table)
_MATCHES_TABLE: Table = _MATCHES  # (typed as a Table inside functions too)
#: The unique constraint of ``route_matches``: one decision per instance and destination.
_UNIQUE = ("sop_instance_uid", "destination")


@dataclass(frozen=True, slots=True)
class Decision:
    """One destination an arriving instance goes to, by one route, as the route then was."""

    route: str
    destination: str
    trigger: str
    stable_after: float
    commit: bool


def encode(decisions: Iterable[Decision]) -> str:
    """The ``decisions`` column of an arrival."""
    return json.dumps(
        [[d.route, d.destination, d.trigger, d.stable_after, d.commit] for d in decisions],
        separators=(",", ":"),
    )


def decode(text: str) -> list[Decision] | None:
    """The decisions of a ``decisions`` column; None if it holds none that can be read."""
    try:
        listed = json.loads(text)
        if not isinstance(listed, list):
            return None
        return [
            Decision(str(route), str(destination), str(trigger), float(stable), bool(commit))
            for route, destination, trigger, stable, commit in listed
        ]
    except (ValueError, TypeError):
        return None


def arrival_row(
    sop_instance_uid: str,
    study: str,
    series: str,
    node: str,
    decisions: Sequence[Decision],
    now: datetime,
) -> dict[str, Any]:
    """The ``route_arrivals`` row of an instance routed *now* to *decisions*."""
    return {
        "sop_instance_uid": sop_instance_uid,
        "study_instance_uid": study,
        "series_instance_uid": series,
        "node_name": node,
        "matched_at": now,
        "decisions": encode(decisions),
    }


def match_row(
    decision: Decision,
    sop_instance_uid: str,
    study: str,
    series: str,
    node: str,
    matched_at: datetime,
) -> dict[str, Any]:
    """A ``route_matches`` row in state pending, matched at *matched_at*; the columns that
    start empty (``batch``, ``job_id``, ``error``) are left to their NULL default."""
    return {
        "route": decision.route,
        "destination": decision.destination,
        "sop_instance_uid": sop_instance_uid,
        "study_instance_uid": study,
        "series_instance_uid": series,
        "trigger": decision.trigger,
        "stable_after": decision.stable_after,
        "commit": decision.commit,
        "node_name": node,
        "state": PENDING,
        "matched_at": matched_at,
        "updated_at": matched_at,
    }


def expand(
    sessions: sessionmaker[Session], node_name: str | None, *, batch: int = EXPAND_BATCH
) -> int:
    """Expand the arrivals of *node_name* (None: of every node, a shared store) into their
    ``route_matches`` rows, *batch* arrivals per transaction, oldest first, until none is
    left; returns how many arrivals were expanded. Idempotent (see the module's docstring)."""
    ra = RouteArrival
    query = (
        select(
            ra.id,
            ra.sop_instance_uid,
            ra.study_instance_uid,
            ra.series_instance_uid,
            ra.node_name,
            ra.matched_at,
            ra.decisions,
        )
        .order_by(ra.id)
        .limit(batch)
    )
    if node_name is not None:
        query = query.where(ra.node_name == node_name)
    done = after = 0
    while True:
        with sessions() as session:
            arrivals = session.execute(query.where(ra.id > after)).all()
            if not arrivals:
                return done
            rows: list[dict[str, Any]] = []
            for arrival in arrivals:
                decided = decode(arrival.decisions)
                if decided is None:  # a bug: the instance stays stored, not routed
                    log.error(
                        "route.decide_failed",
                        sop_instance_uid=arrival.sop_instance_uid,
                        error="its routing decisions cannot be read; dropped",
                    )
                    continue
                rows.extend(
                    match_row(
                        decision,
                        arrival.sop_instance_uid,
                        arrival.study_instance_uid,
                        arrival.series_instance_uid,
                        arrival.node_name,
                        arrival.matched_at,
                    )
                    for decision in decided
                )
            if rows:
                dialect = session.get_bind().dialect.name
                session.execute(insert_ignoring_conflicts(_MATCHES_TABLE, _UNIQUE, dialect), rows)
            # By key, never by range: on PostgreSQL a smaller key may commit after a larger one.
            session.execute(delete(ra).where(ra.id.in_([a.id for a in arrivals])))
            session.commit()
        done += len(arrivals)
        if len(arrivals) < batch:
            return done
        after = arrivals[-1].id


def arriving(session: Session, sop_instance_uids: Sequence[str]) -> dict[str, list[Decision]]:
    """The decisions of the arrivals of *sop_instance_uids* not yet expanded."""
    out: dict[str, list[Decision]] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), 500):
        for uid, text in session.execute(
            select(RouteArrival.sop_instance_uid, RouteArrival.decisions).where(
                RouteArrival.sop_instance_uid.in_(uids[start : start + 500])
            )
        ):
            out.setdefault(uid, []).extend(decode(text) or ())
    return out
