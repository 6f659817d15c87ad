"""Node liveness: each ``ctnode run`` process registers in the ``nodes`` table, sends a heartbeat
and says when it stopped cleanly; who is alive is who sent a heartbeat lately and did not stop.

The worker pool uses this to find leases held by processes that are gone (``lease_owners``,
then ``JobRepository.expire_leases``); ``follow`` uses ``live_nodes`` to warn that a queued job
has no node to run it. Times come from the database clock (``queue.rows``).
"""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import select, update

from ctnode.db.models import Job as JobRow
from ctnode.db.models import Node
from ctnode.queue.jobs import JobState
from ctnode.queue.rows import QueueDatabase


class NodeLiveness(QueueDatabase):
    """The ``nodes`` table, and which processes hold the leases of running jobs."""

    def node_started(self, owner: str, name: str, version: str) -> None:
        """Register this process (heartbeats follow)."""
        with self.sessions() as session:
            now = self.now(session)
            session.merge(
                Node(
                    owner=owner,
                    name=name,
                    pid=os.getpid(),
                    version=version,
                    started_at=now,
                    last_seen=now,
                    stopped_at=None,
                )
            )
            session.commit()

    def node_heartbeat(self, owner: str) -> None:
        """This process is alive."""
        with self.sessions() as session:
            now = self.now(session)
            session.execute(update(Node).where(Node.owner == owner).values(last_seen=now))
            session.commit()

    def node_stopped(self, owner: str) -> None:
        """This process stopped cleanly."""
        with self.sessions() as session:
            now = self.now(session)
            session.execute(
                update(Node).where(Node.owner == owner).values(stopped_at=now, last_seen=now)
            )
            session.commit()

    def live_nodes(self, within: float = 30.0) -> list[str]:
        """Owners of nodes that sent a heartbeat within *within* seconds."""
        with self.sessions() as session:
            now = self.now(session)
            return list(
                session.scalars(
                    select(Node.owner).where(
                        Node.stopped_at.is_(None), Node.last_seen >= now - timedelta(seconds=within)
                    )
                )
            )

    def lease_owners(self) -> list[str]:
        """Owners of the leases of running jobs."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(JobRow.lease_owner)
                    .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_owner.is_not(None))
                    .distinct()
                )
            )
