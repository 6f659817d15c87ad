"""Reading routing decisions from outside routing: which instances a route forwards to a
destination with storage commitment, and how far each got. Nothing here writes.

Used by the commitment SCP's upstream mode (``commitment_scp.upstream``), which leaves to a
route what the route already sends to an upstream peer with ``commit: true``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Text, cast, literal, null, select, union_all
from sqlalchemy.orm import Session

from ctnode.db.models import RouteArrival, RouteMatch
from ctnode.routing.arrivals import ARRIVAL, PENDING, decode

_CHUNK = 500


def committed_forwards(
    session: Session, destination: str, sop_instance_uids: Sequence[str]
) -> dict[str, str]:
    """``{sop_instance_uid: state}`` of the decisions forwarding *sop_instance_uids* to
    *destination* with ``commit: true``; state is ``pending``, ``queued``, ``delivered`` or
    ``failed`` (an instance without such a decision is absent). A decision still in its
    arrival (not yet expanded) is pending; both tables are read in one statement."""
    out: dict[str, str] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    rm, ra = RouteMatch, RouteArrival
    for start in range(0, len(uids), _CHUNK):
        chunk = uids[start : start + _CHUNK]
        for uid, state, decisions in session.execute(
            union_all(
                select(rm.sop_instance_uid, rm.state, cast(null(), Text)).where(
                    rm.destination == destination,
                    rm.commit.is_(True),
                    rm.sop_instance_uid.in_(chunk),
                ),
                select(ra.sop_instance_uid, literal(ARRIVAL), ra.decisions).where(
                    ra.sop_instance_uid.in_(chunk)
                ),
            )
        ):
            if state != ARRIVAL:
                out[uid] = state
            elif any(d.destination == destination and d.commit for d in decode(decisions) or ()):
                out[uid] = PENDING
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
