"""kill -9 of ``ctnode run`` while commands hand it their pushes (``ctnode.handoff``).

Each round starts the node, starts several ``ctnode push scp DIR`` commands at once (each with
its own directory of instances) and kills the node at a random moment: before, during or after
their submissions. Then:

* a command that printed a job id was promised that job: it is in the queue, exactly once, and
  finishes with every instance at the peer (the ledger) — whether the node wrote it, or the
  command itself (no node answered, or the node died before ``submit``);
* a command that lost the node between ``submit`` and the job's confirmation says so and exits
  1: its job exists at most once (and then finishes like any other);
* nothing else happens: no other exit, no command with two jobs.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.kills import FINAL, QUEUE, kill_rounds
from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import repo_of, wait_job
from tests.helpers.ledger import DirectoryPeer, Ledger, uids_of
from tests.helpers.procs import CTNODE, CtnodeProcess, storescp
from tests.helpers.qrdata import peer

pytestmark = pytest.mark.slow

#: Commands started at once in each round.
COMMANDS = 4
UNCONFIRMED = "the node closed the connection before confirming the job"


def _jobs_by_directory(node: CtnodeProcess) -> dict[str, list[int]]:
    repo = repo_of(node)
    try:
        jobs = repo.list_jobs(limit=10_000)
    finally:
        repo.engine.dispose()
    out: dict[str, list[int]] = {}
    for job in jobs:
        for path in job.payload.get("paths", []):
            out.setdefault(path, []).append(job.id)
    return out


def handoff_kill_rounds(
    tmp_path: Path, ledger: Ledger, rng: random.Random, kills: int, db_url: str | None
) -> None:
    """*kills* rounds of concurrent hand-offs ended by kill -9 of the node."""
    scp_dir = tmp_path / "peer"
    with storescp(scp_dir, extra=["+uf"]) as server:
        config: dict[str, Any] = {"queue": QUEUE}
        if db_url:
            config["database"] = {"url": db_url}
        node = CtnodeProcess(
            tmp_path / "node", config=config, peers={"scp": peer("STORESCP", server.port)}
        )
        if db_url:
            assert node.cli("db", "upgrade").returncode == 0
        ledger.add_node(node)
        ledger.add_peer("scp", DirectoryPeer(scp_dir))
        confirmed: dict[str, int] = {}  # directory -> the job id its command printed
        unconfirmed: list[str] = []
        directories: dict[str, dict[str, Path]] = {}
        handed = 0
        try:
            for round_ in range(kills):
                node.start()
                commands = []
                push = [*CTNODE, "--config", str(node.config_path), "push", "scp"]
                for number in range(COMMANDS):
                    directory = tmp_path / f"in{round_}-{number}"
                    files = write_series(directory, rng.randint(3, 12), size=64)
                    directories[str(directory)] = uids_of(files)
                    commands.append(
                        (
                            str(directory),
                            subprocess.Popen(
                                [*push, str(directory)],
                                env=node.env,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                text=True,
                            ),
                        )
                    )
                delay = rng.uniform(0.0, 0.6)
                time.sleep(delay)
                assert node.log is not None
                log = node.log
                node.kill()
                ledger.fault("kill -9 during hand-offs")
                outcomes = []
                for directory, command in commands:
                    out, err = command.communicate(timeout=120)
                    if command.returncode == 0:
                        confirmed[directory] = int(out)
                        outcomes.append("confirmed")
                    else:
                        assert command.returncode == 1 and UNCONFIRMED in err, (out, err)
                        unconfirmed.append(directory)
                        outcomes.append("unconfirmed")
                handed += len(log.named("handoff.submitted"))
                print(f"round {round_}: kill after {delay * 1000:.0f} ms: {outcomes}")
            node.start()
            by_directory = _jobs_by_directory(node)
            for directory, job_id in confirmed.items():
                assert by_directory.get(directory) == [job_id], (directory, by_directory)
            for directory in unconfirmed:
                assert len(by_directory.get(directory, [])) <= 1, (directory, by_directory)
            jobs = {
                job_id: directory
                for directory, ids in by_directory.items()
                for job_id in ids
                if directory in directories
            }
            for job_id in jobs:
                wait_job(node, job_id, FINAL, timeout=120)
        finally:
            node.stop()
        for job_id, directory in jobs.items():
            ledger.submitted(job_id, peer="scp", uids=set(directories[directory]))
        counts = ledger.verify()
    print(
        f"hand-offs: {handed} submitted by the node; commands confirmed {len(confirmed)}, "
        f"unconfirmed {len(unconfirmed)}"
    )
    assert counts.lost == 0
    assert counts.jobs_succeeded == len(jobs) >= len(confirmed)


@kill_rounds(20, 15, long_timeout=1800)
def test_kill_9_during_handoffs(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """kill -9 of the node while commands hand it their pushes (3 rounds on SQLite, 2 on
    PostgreSQL; 20 or 15 with --ondemand): every confirmed job exists once and succeeds, an
    unconfirmed one at most once, every instance of a finished job is at the peer."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    handoff_kill_rounds(tmp_path, ledger, rng, kills, url)
