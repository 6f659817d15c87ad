"""Reading routing decisions from outside routing: which instances a route forwards to a
destination with storage commitment, and how far each got. Nothing here writes.

Used by the commitment SCP's upstream mode (``commitment_scp.upstream``), which leaves to a
route what the route already sends to an upstream peer with ``commit: true``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ctnode.db.models import RouteMatch

_CHUNK = 500


def committed_forwards(
    session: Session, destination: str, sop_instance_uids: Sequence[str]
) -> dict[str, str]:
    """``{sop_instance_uid: state}`` of the decisions forwarding *sop_instance_uids* to
    *destination* with ``commit: true``; state is ``pending``, ``queued``, ``delivered`` or
    ``failed`` (an instance without such a decision is absent)."""
    out: dict[str, str] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), _CHUNK):
        for uid, state in session.execute(
            select(RouteMatch.sop_instance_uid, RouteMatch.state).where(
                RouteMatch.destination == destination,
                RouteMatch.commit.is_(True),
                RouteMatch.sop_instance_uid.in_(uids[start : start + _CHUNK]),
            )
        ):
            out[uid] = state
    return out


class RoutingReader:
    """Reads of routing decisions, each in a new session from *sessions*."""

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self.sessions = sessions

    def committed_forwards(
        self, destination: str, sop_instance_uids: Sequence[str]
    ) -> dict[str, str]:
        """See ``committed_forwards``."""
        with self.sessions() as session:
            return committed_forwards(session, destination, sop_instance_uids)
