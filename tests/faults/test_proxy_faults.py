"""Network faults between ctnode and a peer, injected by a loopback proxy in front of it.

For each mode — refuse, close at once, black-hole, stall after N bytes, reset after N bytes,
throttle — a push job to the faulty peer runs while a second job goes to a healthy peer (its
own storescp, no proxy) with ``queue.workers: 2``:

* every failed attempt ends within the peer's short timeouts (connect 2 s, ACSE 2 s, DIMSE 3 s,
  network 3 s), so no worker is held longer — writes included: the stall case sends an 8 MB
  instance, far more than the socket buffers hold, so ``sendall`` itself must time out;
* the healthy job completes while the faulty one is still failing (no worker stuck);
* once the proxy passes traffic again the faulty job succeeds with every instance at the peer;
  or, with a peer retry policy of two attempts, it fails with a reason naming the fault —
  which of the two is asserted deliberately for each case.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import make_dataset, write, write_series
from tests.helpers.jobs import job_json, submit_push, wait_job
from tests.helpers.ledger import DirectoryPeer, Ledger, uids_of
from tests.helpers.procs import CtnodeProcess, storescp
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

TIMEOUTS = {"connect": 2, "acse": 2, "dimse": 3, "network": 3}
#: Longest a failed attempt may take: the slowest phase (network write 3 s, DIMSE 3 s) plus the
#: abort and close, plus scheduling slack on a busy machine.
ATTEMPT_BOUND = 9.0
QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 6,
    "retry": {
        "max_attempts": 30,
        "initial_delay": 0.3,
        "multiplier": 1,
        "max_delay": 0.5,
        "jitter": 0,
    },
}
FINAL = {"succeeded", "failed", "cancelled"}


def _peer(ae: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        "accept": ["echo"],
        "timeouts": TIMEOUTS,
        **extra,
    }


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def attempt_durations(report: dict[str, Any]) -> list[float]:
    """Seconds from each claim to the end of that attempt (retry scheduled or final)."""
    out, started = [], None
    for event in report["events"]:
        if event["event"] == "claimed":
            started = _at(event["at"])
        elif event["event"] in ("retry_scheduled", "succeeded", "failed") and started:
            out.append((_at(event["at"]) - started).total_seconds())
            started = None
    return out


def _ended_attempts(report: dict[str, Any]) -> int:
    return sum(1 for e in report["events"] if e["event"] in ("retry_scheduled", "failed"))


# mode -> (proxy settings, what the failed attempts must say)
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "refuse": ({"mode": Mode.REFUSE}, "cannot connect"),
    "close": ({"mode": Mode.CLOSE}, "did not answer the association request"),
    "blackhole": ({"mode": Mode.BLACKHOLE}, "did not answer the association request"),
    "stall": ({"mode": Mode.STALL, "after_bytes": 256 * 1024}, "timed out"),
    "reset": ({"mode": Mode.RESET, "after_bytes": 40_000}, "reset"),
}


def run_case(
    tmp_path: Path,
    ledger: Ledger,
    proxy_settings: dict[str, Any],
    *,
    error: str | None,
    expect: str,
    retry: dict[str, Any] | None = None,
    big: bool = False,
) -> dict[str, Any]:
    """The scenario of the module docstring; returns the faulty job's report."""
    faulty_dir, healthy_dir = tmp_path / "faulty", tmp_path / "healthy"
    files = write_series(tmp_path / "in" / "series", 30)
    if big:  # sorted first: the stall hits while this 8 MB data set is being written
        files.insert(0, write(make_dataset(size=2048), tmp_path / "in" / "BIG.dcm"))
    healthy_files = write_series(tmp_path / "healthy-in", 10)
    with (
        storescp(faulty_dir, ae_title="FAULTY", extra=["+uf"]) as faulty,
        storescp(healthy_dir, ae_title="HEALTHY", extra=["+uf"]) as healthy,
        FaultProxy(faulty.port) as proxy,
    ):
        extra = {"retry": retry} if retry else {}
        node = CtnodeProcess(
            tmp_path / "node",
            config={"queue": QUEUE},
            peers={
                "faulty": _peer("FAULTY", proxy.port, **extra),
                "healthy": _peer("HEALTHY", healthy.port),
            },
        )
        ledger.add_node(node)
        ledger.add_peer("faulty", DirectoryPeer(faulty_dir))
        ledger.add_peer("healthy", DirectoryPeer(healthy_dir))
        proxy.set_mode(**proxy_settings)
        ledger.fault(f"proxy {proxy_settings['mode']}")
        with node:
            job_id = submit_push(node, "faulty", tmp_path / "in")
            if error is not None:  # wait for two failed attempts
                wait_until(
                    lambda: _ended_attempts(job_json(node, job_id)) >= 2,
                    40,
                    interval=0.2,
                    message=lambda: f"two ended attempts: {job_json(node, job_id)}",
                )
            else:  # throttled: wait until it is well under way
                wait_until(lambda: proxy.stats.bytes_up >= 20_000, 40, message="20 kB upstream")
            other = submit_push(node, "healthy", tmp_path / "healthy-in")
            other_report = wait_job(node, other, FINAL, timeout=30)
            assert other_report["state"] == "succeeded", other_report
            during = job_json(node, job_id)
            assert during["state"] != "succeeded", "the faulty job was not delayed by the fault"
            if expect == "succeeded":
                if error is not None:
                    proxy.pass_through()
                    proxy.drop_all()
                report = wait_job(node, job_id, FINAL, timeout=90)
            else:
                report = wait_job(node, job_id, FINAL, timeout=60)
                proxy.pass_through()
        failed_attempts = sum(1 for e in report["events"] if e["event"] == "retry_scheduled")
        ledger.submitted(
            job_id,
            peer="faulty",
            expect=expect,
            uids=uids_of(files),
            # an instance whose response was cut off is sent again: one per failed attempt
            max_duplicates=failed_attempts,
        )
        ledger.submitted(other, peer="healthy", uids=uids_of(healthy_files), max_duplicates=0)
        durations = attempt_durations(report)
        print(f"{proxy_settings}: attempts {durations}, proxy {proxy.stats}")
        counts = ledger.verify()
    assert counts.lost == 0
    failed = [
        e for e in report["events"] if e["event"] in ("retry_scheduled", "failed") and e["message"]
    ]
    if error is not None:
        # The two attempts waited for under the fault name it (a later one may be cut by the
        # recovery itself: drop_all resets the connections the proxy still holds).
        assert len(failed) >= 2, report
        assert all(error in e["message"] for e in failed[:2]), [e["message"] for e in failed]
    assert max(durations) <= ATTEMPT_BOUND, durations
    return report


@pytest.mark.parametrize("case", sorted(CASES))
def test_push_through_a_faulty_network(tmp_path: Path, ledger: Ledger, case: str) -> None:
    """The fault makes attempts fail fast with a reason naming it; a healthy peer's job
    completes meanwhile; after the network recovers the job succeeds."""
    settings, error = CASES[case]
    report = run_case(
        tmp_path, ledger, settings, error=error, expect="succeeded", big=case == "stall"
    )
    assert report["attempts"] >= 3  # at least two failed attempts, then the good one


def test_push_through_a_throttled_link(tmp_path: Path, ledger: Ledger) -> None:
    """A slow link (60 kB/s) is not a failure: the first attempt succeeds, slowly, while the
    healthy peer's job completes."""
    report = run_case(
        tmp_path, ledger, {"mode": Mode.THROTTLE, "rate": 60_000}, error=None, expect="succeeded"
    )
    assert report["attempts"] == 1
    (duration,) = attempt_durations(report)
    assert duration >= 3, "the throttle did not slow the transfer"


def test_black_hole_until_attempts_run_out(tmp_path: Path, ledger: Ledger) -> None:
    """With the peer's retry policy at two attempts, a black-holed peer makes the job fail,
    with a reason naming both the give-up and the fault."""
    report = run_case(
        tmp_path,
        ledger,
        {"mode": Mode.BLACKHOLE},
        error="did not answer the association request",
        expect="failed",
        retry={"max_attempts": 2, "initial_delay": 0.3, "multiplier": 1, "jitter": 0},
    )
    assert report["attempts"] == 2
    assert report["last_error"].startswith("gave up after 2 attempt(s)")
