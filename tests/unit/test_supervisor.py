"""The supervisor's pure parts: the status line and the SCP liveness rule."""

from __future__ import annotations

from dataclasses import dataclass

from ctnode.supervisor import QueueFigures, Summary, format_age, scp_problem, status_line


@dataclass
class FakeServer:
    """What the supervisor reads from the SCP server."""

    listening: bool = True
    active: int = 0
    last_loop: float = 100.0
    total_associations: int = 0


def test_status_line_when_healthy() -> None:
    """Healthy: state, active and total associations, peers — singular and plural."""
    assert status_line(Summary(0, 0, 0)) == "ready; 0 associations active, 0 since start; 0 peers"
    assert status_line(Summary(1, 1, 1)) == "ready; 1 association active, 1 since start; 1 peer"
    assert status_line(Summary(2, 153, 4)) == (
        "ready; 2 associations active, 153 since start; 4 peers"
    )


def test_status_line_when_degraded_names_every_problem() -> None:
    """Unhealthy: ``degraded (...)`` lists each problem, each cut to a readable length."""
    line = status_line(Summary(0, 3, 2, problems=("database: refused", "SCP: " + "x" * 500)))
    assert line.startswith("degraded (database: refused; SCP: xxx")
    assert line.endswith("xxx...); 0 associations active, 3 since start; 2 peers")
    assert len(line) < 300


def test_status_line_shows_queue_figures_only_when_a_queue_reports_them() -> None:
    """No queue figures → no queue text at all; with figures, depth and oldest waiting age."""
    assert "queue" not in status_line(Summary(0, 0, 1))
    assert status_line(Summary(0, 0, 1, queue=QueueFigures(3, 125))).endswith(
        "; queue: 3 jobs, oldest waiting 2m05s"
    )
    assert status_line(Summary(0, 0, 1, queue=QueueFigures(0, None))).endswith("; queue: 0 jobs")
    assert status_line(Summary(0, 0, 1, queue=QueueFigures(1, 5))).endswith(
        "; queue: 1 job, oldest waiting 5s"
    )


def test_format_age() -> None:
    """Seconds, minutes+seconds, hours+minutes; never negative."""
    assert format_age(0) == "0s"
    assert format_age(-3) == "0s"
    assert format_age(59.9) == "59s"
    assert format_age(60) == "1m00s"
    assert format_age(3599) == "59m59s"
    assert format_age(7620) == "2h07m"


def test_scp_is_healthy_while_its_accept_loop_turns() -> None:
    """Listening with a recent accept-loop turn: no problem."""
    assert scp_problem(FakeServer(last_loop=100.0), now=101.0, max_silence=5) is None


def test_scp_not_listening_is_a_problem() -> None:
    """An accept loop that stopped (or never started) is a problem."""
    problem = scp_problem(FakeServer(listening=False), now=100.0)
    assert problem == "SCP: the accept loop is not running"


def test_scp_accept_loop_stuck_is_a_problem() -> None:
    """An accept loop that has not turned for longer than the allowed silence is stuck."""
    problem = scp_problem(FakeServer(last_loop=100.0), now=112.0, max_silence=5)
    assert problem == "SCP: the accept loop has been stuck for 12 s"


def test_prewarm_starts_every_pool_thread() -> None:
    """Pre-started pools have all their threads at once (a constant thread count)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ctnode.pools import prewarm

    before = threading.active_count()
    pools = [ThreadPoolExecutor(3), ThreadPoolExecutor(1)]
    try:
        prewarm(pools)
        assert threading.active_count() == before + 4
    finally:
        for pool in pools:
            pool.shutdown()
