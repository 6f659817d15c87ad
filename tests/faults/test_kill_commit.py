"""kill -9 of ``ctnode run`` at random points of storage commitment jobs, restarted each time.

The Storage Commitment SCP is a real Orthanc. Each job asks about a fresh series (40-100
instances) that was stored to Orthanc first, sometimes less one or two instances (the first
report then fails them with 0x0112 and the next round pushes them again). Orthanc sends its
N-EVENT-REPORT on a new association to the host/port it has for CTNODE: a throttling proxy
(3-6 KB/s) in front of ctnode's port, so the report takes a second or more to arrive. Each kill
lands, at random, in one of three phases:

* ``request`` — 0-300 ms after the attempt started: before or while the round is persisted,
  the failed instances are pushed again, or the N-ACTION is sent;
* ``waiting`` — after the N-ACTION was accepted (``commit.requested``), before Orthanc's report
  association opens;
* ``report`` — while the report association is open (Orthanc sends it into a dead node).

What docs/commitment.md promises, and this test asserts:

* a round interrupted before the N-ACTION was confirmed (transaction ``open``) is replaced at
  once after the restart (the dead lease is expired, the attempt starts a new round; the old
  transaction is ``superseded``);
* a report that Orthanc delivers after the restart is matched (transaction ``reported``); one
  that it tried to deliver while ctnode was dead is not sent again, so the waiting job's deadline
  (``commit_timeout``, fired at the next start if it passed meanwhile) expires the transaction
  and the next round asks again with a new Transaction UID — never waiting for ever;
* at the end every job succeeded (``max_attempts`` is ample and Orthanc holds everything after
  the re-push), no transaction of a job is left ``open`` or ``requested``, a job's last
  transaction is ``reported`` with event type 1, expired transactions are at most the kills that
  hit the job (a report is only missed when ctnode was killed), transactions are at most one per
  kill plus the rounds an undisturbed job needs, and every committed instance has an
  ``instance_commitments`` row and really is in Orthanc (``Ledger``, ``JOB_CHECKS["commit"]``).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import job_json, submit_commit, wait_job
from tests.helpers.ledger import Ledger, OrthancPeer, uids_of
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess, run_tool
from tests.helpers.proxy import FaultProxy, Mode

#: Seconds a requested transaction waits for its report (well above the ~1-3 s a report takes
#: through the throttle, so only a kill makes one expire).
COMMIT_TIMEOUT = 8
QUEUE = {
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
PHASES = ("request", "waiting", "report")


def orthanc_peer(port: int) -> dict[str, Any]:
    """Orthanc as commitment (and store, for the re-push) peer; reports on a new association."""
    return {
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": port,
        "accept": ["echo", "store", "commitment_report"],
        "timeouts": {"connect": 3, "acse": 5, "dimse": 10, "network": 10},
        "commit_timeout": COMMIT_TIMEOUT,
        "commit_linger": 0,
    }


def store_to(orthanc: Orthanc, files: list[Path]) -> None:
    """Give Orthanc the files (DCMTK storescu)."""
    sent = run_tool(
        [
            "storescu",
            "-aec",
            orthanc.ae_title,
            "127.0.0.1",
            str(orthanc.dicom_port),
            *map(str, files),
        ]
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr


def transactions(node: CtnodeProcess, job_id: int) -> list[dict[str, Any]]:
    """The job's commitment transactions, oldest first."""
    report = job_json(node, job_id)
    return list((report.get("commitment") or {}).get("transactions") or [])


def kill_in_phase(
    node: CtnodeProcess, proxy: FaultProxy, job_id: int, phase: str, rng: random.Random
) -> float:
    """Wait for *phase* of the running job and kill -9 the node at a random point of it;
    returns the delay into the phase (a phase that never comes is cut short at its timeout)."""
    assert node.log is not None
    node.log.wait_for("job.attempt_started", timeout=30, job=job_id)
    delay = 0.0
    try:
        if phase == "request":
            delay = rng.uniform(0.0, 0.3)
        elif phase == "waiting":
            node.log.wait_for("commit.requested", timeout=15, job=job_id)
            delay = rng.uniform(0.0, 0.4)
        else:
            before = sum(proxy.stats.accepted.values())
            deadline = time.monotonic() + 15
            while sum(proxy.stats.accepted.values()) == before:
                if time.monotonic() > deadline:
                    raise TimeoutError("no report association")
                time.sleep(0.01)
            delay = rng.uniform(0.0, 1.2)
    except TimeoutError as exc:
        print(f"phase {phase} did not come ({exc}); killing now")
    time.sleep(delay)
    node.kill()
    return delay


def commit_kill_rounds(
    tmp_path: Path, ledger: Ledger, rng: random.Random, kills: int, db_url: str | None
) -> None:
    """Kill the node *kills* times while a commit job is not final (a new job for a new series
    whenever the current one is). *db_url* None: SQLite in the data dir."""
    config: dict[str, Any] = {"queue": QUEUE}
    if db_url:
        config["database"] = {"url": db_url}
    node = CtnodeProcess(tmp_path / "node", config=config)
    if db_url:
        assert node.cli("db", "upgrade").returncode == 0
    with FaultProxy(node.port) as proxy:
        proxy.set_mode(Mode.THROTTLE, rate=rng.uniform(3e3, 6e3))
        modality = {"AET": "CTNODE", "Host": "127.0.0.1", "Port": proxy.port}
        with Orthanc(modalities={"ctnode": modality}) as orthanc:
            node.write_peer("orthanc", orthanc_peer(orthanc.dicom_port))
            ledger.add_node(node)
            ledger.add_peer("orthanc", OrthancPeer(orthanc))
            jobs: dict[int, set[str]] = {}
            held_back: dict[int, int] = {}
            kills_in: Counter[int] = Counter()
            at_kill: dict[int, list[dict[str, str]]] = {}
            phases: Counter[str] = Counter()
            current: int | None = None
            interrupted = tries = 0
            first_phase = rng.randrange(len(PHASES))
            try:
                while interrupted < kills:
                    tries += 1
                    assert tries <= 3 * kills + 5, "the kills keep missing the unfinished job"
                    if current is None or job_json(node, current)["state"] in FINAL:
                        directory = tmp_path / f"series{len(jobs)}"
                        files = write_series(directory, rng.randint(40, 100), size=16)
                        missing = rng.choice([0, 0, 1, 2])
                        store_to(orthanc, files[missing:])
                        current = submit_commit(node, "orthanc", directory)
                        jobs[current] = set(uids_of(files))
                        held_back[current] = missing
                    node.start()
                    # The phases in turn (from a random one): a default run of 3 kills
                    # covers each.
                    phase = PHASES[(first_phase + interrupted) % len(PHASES)]
                    delay = kill_in_phase(node, proxy, current, phase, rng)
                    state = job_json(node, current)["state"]
                    txs = transactions(node, current)
                    if state in ("running", "waiting", "queued"):
                        interrupted += 1
                        kills_in[current] += 1
                        phases[phase] += 1
                        at_kill.setdefault(current, []).append(
                            {t["transaction_uid"]: t["state"] for t in txs}
                        )
                        ledger.fault(f"kill -9 commit {phase}")
                    else:
                        ledger.fault("kill -9 (idle)")
                    print(
                        f"kill {tries}: job {current} {state}, phase {phase} +{delay * 1000:.0f} "
                        f"ms; transactions {[t['state'] for t in txs]}"
                    )
                node.start()
                for job_id in jobs:
                    wait_job(node, job_id, FINAL, timeout=120)
            finally:
                node.stop()
            for job_id, uids in jobs.items():
                ledger.submitted(job_id, kind="commit", peer="orthanc", uids=uids)
            counts = ledger.verify()
    outcomes: Counter[str] = Counter()
    for job_id in jobs:
        report = job_json(node, job_id)
        txs = report["commitment"]["transactions"]
        final = {t["transaction_uid"]: t for t in txs}
        assert txs[-1]["state"] == "reported" and txs[-1]["event_type"] == 1, txs
        expired = [t for t in txs if t["state"] == "expired"]
        assert len(expired) <= kills_in[job_id], (job_id, kills_in[job_id], txs)
        rounds_needed = 1 + (1 if held_back[job_id] else 0)
        assert len(txs) <= rounds_needed + kills_in[job_id], (job_id, txs)
        events = [e["event"] for e in report["events"]]
        if held_back[job_id]:
            assert "commit_repushed" in events, events
        for snapshot in at_kill.get(job_id, []):
            for uid, state in snapshot.items():
                end = final[uid]["state"]
                if state == "requested":
                    # A report delivered after the restart is matched; one lost with the dead
                    # node is replaced by a new request when the deadline passes.
                    assert end in ("reported", "expired"), (uid, end)
                    outcomes["matched after restart" if end == "reported" else "re-requested"] += 1
                elif state == "open":
                    assert end in ("reported", "superseded", "expired"), (uid, end)
                    outcomes[f"open -> {end}"] += 1
        if any(t["state"] == "expired" for t in txs):
            assert "commit_expired" in events, events
    print(f"kills by phase {dict(phases)}; interrupted transactions {dict(outcomes)}")
    assert counts.lost == 0
    assert counts.jobs_succeeded == len(jobs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("backend", "kills"), [("sqlite", 3), ("postgresql", 2)])
def test_kill_9_during_commit(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """A few kill -9 during storage commitment with Orthanc (before the N-ACTION, waiting for
    the report, while the report arrives): every job ends succeeded with all instances
    committed, re-requested after a lost report, never stuck waiting."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    commit_kill_rounds(tmp_path, ledger, rng, kills, url)


@pytest.mark.ondemand
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(("backend", "kills"), [("sqlite", 21), ("postgresql", 20)])
def test_kill_9_during_commit_long(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """21 (SQLite) and 20 (PostgreSQL) kill -9 during storage commitment (on demand)."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    commit_kill_rounds(tmp_path, ledger, rng, kills, url)
