"""Retry policy: delays, jitter bounds, decisions (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctnode.config import Settings
from ctnode.peers import Peer, PeerConfig
from ctnode.queue.retry import GiveUp, Retry, RetryPolicy, decide


def test_exponential_schedule_capped() -> None:
    """Delays grow by the multiplier from initial_delay and stop at max_delay."""
    policy = RetryPolicy(max_attempts=10, initial_delay=10, multiplier=2, max_delay=60, jitter=0)
    assert [policy.base_delay(n) for n in range(1, 6)] == [10, 20, 40, 60, 60]


@given(
    attempt=st.integers(min_value=1, max_value=200),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_jitter_stays_within_bounds(attempt: int, rand: float, jitter: float) -> None:
    """With jitter j the delay is within [base*(1-j), base*(1+j)] for any random draw."""
    policy = RetryPolicy(initial_delay=5, multiplier=3, max_delay=900, jitter=jitter)
    base = policy.base_delay(attempt)
    delay = policy.delay(attempt, lambda: rand)
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


def test_transient_failures_retry_until_max_attempts() -> None:
    """Transient failures retry; the last allowed attempt gives up with the count."""
    policy = RetryPolicy(max_attempts=3, initial_delay=1, jitter=0)
    assert decide(policy, 1, transient=True, error="refused") == Retry(1.0)
    assert decide(policy, 2, transient=True, error="refused") == Retry(2.0)
    last = decide(policy, 3, transient=True, error="refused")
    assert isinstance(last, GiveUp) and last.reason == "gave up after 3 attempt(s): refused"


def test_permanent_failures_give_up_at_once() -> None:
    """A permanent failure is never retried, whatever the attempt."""
    assert decide(RetryPolicy(), 1, transient=False, error="0x0122") == GiveUp("0x0122")


def test_policy_snapshot_round_trip() -> None:
    """The policy stored with a job reads back identically (unknown keys ignored)."""
    policy = RetryPolicy(7, 2.5, 1.5, 99, 0.2)
    assert RetryPolicy.from_json({**policy.to_json(), "future": 1}) == policy


@pytest.mark.parametrize("attempt", [0, -3])
def test_attempt_zero_or_negative_uses_initial_delay(attempt: int) -> None:
    """Degenerate attempt numbers do not produce fractional exponents."""
    assert RetryPolicy(jitter=0).base_delay(attempt) == 10


def test_a_peer_job_takes_the_peer_retry_else_the_queue_retry(tmp_path: Path) -> None:
    """``RetryPolicy.for_peer``: a peer with its own ``retry`` block gets exactly that policy;
    a peer without one gets ``queue.retry``."""
    settings = Settings(storage={"data_dir": str(tmp_path)}, queue={"retry": {"max_attempts": 7}})
    own = PeerConfig(ae_title="PACS", host="127.0.0.1", port=104, retry={"max_attempts": 2})
    plain = PeerConfig(ae_title="ARCHIVE", host="127.0.0.1", port=104)
    assert RetryPolicy.for_peer(settings, Peer("pacs", own, tmp_path)).max_attempts == 2
    assert RetryPolicy.for_peer(settings, Peer("archive", plain, tmp_path)).max_attempts == 7
