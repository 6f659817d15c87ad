"""Retry policy: a pure function from (attempt, failure kind) to a decision.

``delay(n) = min(max_delay, initial_delay * multiplier ** (n - 1))``, then scaled by a random
factor in ``[1 - jitter, 1 + jitter]``: attempt 1 failing waits about ``initial_delay``, attempt 2
about ``initial_delay * multiplier``, and so on, never more than ``max_delay * (1 + jitter)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ctnode.config import RetrySettings, Settings
from ctnode.peers import Peer


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again, and how often at most."""

    max_attempts: int = 5
    initial_delay: float = 10.0
    multiplier: float = 2.0
    max_delay: float = 600.0
    jitter: float = 0.1

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        """From the ``queue.retry`` (or a peer's ``retry``) settings."""
        return cls(**settings.model_dump())

    @classmethod
    def for_peer(cls, settings: Settings, peer: Peer) -> RetryPolicy:
        """The policy of a job to *peer*: its ``retry``, else ``queue.retry``."""
        return cls.from_settings(peer.config.retry or settings.queue.retry)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetryPolicy:
        """From the snapshot stored with a job (unknown keys ignored)."""
        known = {k: data[k] for k in asdict(cls()) if k in data}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        """Snapshot stored with a job."""
        return asdict(self)

    def base_delay(self, attempt: int) -> float:
        """Delay after failed attempt number *attempt* (1-based), before jitter."""
        exponent = max(0, attempt - 1)
        try:
            raw = self.initial_delay * self.multiplier**exponent
        except OverflowError:
            raw = self.max_delay
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Delay with jitter; *rand* returns a float in [0, 1)."""
        factor = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, self.base_delay(attempt) * factor)


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after *delay* seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop: the job fails with *reason*."""

    reason: str


Decision = Retry | GiveUp


def decide(
    policy: RetryPolicy,
    attempt: int,
    *,
    transient: bool,
    error: str,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to do after attempt number *attempt* failed with *error*."""
    if not transient:
        return GiveUp(error)
    if attempt >= policy.max_attempts:
        return GiveUp(f"gave up after {attempt} attempt(s): {error}")
    return Retry(policy.delay(attempt, rand))
