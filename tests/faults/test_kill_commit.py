"""kill -9 of ``ctnode run`` at random points of storage commitment jobs, restarted each time.

The Storage Commitment SCP is a real Orthanc. Each job asks about a fresh series (30-80
instances) that was stored to Orthanc first, sometimes less one or two instances (the first
report then fails them with 0x0112 and the next round pushes them again). Orthanc sends its
N-EVENT-REPORT on a new association to the host/port it has for CTNODE: a throttling proxy
(4-8 KB/s) in front of ctnode's port, so the report takes a second or more to arrive. Each job
is killed 1-3 times, then left to finish; each kill lands, in turn, in one of four phases:

* ``request`` — 0-300 ms after an attempt that starts a new round began: while the round is
  persisted, the failed instances are pushed again, or the N-ACTION is sent;
* ``waiting`` — 0-400 ms after the N-ACTION was accepted (``commit.requested``): the report is
  about to be sent or on its way, into a dead node;
* ``report`` — 0-1.2 s into Orthanc's report association (it sends into a dead node);
* ``restart`` — the proxy connects Orthanc's report association to ctnode only
  ``CONNECT_DELAY`` s after Orthanc opened it; ctnode is killed 0-300 ms after that and
  restarted at once, so the report arrives at the restarted node.

What docs/commitment.md promises ("Restarts"), and this test asserts:

* a round interrupted before the N-ACTION was confirmed (transaction ``open``) is replaced after
  the restart (the dead lease is expired, the attempt starts a new round; the old transaction is
  ``superseded``, or ``reported`` if its report still came);
* a report that arrives after the restart is matched: in the ``restart`` phase a transaction
  that was ``requested`` at the kill ends ``reported`` (when the restart took less than
  ``CONNECT_DELAY``); one still ``open`` (killed between the N-ACTION-RSP and recording it) is
  superseded by the new round the restarted node starts at once, and its report is late — and
  applied (the peer's word on what it holds): if it commits everything, the round awaited then
  is superseded in turn and the job succeeds without waiting for that round's report;
* a report Orthanc tried to deliver while ctnode was dead is not sent again: the waiting job's
  deadline (``commit_timeout``, fired at the next start if it passed meanwhile) expires the
  transaction and the next round asks again with a new Transaction UID — never waiting for ever;
* at the end every job succeeded (``max_attempts`` is ample and Orthanc holds everything after
  the re-push), no transaction is left ``open`` or ``requested``, a job's last transaction is
  ``reported`` with event type 1 (or ``superseded``, when an earlier one's late report decided
  the job first), expired transactions are at most the kills that hit the job (a report is only
  missed when ctnode was killed), transactions are at most one per kill plus the rounds an
  undisturbed job needs, and every committed instance has an ``instance_commitments`` row and
  really is in Orthanc (``Ledger``, ``JOB_CHECKS["commit"]``).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.faults.kills import FINAL, QUEUE, kill_rounds
from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import job_json, submit_commit, wait_job
from tests.helpers.ledger import Ledger, OrthancPeer, uids_of
from tests.helpers.orthanc import Orthanc
from tests.helpers.procs import CtnodeProcess, run_tool
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

#: Seconds a requested transaction waits for its report (well above the 1-3 s a report takes
#: through the throttle, or CONNECT_DELAY plus that, so only a kill makes one expire).
COMMIT_TIMEOUT = 10
#: ``restart`` phase: seconds before the proxy connects a report association to ctnode.
CONNECT_DELAY = 4.0
UNFINISHED = {"queued", "running", "waiting"}
PHASES = ("request", "waiting", "report", "restart")


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
    args = ["storescu", "-aec", orthanc.ae_title, "127.0.0.1", str(orthanc.dicom_port)]
    sent = run_tool([*args, *map(str, files)])
    assert sent.returncode == 0, sent.stdout + sent.stderr


def transactions(node: CtnodeProcess, job_id: int) -> list[dict[str, Any]]:
    """The job's commitment transactions, oldest first."""
    report = job_json(node, job_id)
    return list((report.get("commitment") or {}).get("transactions") or [])


def wait_events(node: CtnodeProcess, event: str, job_id: int, count: int, timeout: float) -> None:
    """Wait until this run of the node logged *event* for the job *count* times."""
    assert node.log is not None
    log = node.log
    wait_until(
        lambda: len([e for e in log.named(event) if e.get("job") == job_id]) >= count,
        timeout,
        interval=0.01,
        message=f"{event} x{count}",
    )


def wait_report_association(proxy: FaultProxy, before: int, timeout: float) -> None:
    """Wait until Orthanc opened a report association (the proxy accepted one more)."""
    wait_until(
        lambda: sum(proxy.stats.accepted.values()) > before,
        timeout,
        interval=0.01,
        message="a report association",
    )


def kill_in_phase(
    node: CtnodeProcess, proxy: FaultProxy, job_id: int, phase: str, rng: random.Random
) -> float:
    """Wait for *phase* of the job (just started on this run of the node) and kill -9 the node
    at a random point of it; returns the delay into the phase (a phase that does not come in
    time is cut short: the kill then lands wherever the job is)."""
    # A transaction still awaiting its report at start-up: the first attempt only concludes
    # it (at the deadline); the next one starts the new round.
    awaiting = any(t["state"] == "requested" for t in transactions(node, job_id))
    before = sum(proxy.stats.accepted.values())
    limit = COMMIT_TIMEOUT + 15
    delay = 0.0
    try:
        if phase == "request":
            wait_events(node, "job.attempt_started", job_id, 2 if awaiting else 1, limit)
            delay = rng.uniform(0.0, 0.3)
        elif phase == "waiting":
            wait_events(node, "commit.requested", job_id, 1, limit)
            delay = rng.uniform(0.0, 0.4)
        elif phase == "report":
            wait_report_association(proxy, before, limit)
            delay = rng.uniform(0.0, 1.2)
        else:
            wait_report_association(proxy, before, limit)
            delay = rng.uniform(0.0, 0.3)
    except TimeoutError as exc:
        print(f"phase {phase} did not come ({exc}); killing now")
    time.sleep(delay)
    node.kill()
    return delay


@dataclass
class JobRecord:
    """What the test knows about one commit job."""

    uids: set[str]
    held_back: int
    budget: int
    kills: int = 0
    #: Per kill: its phase and the job's transactions (UID -> state) right after it.
    snapshots: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: Transactions awaiting a report when a ``restart`` kill hit and the node came back
    #: within CONNECT_DELAY: their report must be matched.
    must_match: set[str] = field(default_factory=set)


def commit_kill_rounds(
    tmp_path: Path, ledger: Ledger, rng: random.Random, kills: int, db_url: str | None
) -> None:
    """Kill the node *kills* times while a commit job is not final (1-3 kills per job, then it
    is left to finish and a new job for a new series follows). *db_url* None: SQLite."""
    config: dict[str, Any] = {"queue": QUEUE}
    if db_url:
        config["database"] = {"url": db_url}
    node = CtnodeProcess(tmp_path / "node", config=config)
    if db_url:
        assert node.cli("db", "upgrade").returncode == 0
    rate = rng.uniform(4e3, 8e3)
    with FaultProxy(node.port) as proxy:
        modality = {"AET": "CTNODE", "Host": "127.0.0.1", "Port": proxy.port}
        with Orthanc(modalities={"ctnode": modality}) as orthanc:
            node.write_peer("orthanc", orthanc_peer(orthanc.dicom_port))
            ledger.add_node(node)
            ledger.add_peer("orthanc", OrthancPeer(orthanc))
            jobs: dict[int, JobRecord] = {}
            phases: Counter[str] = Counter()
            current: int | None = None
            interrupted = tries = 0
            first_phase = rng.randrange(len(PHASES))
            pending_restart: tuple[int, set[str]] | None = None
            try:
                while interrupted < kills:
                    tries += 1
                    assert tries <= 3 * kills + 5, "the kills keep missing the unfinished job"
                    if current is not None and jobs[current].kills >= jobs[current].budget:
                        node.start()
                        wait_job(node, current, FINAL, timeout=COMMIT_TIMEOUT + 60)
                        node.stop()
                    if current is None or job_json(node, current)["state"] in FINAL:
                        directory = tmp_path / f"series{len(jobs)}"
                        files = write_series(directory, rng.randint(30, 80), size=16)
                        missing = rng.choice([0, 0, 1, 2])
                        store_to(orthanc, files[missing:])
                        current = submit_commit(node, "orthanc", directory)
                        jobs[current] = JobRecord(set(uids_of(files)), missing, rng.randint(1, 3))
                    # The phases in turn, from a random one: 4 kills cover each.
                    phase = PHASES[(first_phase + interrupted) % len(PHASES)]
                    delayed = phase == "restart"
                    proxy.set_mode(
                        Mode.THROTTLE, rate=rate, connect_delay=CONNECT_DELAY if delayed else 0
                    )
                    started = time.monotonic()
                    node.start()
                    if pending_restart is not None:
                        job_id, awaiting = pending_restart
                        if time.monotonic() - started < CONNECT_DELAY - 0.5:
                            jobs[job_id].must_match |= awaiting
                        pending_restart = None
                    delay = kill_in_phase(node, proxy, current, phase, rng)
                    txs = {t["transaction_uid"]: t["state"] for t in transactions(node, current)}
                    state = job_json(node, current)["state"]
                    record = jobs[current]
                    if state in UNFINISHED:
                        interrupted += 1
                        record.kills += 1
                        phases[phase] += 1
                        record.snapshots.append((phase, txs))
                        ledger.fault(f"kill -9 commit {phase}")
                        if delayed:
                            # Only a requested transaction must be matched: an open one (the
                            # node died before it recorded that the N-ACTION was accepted) is
                            # superseded by the round the restarted node starts at once, and
                            # its report then arrives late.
                            awaiting = {u for u, s in txs.items() if s == "requested"}
                            pending_restart = (current, awaiting)
                    else:
                        ledger.fault("kill -9 (idle)")
                    print(
                        f"kill {tries}: job {current} {state}, phase {phase} +{delay * 1000:.0f} "
                        f"ms; transactions {list(txs.values())}"
                    )
                node.start()
                if pending_restart is not None:
                    jobs[pending_restart[0]].must_match |= pending_restart[1]
                for job_id in jobs:
                    wait_job(node, job_id, FINAL, timeout=COMMIT_TIMEOUT + 60)
            finally:
                node.stop()
            for job_id, record in jobs.items():
                ledger.submitted(job_id, kind="commit", peer="orthanc", uids=record.uids)
            counts = ledger.verify()
    outcomes: Counter[str] = Counter()
    for job_id, record in jobs.items():
        report = job_json(node, job_id)
        txs = report["commitment"]["transactions"]
        final = {t["transaction_uid"]: t["state"] for t in txs}
        last = txs[-1]
        decided_late = last["state"] == "superseded" and any(
            t["state"] in ("superseded", "expired") and t["reported_at"] for t in txs[:-1]
        )
        assert decided_late or (last["state"] == "reported" and last["event_type"] == 1), txs
        expired = [t for t in txs if t["state"] == "expired"]
        assert len(expired) <= record.kills, (job_id, record.kills, txs)
        rounds_needed = 1 + (1 if record.held_back else 0)
        assert len(txs) <= rounds_needed + record.kills, (job_id, record, txs)
        events = [e["event"] for e in report["events"]]
        if record.held_back:
            assert "commit_repushed" in events, events
        if expired:
            assert "commit_expired" in events, events
        for uid in record.must_match:
            # Superseded only when an earlier round's late report decided the job first.
            assert final[uid] == "reported" or decided_late, (job_id, uid, final)
            outcomes["report matched after restart"] += 1
        for phase, snapshot in record.snapshots:
            for uid, state in snapshot.items():
                end = final[uid]
                if state == "requested":
                    # Matched when the report came after the restart; else expired and asked
                    # again (or superseded when an earlier round's late report decided the job).
                    assert end in ("reported", "expired") or decided_late, (phase, uid, end)
                    outcomes[f"requested -> {end}"] += 1
                elif state == "open":
                    assert end in ("reported", "superseded", "expired"), (phase, uid, end)
                    outcomes[f"open -> {end}"] += 1
    print(f"kills by phase {dict(phases)}; interrupted transactions {dict(outcomes)}")
    assert counts.lost == 0
    assert counts.jobs_succeeded == len(jobs)


@kill_rounds(21, 20, long_timeout=2400)
def test_kill_9_during_commit(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """kill -9 (3 rounds on SQLite, 2 on PostgreSQL; 20 or more each with --ondemand) during
    storage commitment with Orthanc (before the N-ACTION, waiting for the report, while the
    report arrives, report delivered after the restart): every job ends succeeded with all
    instances committed, a lost report re-requested after the deadline, a late one matched,
    never stuck waiting."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    commit_kill_rounds(tmp_path, ledger, rng, kills, url)
