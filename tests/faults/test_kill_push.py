"""kill -9 of ``ctnode run`` at random points while it pushes, restarted each time.

The peer is DCMTK storescp with unique file names (``+uf``; ``-uf`` would name the files by UID
and overwrite), so every copy it receives is a separate file and duplicates are visible. A
throttling proxy in front of it (0.5 to 1 MB/s) stretches each job over seconds, so the random
kill points land inside the transfer. After each restart the node expires the dead process's
lease and resumes the job; at the end every job has succeeded, every instance is at the peer,
and the duplicates of each job are at most ``BATCH_ITEMS + 1`` per kill that interrupted it
(the unrecorded batch plus the instance in flight).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ctnode.scu.push import BATCH_ITEMS
from tests.faults.kills import FINAL, QUEUE, kill_rounds
from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import job_json, submit_push, wait_job
from tests.helpers.ledger import DirectoryPeer, Ledger, uids_of
from tests.helpers.procs import CtnodeProcess, storescp
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.qrdata import peer

pytestmark = pytest.mark.slow


def push_kill_rounds(
    tmp_path: Path, ledger: Ledger, rng: random.Random, kills: int, db_url: str | None
) -> None:
    """Kill the node *kills* times while a push job is running (new jobs as they finish).
    *db_url* None: SQLite in the data dir."""
    scp_dir = tmp_path / "peer"
    with storescp(scp_dir, extra=["+uf"]) as server, FaultProxy(server.port) as proxy:
        proxy.set_mode(Mode.THROTTLE, rate=rng.uniform(0.5e6, 1.0e6))
        config: dict[str, Any] = {"queue": QUEUE}
        if db_url:
            config["database"] = {"url": db_url}
        node = CtnodeProcess(
            tmp_path / "node", config=config, peers={"scp": peer("STORESCP", proxy.port)}
        )
        if db_url:
            assert node.cli("db", "upgrade").returncode == 0
        ledger.add_node(node)
        ledger.add_peer("scp", DirectoryPeer(scp_dir))
        kills_in: Counter[int] = Counter()
        jobs: dict[int, set[str]] = {}
        current: int | None = None
        interrupted = tries = 0
        try:
            while interrupted < kills:
                tries += 1
                assert tries <= 3 * kills + 5, "the kills keep missing the running job"
                if current is None or job_json(node, current)["state"] in FINAL:
                    # Submitted while the node is down: the attempt starts with the node.
                    directory = tmp_path / f"in{len(jobs)}"
                    files = write_series(directory, rng.randint(200, 300), size=64)
                    current = submit_push(node, "scp", directory)
                    jobs[current] = set(uids_of(files))
                node.start()  # a dead owner's lease is expired at start-up; the job resumes
                assert node.log is not None
                node.log.wait_for("job.attempt_started", timeout=30, job=current)
                delay = rng.uniform(0.05, 2.5)
                time.sleep(delay)
                node.kill()
                state = job_json(node, current)["state"]
                if state == "running":
                    interrupted += 1
                    kills_in[current] += 1
                    ledger.fault("kill -9 during push")
                else:
                    ledger.fault("kill -9 (idle)")
                print(f"kill {tries}: job {current} {state} {delay * 1000:.0f} ms into the attempt")
            node.start()
            for job_id in jobs:
                wait_job(node, job_id, FINAL, timeout=120)
        finally:
            node.stop()
        for job_id, uids in jobs.items():
            ledger.submitted(
                job_id,
                peer="scp",
                uids=uids,
                max_duplicates=kills_in[job_id] * (BATCH_ITEMS + 1),
            )
            events = [e["event"] for e in job_json(node, job_id)["events"]]
            if kills_in[job_id]:
                assert "lease_expired" in events and "resumed" in events, events
        counts = ledger.verify()
    assert counts.lost == 0
    assert counts.jobs_succeeded == len(jobs)


@kill_rounds(22, 20, long_timeout=1800)
def test_kill_9_during_push(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """kill -9 (3 rounds on SQLite, 2 on PostgreSQL; 20 or more each with --ondemand) during
    push: every job succeeds after restarts, every instance is at the peer, duplicates within
    the per-kill bound."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    push_kill_rounds(tmp_path, ledger, rng, kills, url)
