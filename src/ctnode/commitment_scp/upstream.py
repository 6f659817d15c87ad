"""Upstream mode: get every upstream peer to commit what it has not committed yet, sending each
instance there once.

Per upstream peer, the requested instances still pending fall in three groups:

* **committed** by the peer already (``instance_commitments``) — nothing to do;
* **left to a route**: a routing decision forwards the instance to that peer with ``commit:
  true`` and has not failed (``pending``, ``queued`` or ``delivered``; read through
  ``routing.reader``). The route's push and commit jobs deliver it and ask for commitment; their
  report fills ``instance_commitments``, which is what the report job looks at;
* **ctnode's own**: everything else — no route covers it, or the route's forward **failed**
  (fallback). These go in one ``push`` job with ``commit`` (as ``ctnode push --commit``) from
  the local store: the push delivers them and its commit job asks the peer for storage
  commitment of exactly what it delivered.

The report job calls ``ask`` at every look while instances are pending, with the ids of the
jobs it queued so far (kept in its progress); an instance already in one of them is not queued
again, so each instance goes once to each peer either way. The first job per transaction and
peer has the idempotency key ``commit-scp-<transaction>-<peer>``, a fallback after a failed
forward ``...-<n>``: a report job that resumes after a crash finds the job it queued, not a
second one. A route's commit job that ends without commitment is not replaced: its instances
stay pending until ``report_within`` (failed 0x0110), as for ctnode's own jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ctnode.commitment_scp.report import Committed
from ctnode.commitment_scp.transactions import IncomingTransaction
from ctnode.config import Settings
from ctnode.errors import NotFound
from ctnode.index import IndexReader
from ctnode.peers import Peer, PeerRegistry
from ctnode.queue.attempt import Attempt
from ctnode.queue.jobs import JobKind, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy
from ctnode.routing.reader import RoutingReader

#: Routing decision states that still lead to the route's commitment (``failed`` does not).
ROUTE_COVERS = frozenset({"pending", "queued", "delivered"})


class UpstreamRequests:
    """Leaves to routes what they commit upstream and queues push-and-commit jobs for the rest
    (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        committed: Committed,
        peers: Callable[[], PeerRegistry],
        *,
        index: IndexReader | None = None,
        routing: RoutingReader | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.committed = committed
        self.peers = peers
        self.index = index or IndexReader(jobs.sessions)
        self.routing = routing or RoutingReader(jobs.sessions)

    def ask(
        self,
        attempt: Attempt,
        tx: IncomingTransaction,
        uids: list[str],
        queued: Mapping[str, Sequence[int]],
        *,
        first: bool,
    ) -> dict[str, list[int]]:
        """Queue a push with commitment of what of *uids* neither an upstream peer committed,
        nor a route commits there, nor a job in *queued* (``{peer: [job ids]}``, from earlier
        looks) already sends; returns *queued* with the jobs queued now. *first*: the report
        job's first look (what is left to routes and unknown peers are logged then)."""
        out = {name: list(ids) for name, ids in queued.items()}
        stored: dict[str, NewItem] | None = None
        for name in tx.upstream:
            peer = self._peer(attempt, name, warn=first)
            if peer is None:
                continue
            done = self.committed.committed_by(name, uids)
            open_uids = [u for u in uids if u not in done]
            if not open_uids:
                continue
            routed = self.routing.committed_forwards(name, open_uids)
            left_to_route = {u for u, state in routed.items() if state in ROUTE_COVERS}
            sent = self._in_jobs(out.get(name, ()))
            if first and left_to_route:
                attempt.log.info(
                    "commit_scp.upstream_routed",
                    transaction_uid=tx.transaction_uid,
                    upstream=name,
                    instances=len(left_to_route),
                )
            todo = {u for u in open_uids if u not in left_to_route and u not in sent}
            if not todo:
                continue
            if stored is None:
                stored = self._stored(uids)
            missing = [stored[u] for u in uids if u in todo and u in stored]
            if missing:
                out.setdefault(name, []).append(
                    self._queue(
                        attempt,
                        tx,
                        peer,
                        missing,
                        len(out.get(name, ())),
                        route_failed=sum(1 for u in todo if routed.get(u) == "failed"),
                    )
                )
        return out

    def _peer(self, attempt: Attempt, name: str, *, warn: bool) -> Peer | None:
        try:
            return self.peers().get(name)
        except NotFound:
            if warn:
                attempt.log.warning(
                    "commit_scp.upstream_unknown",
                    peer=name,
                    detail="commitment_scp.upstream names no peer file: its instances are "
                    "reported failed once report_within has passed",
                )
            return None

    def _queue(
        self,
        attempt: Attempt,
        tx: IncomingTransaction,
        peer: Peer,
        missing: list[NewItem],
        earlier: int,
        *,
        route_failed: int,
    ) -> int:
        """Submit the push-with-commit job of *missing* (the *earlier*-th one for this
        transaction and peer; 0 is the first); returns its id."""
        key = f"commit-scp-{tx.transaction_uid}-{peer.name}"
        if earlier:
            key += f"-{earlier}"
        job, created = self.jobs.submit(
            JobKind.PUSH,
            peer.name,
            {"source": "commitment_scp", "transaction_uid": tx.transaction_uid, "commit": True},
            missing,
            policy=RetryPolicy.for_peer(self.settings, peer),
            node_name=None if self.settings.storage.shared else self.settings.node.name,
            idempotency_key=key[:128],
        )
        attempt.log.info(
            "commit_scp.upstream_asked",
            transaction_uid=tx.transaction_uid,
            upstream=peer.name,
            push_job=job.id,
            instances=len(missing),
            route_failed=route_failed,
            created=created,
        )
        return job.id

    def _in_jobs(self, job_ids: Sequence[int]) -> set[str]:
        out: set[str] = set()
        for job_id in job_ids:
            out.update(i.sop_instance_uid for i in self.jobs.items(job_id) if i.sop_instance_uid)
        return out

    def _stored(self, uids: list[str]) -> dict[str, NewItem]:
        """The stored instances among *uids* as push items (absolute paths), by UID; with
        storage not shared, only those in this node's store (the report job runs here)."""
        root: Path = self.settings.storage.store_dir.absolute()
        node = None if self.settings.storage.shared else self.settings.node.name
        return {
            r.sop_instance_uid: NewItem(
                r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid, str(root / r.path)
            )
            for r in self.index.stored(uids, node_name=node)
        }
