"""Forwarding: pending routing decisions become push jobs once their study/series is stable, and
the jobs' item outcomes become delivery states.

One pass (``Forwarder.step``, run off the event loop) does four things, and notes when the
next waiting group becomes due: the next pass starts then (at most ``interval`` later, 1 s, so
new arrivals and ended jobs are seen), so a study is forwarded ``stable_after`` after its last
instance plus one pass, not plus up to a second. While instances stream in and none of them can
be due before the next pass, the pass is put off (``Forwarder.deferrable``: its expansion would
take the write lock the receive path's commits wait for, for nothing yet):

0. **Expand**: the decisions written at ingest (``route_arrivals``, one row per instance)
   become ``route_matches`` rows (``routing.arrivals.expand``), before anything looks at
   pending rows, so that a group is judged on every instance that arrived; the first pass,
   at start-up, expands what a crash left.
1. **Recover**: rows taken into a forward whose job was not yet written (a crash between the two
   steps below) get their job now; the idempotency key is the batch token, so a job written
   just before the crash is found, not duplicated.
2. **Dispatch**: pending rows are grouped by route and destination, and by study (``trigger:
   study``) or series (``series``); a group is ready once its newest match is ``stable_after``
   seconds old (``instance``: once its oldest is ``INSTANCE_WINDOW`` old, so instances arriving
   together share one association). A ready group is taken in one statement (state ``queued``,
   a new batch token; only rows still pending, so two nodes never take the same row), then
   submitted as one push job (``route`` in its payload; ``commit`` makes it push then commit),
   then the job's id is written on the rows.
3. **Reconcile**: rows of forward jobs that ended become ``delivered`` or ``failed`` (with the
   item's error), per instance (``routing.delivery``).

Exactly once per instance and destination: a row exists once per (instance, destination) and
is taken by one batch; a push job that resumes after ``kill -9`` may resend the instances whose
outcome was not yet recorded (bounded by the push's outcome batch). Times are this host's clock
(``matched_at`` was written by this node's receive path, and each node forwards only what its
own store holds unless ``storage.shared``), except that a reconciled row's ``updated_at`` is
the database's clock, the one the job's ``finished_at`` comes from (a failed row is matched
again only when its job ended after it was reconciled, i.e. was retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ctnode.config import Settings
from ctnode.db.engine import session_factory
from ctnode.db.models import Instance, RouteArrival, RouteMatch
from ctnode.db.types import utcnow
from ctnode.logs import get_logger
from ctnode.peers import PeerRegistry
from ctnode.queue.jobs import JobKind, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.routing.arrivals import PENDING, expand
from ctnode.routing.delivery import FAILED, QUEUED, Deliveries
from ctnode.routing.groups import Group, group_pending
from ctnode.routing.state import read_sessions

log = get_logger("ctnode.routing")

#: At most this many instances per forward job (a bigger group goes in several).
MAX_JOB_ITEMS = 5000
#: Seconds past a group's due time at which the pass runs (timestamps are microseconds).
_DUE_MARGIN = 0.005
#: While instances stream in (the newest arrival younger than ``STREAMING``) and none of them
#: can be due before the next pass, a pass is put off (``Forwarder.deferrable``): the receive
#: path's commits do not wait for expansions. At most ``MAX_DEFER`` seconds after the last pass,
#: and while fewer than ``MAX_DEFERRED`` arrivals wait (the readers scan that table).
STREAMING = 1.0
MAX_DEFER = 10.0
MAX_DEFERRED = 5000


class Forwarder:
    """Stable detection, forward jobs and delivery states for this node's routing decisions."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        repo: JobRepository,
        peers: Callable[[], PeerRegistry],
        *,
        interval: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = session_factory(engine)
        #: For the passes' lookups that only read (no SQLite write lock taken or waited for).
        self.readers = read_sessions(engine)
        self.repo = repo
        self.peers = peers
        self.interval = interval
        self.clock = clock
        self.node_name = settings.node.name
        self.shared = settings.storage.shared
        self.store_dir: Path = settings.storage.store_dir.absolute()
        #: Called (from the forwarder's thread) when jobs were submitted: wake the workers.
        self.notify: Callable[[], None] | None = None
        #: Delivery states of ended forward jobs (its ``release``: retention, set by the daemon).
        self.deliveries = Deliveries(
            settings.storage, self.sessions, self.readers, repo, self._mine
        )
        #: When the soonest group still waiting becomes ready (set by each pass; None: none).
        self.next_due: datetime | None = None
        #: The shortest wait of any route the arrivals were decided with (``RouteHolder.
        #: shortest_wait``); None (or a shared store, whose arrivals other nodes decided): a
        #: pass is never put off.
        self.shortest_wait: Callable[[], float] | None = None
        #: When the last pass ran (``time.monotonic``), None before the first.
        self.last_pass: float | None = None

    # ------------------------------------------------------------------ one pass

    def _mine(self) -> ColumnElement[bool]:
        if self.shared:
            return RouteMatch.id.is_not(None)
        return RouteMatch.node_name == self.node_name

    def tick(self) -> int:
        """A pass (``step``), unless it can be put off (``deferrable``); returns jobs submitted."""
        if self.deferrable(self.clock()):
            return 0
        return self.step()

    def deferrable(self, now: datetime) -> bool:
        """True when a pass now would only expand arrivals that cannot be due yet, while more
        are streaming in: no pass yet or for ``MAX_DEFER`` seconds, no forward in flight (queued
        rows), no waiting group due before the next pass, and the arrivals (fewer than
        ``MAX_DEFERRED``, the newest younger than ``STREAMING``) decided by routes that all wait
        longer than until the next pass. Read-only; a wrong True only delays a pass."""
        if self.shortest_wait is None or self.shared or self.last_pass is None:
            return False
        if time.monotonic() - self.last_pass >= MAX_DEFER:
            return False
        horizon = now + timedelta(seconds=self.interval)
        if self.next_due is not None and self.next_due <= horizon:
            return False
        ra, rm = RouteArrival, RouteMatch
        with self.readers() as session:
            if session.scalar(select(rm.id).where(rm.state == QUEUED, self._mine()).limit(1)):
                return False
            count, oldest, newest = session.execute(
                select(func.count(), func.min(ra.matched_at), func.max(ra.matched_at)).where(
                    ra.node_name == self.node_name
                )
            ).one()
        if not count or count >= MAX_DEFERRED:
            return False
        if (now - newest).total_seconds() >= STREAMING:
            return False
        # Read after the arrivals: a set loaded since is already counted in the shortest wait.
        wait = self.shortest_wait()
        return math.isfinite(wait) and oldest + timedelta(seconds=wait) > horizon

    def step(self) -> int:
        """Expand arrivals, recover, dispatch ready groups, reconcile ended jobs; returns jobs
        submitted."""
        self.last_pass = time.monotonic()
        self.expand()
        submitted = self.recover()
        now = self.clock()
        due: datetime | None = None
        for group in self.pending_groups():
            if group.ready(now):
                submitted += self.dispatch(group)
            elif due is None or group.due < due:
                due = group.due
        self.next_due = due
        self.reconcile()
        if submitted and self.notify is not None:
            self.notify()
        return submitted

    def expand(self) -> int:
        """Expand this node's arrivals (every node's with a shared store, like ``_mine``) into
        ``route_matches`` rows; returns how many instances' arrivals were expanded."""
        return expand(self.sessions, None if self.shared else self.node_name, readers=self.readers)

    def pending_groups(self) -> list[Group]:
        """Pending matches, grouped by route, destination, study and series."""
        rm = RouteMatch
        query = (
            select(
                rm.route,
                rm.destination,
                rm.trigger,
                rm.study_instance_uid,
                rm.series_instance_uid,
                rm.commit,
                func.count().label("count"),
                func.max(rm.matched_at).label("newest"),
                func.min(rm.matched_at).label("oldest"),
                func.max(rm.stable_after).label("stable_after"),
            )
            .where(rm.state == PENDING, self._mine())
            .group_by(
                rm.route,
                rm.destination,
                rm.trigger,
                rm.study_instance_uid,
                rm.series_instance_uid,
                rm.commit,
            )
        )
        with self.readers() as session:
            rows = session.execute(query).all()
        return group_pending(rows)

    def _group_filter(self, group: Group) -> list[ColumnElement[bool]]:
        rm = RouteMatch
        out = [
            rm.state == PENDING,
            self._mine(),
            rm.route == group.route,
            rm.destination == group.destination,
            rm.trigger == group.trigger,
            rm.commit == group.commit,
        ]
        if group.study is not None:
            out.append(rm.study_instance_uid == group.study)
        if group.series is not None:
            out.append(rm.series_instance_uid == group.series)
        return out

    def dispatch(self, group: Group) -> int:
        """Take the group's pending rows into batches and submit a job for each."""
        submitted = 0
        while True:
            token = uuid.uuid4().hex
            with self.sessions() as session:
                ids = list(
                    session.scalars(
                        select(RouteMatch.id)
                        .where(*self._group_filter(group))
                        .order_by(RouteMatch.id)
                        .limit(MAX_JOB_ITEMS)
                    )
                )
                if not ids:
                    return submitted
                taken = session.execute(
                    update(RouteMatch)
                    .where(RouteMatch.id.in_(ids), RouteMatch.state == PENDING)
                    .values(state=QUEUED, batch=token, updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
                session.commit()
            if taken:
                submitted += self._submit(token)
            if len(ids) < MAX_JOB_ITEMS:
                return submitted

    def recover(self) -> int:
        """Submit the jobs of batches taken before a crash (idempotent on the batch token)."""
        with self.readers() as session:
            tokens = list(
                session.scalars(
                    select(RouteMatch.batch)
                    .where(
                        RouteMatch.state == QUEUED,
                        RouteMatch.job_id.is_(None),
                        RouteMatch.batch.is_not(None),
                        self._mine(),
                    )
                    .distinct()
                )
            )
        return sum(self._submit(token) for token in tokens if token)

    def _fail(self, session: Session, where: Sequence[ColumnElement[bool]], error: str) -> None:
        session.execute(
            update(RouteMatch)
            .where(*where)
            .values(state=FAILED, error=error, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )

    def _submit(self, token: str) -> int:
        """Write the push job of batch *token* and note its id on the rows; 1 if a job exists."""
        rm = RouteMatch
        with self.sessions() as session:
            rows = session.execute(
                select(rm, Instance)
                .join(Instance, Instance.sop_instance_uid == rm.sop_instance_uid, isouter=True)
                .where(rm.batch == token, rm.state == QUEUED)
                .order_by(Instance.series_instance_uid, Instance.instance_number, rm.id)
            ).all()
            if not rows:
                return 0
            first: RouteMatch = rows[0][0]
            context = {"route": first.route, "destination": first.destination}
            peer = self.peers().peers.get(first.destination)
            if peer is None or "store" not in peer.config.services:
                why = f"peer {first.destination!r} is not configured (or does not offer store)"
                self._fail(session, [rm.batch == token, rm.state == QUEUED], why)
                session.commit()
                log.warning("route.forward_failed", **context, reason=why)
                return 0
            gone = [m.id for m, inst in rows if inst is None or inst.deleted_at is not None]
            if gone:
                self._fail(
                    session, [rm.id.in_(gone)], "removed from the store before it was forwarded"
                )
                session.commit()
            items = [
                NewItem(
                    inst.sop_class_uid,
                    inst.sop_instance_uid,
                    inst.transfer_syntax_uid,
                    str(self.store_dir / inst.path),
                )
                for m, inst in rows
                if inst is not None and inst.deleted_at is None
            ]
        if not items:
            return 0
        studies = sorted({m.study_instance_uid for m, _ in rows})
        payload: dict[str, Any] = {
            "source": "route",
            "route": first.route,
            "study": studies[0] if len(studies) == 1 else None,
            "series": first.series_instance_uid if first.trigger == "series" else None,
        }
        if first.commit:
            payload["commit"] = True
        policy = RetryPolicy.for_peer(self.settings, peer)
        job, created = self.repo.submit(
            JobKind.PUSH,
            first.destination,
            payload,
            items,
            policy=policy,
            node_name=None if self.shared else self.node_name,
            idempotency_key=f"route-{token}",
        )
        with self.sessions() as session:
            session.execute(
                update(rm)
                .where(rm.batch == token, rm.state == QUEUED)
                .values(job_id=job.id, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            session.commit()
        if created:
            log.info(
                "route.forward_submitted",
                **context,
                study_instance_uid=payload["study"],
                studies=len(studies),
                job_id=job.id,
                instances=len(items),
                commit=bool(first.commit),
            )
        return 1

    def reconcile(self, limit: int = 20000) -> int:
        """Delivery states of the forward jobs that ended (``routing.delivery``); returns how
        many rows changed."""
        return self.deliveries.reconcile(limit)

    # ------------------------------------------------------------------ life cycle

    def pause(self) -> float:
        """Seconds until the next pass: until the next group is due (a hair after, so it is
        ready), at most ``interval``."""
        if self.next_due is None:
            return self.interval
        until = (self.next_due - self.clock()).total_seconds() + _DUE_MARGIN
        return min(self.interval, max(_DUE_MARGIN, until))

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until *stop*, each ``pause()`` after the last; a failed pass is logged, not
        raised (and the next one waits ``interval``)."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception as exc:
                self.next_due = None
                log.warning("route.pass_failed", error=str(exc).splitlines()[0] or repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.pause())
