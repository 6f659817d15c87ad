"""Upstream mode: ask every upstream peer to commit what it has not committed yet.

For each peer in ``commitment_scp.upstream`` lacking a commitment of some of the requested
instances, one ``push`` job with ``commit`` (as ``ctnode push --commit``) is queued for those
instances from the local store: the push delivers them and its commit job asks the peer for
storage commitment of exactly what it delivered. Their commitments land in
``instance_commitments`` (the usual report intake), which is what the report job looks at. One
push per transaction and peer (idempotency key), so a report job that looks again queues
nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from ctnode.commitment_scp.report import Committed
from ctnode.commitment_scp.transactions import IncomingTransaction
from ctnode.config import Settings
from ctnode.db.models import Instance
from ctnode.errors import NotFound
from ctnode.peers import PeerRegistry
from ctnode.queue.attempt import Attempt
from ctnode.queue.jobs import JobKind, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy


class UpstreamRequests:
    """Queues push-and-commit jobs to the upstream peers (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        committed: Committed,
        peers: Callable[[], PeerRegistry],
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.committed = committed
        self.peers = peers

    def ask(self, attempt: Attempt, tx: IncomingTransaction, uids: list[str]) -> None:
        """Queue a push with commitment of *uids* to every upstream peer lacking them."""
        items = self._stored(uids)
        for name in tx.upstream:
            try:
                peer = self.peers().get(name)
            except NotFound:
                attempt.log.warning(
                    "commit_scp.upstream_unknown",
                    peer=name,
                    detail="commitment_scp.upstream names no peer file: its instances are "
                    "reported failed once report_within has passed",
                )
                continue
            done = self.committed.committed_by(name, uids)
            missing = [item for item in items if item.sop_instance_uid not in done]
            if not missing:
                continue
            job, created = self.jobs.submit(
                JobKind.PUSH,
                name,
                {
                    "source": "commitment_scp",
                    "transaction_uid": tx.transaction_uid,
                    "commit": True,
                },
                missing,
                policy=RetryPolicy.from_settings(peer.config.retry or self.settings.queue.retry),
                node_name=None if self.settings.storage.shared else self.settings.node.name,
                idempotency_key=f"commit-scp-{tx.transaction_uid}-{name}"[:128],
            )
            attempt.log.info(
                "commit_scp.upstream_asked",
                transaction_uid=tx.transaction_uid,
                upstream=name,
                push_job=job.id,
                instances=len(missing),
                created=created,
            )

    def _stored(self, uids: list[str]) -> list[NewItem]:
        root: Path = self.settings.storage.store_dir.absolute()
        out: list[NewItem] = []
        with self.jobs.sessions() as session:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                for row in session.scalars(
                    select(Instance).where(
                        Instance.sop_instance_uid.in_(chunk), Instance.deleted_at.is_(None)
                    )
                ):
                    out.append(
                        NewItem(
                            row.sop_class_uid,
                            row.sop_instance_uid,
                            row.transfer_syntax_uid,
                            str(root / row.path),
                        )
                    )
        return out
