"""Whether a job's peer offers the outbound service the job needs (its peer file's
``services``), and the permanent result of an attempt when it does not."""

from __future__ import annotations

from ctnode.peers import OutboundService, Peer
from ctnode.queue.attempt import AttemptResult, Outcome


def service_refused(
    peer: Peer, service: OutboundService, *, name_file: bool = False
) -> AttemptResult | None:
    """None when *peer* lists *service*; else the PERMANENT result that says so (naming the
    peer file with *name_file*)."""
    if service in peer.config.services:
        return None
    where = f" ({peer.path})" if name_file else ""
    return AttemptResult(
        Outcome.PERMANENT,
        error=f"peer {peer.name!r} does not list {service!r} in its services{where}",
    )
