"""What tests write into a node's config and peer files: quick queue settings and peers on
loopback (a Q/R or store peer, a storage commitment peer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Queue settings that make retries quick in tests.
FAST_QUEUE: dict[str, Any] = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {
        "max_attempts": 20,
        "initial_delay": 0.5,
        "multiplier": 1,
        "max_delay": 1,
        "jitter": 0,
    },
}


def peer(
    ae: str, port: int, accept: Sequence[str] = ("echo", "store"), **extra: Any
) -> dict[str, Any]:
    """A peer file for a peer on loopback (by default one that may store to ctnode: move
    results), with short timeouts."""
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        "accept": list(accept),
        "timeouts": {"connect": 3, "acse": 5, "dimse": 10, "network": 10},
        **extra,
    }


def commit_peer(ae: str, port: int, **extra: Any) -> dict[str, Any]:
    """A peer file for a storage commitment peer on loopback that sends its reports on a new
    association (``commitment_report``), with a 30 s ``commit_timeout`` unless given."""
    return peer(ae, port, ["echo", "store", "commitment_report"], **{"commit_timeout": 30, **extra})
