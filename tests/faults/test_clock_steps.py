"""Wall-clock steps of +/-2 h (libfaketime) while a push holds a lease and an inbound
association is in progress.

Leases are wall-clock timestamps (SQLite: this host's clock; PostgreSQL: the database's
``now()``), timeouts are monotonic. A +2 h step makes every lease taken before it look two hours
expired to the stepped process, a -2 h step makes new leases look two hours long to the others.
Neither may cost a job or an instance:

* SQLite — the one node's clock is stepped +2 h, back, -2 h, back during a push with a 3 s
  lease: its second worker polls for work every 0.2 s but never reclaims its own running job
  (the claim excludes the node's own lease owner); the job succeeds on its first attempt with
  no duplicate; the inbound association spanning the steps stores every instance.
* PostgreSQL — node A (real clock) runs the push; node B shares the database with the same
  ``node.name`` (so it may claim A's jobs) and its clock is stepped the same way: B must not
  steal A's live lease — it compares leases with the database clock, not its own, which
  would see A's lease two hours expired — and an association to B spanning the steps stores
  every instance.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import faketime
from tests.helpers.dicomgen import make_dataset, write, write_series
from tests.helpers.jobs import job_json, submit_push, wait_job
from tests.helpers.ledger import DirectoryPeer, Ledger, uids_of
from tests.helpers.procs import CtnodeProcess, LogReader, storescp
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.senders import SendResult, send_pynetdicom
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _libfaketime() -> None:
    """These tests need libfaketime; they fail (not skip) without it: .ci/run installs it."""
    assert faketime.available(), f"{faketime.LIBFAKETIME} missing: apt-get install faketime"


MODALITY = {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": ["store"]}
QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 3,
    "retry": {"max_attempts": 10, "initial_delay": 0.3, "multiplier": 1, "jitter": 0},
}
FINAL = {"succeeded", "failed", "cancelled"}
#: The steps, applied 1.5 s apart: the clock goes +2 h, back, -2 h, back.
STEPS = (+2, -2, -2, +2)


def _peer(ae: str, port: int) -> dict[str, Any]:
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        # The throttled proxy takes ~11 s to deliver the big data set ctnode has long written.
        "timeouts": {"connect": 3, "acse": 5, "dimse": 30, "network": 30},
    }


#: Bytes per second to the push peer: slow enough that the job spans every step.
THROTTLE = 100_000


def push_files(directory: Path) -> list[Path]:
    """A 1.6 MB instance first, then 20 small ones. Behind a THROTTLE (100 kB/s) link the big
    one takes about 16 s (so the job outlasts the four steps with room to spare), during which
    the attempt records no item outcome (recording one also extends the lease): only the
    heartbeat renews the lease, once a second — so after each step the stepped clock sees the
    lease expired (+2 h) for up to a second while the idle worker polls for work every 0.2 s."""
    return [write(make_dataset(size=900), directory / "BIG.dcm"), *write_series(directory, 20)]


def wait_clock(log: LogReader, hours: float, since: int, timeout: float = 10) -> None:
    """Wait for a log line written after event *since* whose timestamp shows the process's
    clock *hours* away from the real time (proof that the step reached the process)."""

    def shown() -> bool:
        for event in log.events[since:]:
            stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            offset = (stamp - datetime.now(UTC)).total_seconds()
            if abs(offset - hours * 3600) < 120:
                return True
        return False

    wait_until(shown, timeout, message=f"the node's clock to show {hours:+g} h")


class SlowSender:
    """Sends a series over one association, one C-STORE every 0.15 s, in a thread."""

    def __init__(self, port: int, files: list[Path], ledger: Ledger, node: str) -> None:
        self.result: SendResult | None = None

        def run() -> None:
            self.result = send_pynetdicom(
                port,
                files,
                lambda uid, path: ledger.acknowledge(uid, path, node=node, via="slow sender"),
                between=lambda n: time.sleep(0.15),
            )

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> SendResult:
        self.thread.join(60)
        assert self.result is not None
        return self.result


def step_clock(
    clock: faketime.SteppedClock,
    stepped: CtnodeProcess,
    owner: CtnodeProcess,
    job_id: int,
    ledger: Ledger,
) -> None:
    """Apply STEPS 1.5 s apart; after each, the job is still running (the step happened during
    its lease) and the stepped node's log shows the new time."""
    assert stepped.log is not None
    for hours in STEPS:
        time.sleep(1.5)
        since = len(stepped.log.events)
        clock.step(hours)
        ledger.fault(f"clock step {hours:+d} h")
        wait_clock(stepped.log, clock.hours, since)
        assert job_json(owner, job_id)["state"] == "running", "the push ended before the step"


def test_clock_steps_on_one_sqlite_node(tmp_path: Path, ledger: Ledger) -> None:
    """SQLite: the stepped node never reclaims its own running job; the push succeeds on its
    first attempt without duplicates; the association spanning the steps loses nothing."""
    clock = faketime.SteppedClock(tmp_path / "clock")
    pushed = push_files(tmp_path / "push")
    received = write_series(tmp_path / "recv", 45)
    with storescp(tmp_path / "peer", extra=["+uf"]) as server, FaultProxy(server.port) as proxy:
        proxy.set_mode(Mode.THROTTLE, rate=THROTTLE)
        node = CtnodeProcess(
            tmp_path / "node",
            config={"queue": QUEUE},
            peers={"scp": _peer("STORESCP", proxy.port), "modality": MODALITY},
            env=clock.env(),
            command=clock.command,
        )
        ledger.add_node(node)
        ledger.add_peer("scp", DirectoryPeer(tmp_path / "peer"))
        with node:
            assert node.log is not None
            job_id = submit_push(node, "scp", tmp_path / "push")
            node.log.wait_for("job.attempt_started", job=job_id)
            sender = SlowSender(node.port, received, ledger, "node")
            step_clock(clock, node, node, job_id, ledger)
            result = sender.join()
            report = wait_job(node, job_id, FINAL, timeout=60)
            lost_leases = node.log.named("job.lease_lost") + node.log.named("job.abandoned")
        ledger.submitted(job_id, peer="scp", uids=uids_of(pushed), max_duplicates=0)
        counts = ledger.verify()
    assert result.broken is None and len(result.acknowledged) == len(received), result
    assert report["state"] == "succeeded" and report["attempts"] == 1, report
    assert [e["event"] for e in report["events"]].count("claimed") == 1
    assert not lost_leases
    assert counts.lost == 0 and counts.duplicates == 0


def test_stepped_node_does_not_steal_a_live_lease_postgresql(
    tmp_path: Path, ledger: Ledger, fresh_pg_url: str
) -> None:
    """PostgreSQL: node B, whose clock is stepped +/-2 h, shares the database (and the node
    name) with node A running a push; B never claims A's job, which succeeds on its first
    attempt; the association to B spanning the steps loses nothing."""
    clock = faketime.SteppedClock(tmp_path / "clock")
    pushed = push_files(tmp_path / "push")
    received = write_series(tmp_path / "recv", 45)
    config = {"database": {"url": fresh_pg_url}, "queue": QUEUE}
    with storescp(tmp_path / "peer", extra=["+uf"]) as server, FaultProxy(server.port) as proxy:
        proxy.set_mode(Mode.THROTTLE, rate=THROTTLE)
        peers = {"scp": _peer("STORESCP", proxy.port), "modality": MODALITY}
        node_a = CtnodeProcess(tmp_path / "a", config=config, peers=peers)
        node_b = CtnodeProcess(
            tmp_path / "b", config=config, peers=peers, env=clock.env(), command=clock.command
        )
        assert node_a.cli("db", "upgrade").returncode == 0
        ledger.add_node(node_a, "a")
        ledger.add_node(node_b, "b")
        ledger.add_peer("scp", DirectoryPeer(tmp_path / "peer"))
        with node_a:
            assert node_a.log is not None
            job_id = submit_push(node_a, "scp", tmp_path / "push")
            node_a.log.wait_for("job.attempt_started", job=job_id)
            with node_b:
                assert node_b.log is not None
                sender = SlowSender(node_b.port, received, ledger, "b")
                step_clock(clock, node_b, node_a, job_id, ledger)
                result = sender.join()
                report = wait_job(node_a, job_id, FINAL, timeout=60)
                b_attempts = node_b.log.named("job.attempt_started")
        ledger.submitted(job_id, node="a", peer="scp", uids=uids_of(pushed), max_duplicates=0)
        counts = ledger.verify()
    assert result.broken is None and len(result.acknowledged) == len(received), result
    assert report["state"] == "succeeded" and report["attempts"] == 1, report
    claims = [e for e in report["events"] if e["event"] == "claimed"]
    assert len(claims) == 1 and f":{node_a.pid}:" in claims[0]["node"], claims
    assert not b_attempts, b_attempts
    assert counts.lost == 0 and counts.duplicates == 0
