"""What the kill -9 tests share: the queue settings that make a restarted node resume quickly,
the final job states, and the rounds (default and on-demand) as test parameters."""

from __future__ import annotations

from typing import Any

import pytest

#: Short leases and retries: a job whose node was killed is reclaimed within seconds.
QUEUE: dict[str, Any] = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {
        "max_attempts": 100,
        "initial_delay": 0.3,
        "multiplier": 1,
        "max_delay": 1,
        "jitter": 0,
    },
}
FINAL = {"succeeded", "failed", "cancelled"}


def kill_rounds(long_sqlite: int, long_postgresql: int, long_timeout: int) -> pytest.MarkDecorator:
    """Parametrize (backend, kills): 3 kills on SQLite and 2 on PostgreSQL by default (300 s
    each); the on-demand variant (``--ondemand``) *long_sqlite* and *long_postgresql*."""
    short = [pytest.mark.timeout(300)]
    long = [pytest.mark.ondemand, pytest.mark.timeout(long_timeout)]
    return pytest.mark.parametrize(
        ("backend", "kills"),
        [
            pytest.param("sqlite", 3, marks=short),
            pytest.param("postgresql", 2, marks=short),
            pytest.param("sqlite", long_sqlite, marks=long),
            pytest.param("postgresql", long_postgresql, marks=long),
        ],
    )
