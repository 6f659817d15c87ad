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
same transaction. The database does the work itself with one ``INSERT … SELECT`` over its
JSON functions (``json_each`` on SQLite, ``jsonb_array_elements`` on PostgreSQL: the one
dialect difference here), about 50 µs of CPU per instance of five decisions, a quarter of what
building the rows in Python cost. Expanding again is harmless: a crash before the commit
leaves both tables as they were, and a row already there (from an earlier expansion or
``routes replay``) is left as it is, whatever its state.

**Readers** of routing decisions count an arrival as its decisions in state ``pending``. Where
both tables are read, they are read in one statement (a UNION, the arrival's row marked
``ARRIVAL``): on PostgreSQL each statement of a READ COMMITTED transaction takes its own
snapshot, so an expansion committed between two statements would be seen twice or not at all.
The table holds what arrived since the forwarder's last pass (at most ``MAX_DEFERRED`` rows or
ten seconds of ingest while instances stream in, see ``Forwarder.deferrable``), so reading it
without an index is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, select, text
from sqlalchemy.exc import DBAPIError
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
    decisions: str,
    now: datetime,
) -> dict[str, Any]:
    """The ``route_arrivals`` row of an instance routed *now* to *decisions* (``encode``d)."""
    return {
        "sop_instance_uid": sop_instance_uid,
        "study_instance_uid": study,
        "series_instance_uid": series,
        "node_name": node,
        "matched_at": now,
        "decisions": decisions,
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


#: A batch's expansion done by the database itself (its JSON functions): no Python work per
#: row, so the forwarder's share of a routed instance is the database's own.
_EXPAND_SQL = {
    "sqlite": """
        INSERT INTO route_matches ("route", "destination", "sop_instance_uid",
            "study_instance_uid", "series_instance_uid", "trigger", "stable_after", "commit",
            "node_name", "state", "matched_at", "updated_at")
        SELECT json_extract(d.value, '$[0]'), json_extract(d.value, '$[1]'),
               a.sop_instance_uid, a.study_instance_uid, a.series_instance_uid,
               json_extract(d.value, '$[2]'), json_extract(d.value, '$[3]'),
               json_extract(d.value, '$[4]'), a.node_name, 'pending', a.matched_at,
               a.matched_at
        FROM route_arrivals AS a, json_each(a.decisions) AS d
        WHERE a.id IN :ids
        ORDER BY a.id, d.key
        ON CONFLICT (sop_instance_uid, destination) DO NOTHING
    """,
    "postgresql": """
        INSERT INTO route_matches ("route", "destination", "sop_instance_uid",
            "study_instance_uid", "series_instance_uid", "trigger", "stable_after", "commit",
            "node_name", "state", "matched_at", "updated_at")
        SELECT d.value ->> 0, d.value ->> 1,
               a.sop_instance_uid, a.study_instance_uid, a.series_instance_uid,
               d.value ->> 2, (d.value ->> 3)::float, (d.value ->> 4)::boolean,
               a.node_name, 'pending', a.matched_at, a.matched_at
        FROM route_arrivals AS a
        CROSS JOIN LATERAL jsonb_array_elements(a.decisions::jsonb)
            WITH ORDINALITY AS d(value, n)
        WHERE a.id IN :ids
        ORDER BY a.id, d.n
        ON CONFLICT (sop_instance_uid, destination) DO NOTHING
    """,
}


def expand(
    sessions: sessionmaker[Session],
    node_name: str | None,
    *,
    batch: int = EXPAND_BATCH,
    readers: sessionmaker[Session] | None = None,
) -> int:
    """Expand the arrivals of *node_name* (None: of every node, a shared store) into their
    ``route_matches`` rows, *batch* arrivals per transaction, oldest first, until none is
    left; returns how many arrivals were expanded. Idempotent (see the module's docstring).

    The database expands a batch itself (``_EXPAND_SQL``); if it cannot (a row it cannot
    read: a bug), the batch is expanded again row by row in Python, where a row that cannot be
    read is dropped with an error (its instance stays stored, not routed) rather than stopping
    every later pass. With *readers* (sessions that only read), an empty table is found without
    taking the write lock, which the receive path's commits would wait for."""
    ra = RouteArrival
    query = select(ra.id).order_by(ra.id).limit(batch)
    if node_name is not None:
        query = query.where(ra.node_name == node_name)
    if readers is not None:
        with readers() as session:
            if session.scalar(query.limit(1)) is None:
                return 0
    done = after = 0
    while True:
        with sessions() as session:
            ids = list(session.scalars(query.where(ra.id > after)))
            if not ids:
                return done
            if not _expanded_by_database(session, ids):
                _expand_in_python(session, ids)
            # By key, never by range: on PostgreSQL a smaller key may commit after a larger one.
            session.execute(delete(ra).where(ra.id.in_(ids)))
            session.commit()
        done += len(ids)
        if len(ids) < batch:
            return done
        after = ids[-1]


def _expanded_by_database(session: Session, ids: list[int]) -> bool:
    """Insert the ``route_matches`` rows of arrivals *ids* with the database's JSON functions;
    False (the transaction rolled back) when it cannot."""
    sql = _EXPAND_SQL.get(session.get_bind().dialect.name)
    if sql is None:
        return False
    try:
        session.execute(text(sql).bindparams(bindparam("ids", expanding=True)), {"ids": ids})
    except DBAPIError:
        session.rollback()
        return False
    return True


def _expand_in_python(session: Session, ids: list[int]) -> None:
    """Insert the ``route_matches`` rows of arrivals *ids* decoded here, dropping (with an
    error) an arrival whose decisions cannot be read."""
    ra = RouteArrival
    rows: list[dict[str, Any]] = []
    for arrival in session.execute(
        select(
            ra.sop_instance_uid,
            ra.study_instance_uid,
            ra.series_instance_uid,
            ra.node_name,
            ra.matched_at,
            ra.decisions,
        )
        .where(ra.id.in_(ids))
        .order_by(ra.id)
    ):
        decided = decode(arrival.decisions)
        if decided is None:
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


def arriving(session: Session, sop_instance_uids: Sequence[str]) -> dict[str, list[Decision]]:
    """The decisions of the arrivals of *sop_instance_uids* not yet expanded."""
    out: dict[str, list[Decision]] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), 500):
        for uid, listed in session.execute(
            select(RouteArrival.sop_instance_uid, RouteArrival.decisions).where(
                RouteArrival.sop_instance_uid.in_(uids[start : start + 500])
            )
        ):
            out.setdefault(uid, []).extend(decode(listed) or ())
    return out
