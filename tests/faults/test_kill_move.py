"""kill -9 of ``ctnode run`` at random points while it retrieves (C-MOVE to itself), restarted
each time.

The move source is DCMTK dcmqrscp (default fork mode) holding one fresh study per job. Its
HostTable sends the C-STORE sub-operations for AE CTNODE to a throttling proxy (0.2 to 0.4 MB/s)
in front of ctnode's own port, so each move takes seconds and the random kill points land while
instances arrive, while ctnode lists what is missing (C-FIND) or between C-MOVEs. After each
restart the node expires the dead process's lease and resumes the job: with arrivals already
recorded it moves only the instances neither recorded nor indexed; with none recorded it moves
the whole study again.

Checked (``Ledger`` with ``JOB_CHECKS["move"]``):

* every C-STORE ctnode answered Success (its ``scp.store.accepted`` log lines) is indexed and
  stored *right after the kill* (before a restart could let the resumed move hide a loss), and
  byte-identical to the source file at the end;
* every move job succeeded, and every instance dcmqrscp holds for its study is indexed;
* duplicate receptions (an instance answered Success more than once) are counted and bounded:
  a kill after which the job has recorded arrivals causes none (the resumed move skips what is
  recorded or indexed); a kill after which it has recorded none causes at most the number of
  the study's instances indexed at that moment (the whole study is moved again). The bound of a
  job is the sum of that over the kills that interrupted it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from ctnode.db.engine import create_db_engine, session_factory
from ctnode.db.models import Instance, JobItem
from tests.faults.kills import FINAL, QUEUE, kill_rounds
from tests.helpers.dcmqrscp import dcmqrscp
from tests.helpers.dicomgen import Ids, write_series
from tests.helpers.jobs import job_json, submit_move, wait_job
from tests.helpers.ledger import Ledger, NodeView, Receptions, uids_of
from tests.helpers.procs import CtnodeProcess, ServerProcess, free_port, run_tool
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.qrdata import peer

pytestmark = pytest.mark.slow


def new_study(directory: Path, rng: random.Random) -> tuple[str, dict[str, Path]]:
    """A study of two series (30-60 instances each, 64x64 pixels): its UID, and SOP Instance
    UID -> file."""
    study = generate_uid()
    files: list[Path] = []
    for number in (1, 2):
        files += write_series(
            directory / f"s{number}", rng.randint(30, 60), size=64, ids=Ids(study, generate_uid())
        )
    return study, uids_of(files)


def store_to(qr: ServerProcess, files: list[Path]) -> None:
    """Give dcmqrscp the files (DCMTK storescu)."""
    sent = run_tool(["storescu", "-aec", "DCMQRSCP", "127.0.0.1", str(qr.port), *map(str, files)])
    assert sent.returncode == 0, sent.stdout + sent.stderr


class Index:
    """Reads a (dead) node's index and its move job's recorded arrivals."""

    def __init__(self, view: NodeView) -> None:
        self.view = view

    def _session(self) -> Any:
        engine = create_db_engine(self.view.db_url, busy_timeout=30)
        return engine, session_factory(engine)()

    def present(self, uids: set[str]) -> set[str]:
        """Which of *uids* have an index row and a store file."""
        engine, session = self._session()
        try:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.path).where(
                    Instance.deleted_at.is_(None)
                )
            ).all()
        finally:
            session.close()
            engine.dispose()
        store = self.view.data_dir / "store"
        return {u for u, path in rows if u in uids and (store / path).is_file()}

    def recorded(self, job_id: int) -> int:
        """Arrivals the job has recorded (its items)."""
        engine, session = self._session()
        try:
            return int(
                session.scalar(
                    select(func.count()).select_from(JobItem).where(JobItem.job_id == job_id)
                )
                or 0
            )
        finally:
            session.close()
            engine.dispose()


def move_kill_rounds(
    tmp_path: Path, ledger: Ledger, rng: random.Random, kills: int, db_url: str | None
) -> None:
    """Kill the node *kills* times while a move job is running (a new job, for a new study,
    whenever the current one is final). *db_url* None: SQLite in the data dir."""
    node_port = free_port()
    config: dict[str, Any] = {"queue": QUEUE}
    if db_url:
        config["database"] = {"url": db_url}
    with FaultProxy(node_port) as proxy:
        proxy.set_mode(Mode.THROTTLE, rate=rng.uniform(0.2e6, 0.4e6))
        qr = dcmqrscp(tmp_path / "qr", hosts={"ctnode": ("CTNODE", "127.0.0.1", proxy.port)})
        with qr:
            node = CtnodeProcess(
                tmp_path / "node",
                port=node_port,
                config=config,
                peers={"qr": peer("DCMQRSCP", qr.port)},
            )
            if db_url:
                assert node.cli("db", "upgrade").returncode == 0
            view = ledger.add_node(node)
            index = Index(view)
            received = Receptions()
            ledger.add_receptions(received)
            jobs: dict[int, dict[str, Path]] = {}
            bounds: dict[int, int] = {}
            kills_in: dict[int, int] = {}
            current: int | None = None
            interrupted = tries = 0
            try:
                while interrupted < kills:
                    tries += 1
                    assert tries <= 3 * kills + 5, "the kills keep missing the running job"
                    if current is None or job_json(node, current)["state"] in FINAL:
                        study_uid, study = new_study(tmp_path / f"study{len(jobs)}", rng)
                        store_to(qr, list(study.values()))
                        current = submit_move(node, "qr", study_uid)
                        jobs[current] = study
                        bounds[current] = kills_in[current] = 0
                    node.start()
                    assert node.log is not None
                    received.add(node.log)
                    node.log.wait_for("job.attempt_started", timeout=30, job=current)
                    delay = rng.uniform(0.05, 3.0)
                    time.sleep(delay)
                    node.kill()
                    # Everything answered Success so far must be durable now, before a
                    # resumed move could deliver it again and hide the loss.
                    acked = set(received.accepted())
                    sources = {u: p for study in jobs.values() for u, p in study.items()}
                    lost = acked - index.present(acked)
                    assert not lost, f"acknowledged but not stored after kill -9: {sorted(lost)}"
                    for uid in acked:
                        ledger.acknowledge(uid, sources[uid], via="move", round=tries)
                    state = job_json(node, current)["state"]
                    study_uids = set(jobs[current])
                    recorded = index.recorded(current)
                    indexed = len(index.present(study_uids))
                    if state == "running":
                        interrupted += 1
                        kills_in[current] += 1
                        if recorded == 0:
                            bounds[current] += indexed
                        ledger.fault("kill -9 during move")
                    else:
                        ledger.fault("kill -9 (idle)")
                    print(
                        f"kill {tries}: job {current} {state} {delay * 1000:.0f} ms into the "
                        f"attempt; {recorded} arrival(s) recorded, {indexed}/{len(study_uids)} "
                        "indexed"
                    )
                node.start()
                assert node.log is not None
                received.add(node.log)
                for job_id in jobs:
                    wait_job(node, job_id, FINAL, timeout=120)
            finally:
                node.stop()
    for job_id, study in jobs.items():
        for uid, path in study.items():
            ledger.acknowledge(uid, path, via="move")
        ledger.submitted(
            job_id, kind="move", peer="qr", uids=set(study), max_duplicates=bounds[job_id]
        )
        events = [e["event"] for e in job_json(node, job_id)["events"]]
        if kills_in[job_id]:
            assert "lease_expired" in events, events
    counts = ledger.verify()
    print(f"duplicate receptions: {counts.duplicates} (bounds {bounds})")
    assert counts.lost == 0
    assert counts.jobs_succeeded == len(jobs)
    assert counts.acknowledged == sum(len(s) for s in jobs.values())


@kill_rounds(22, 20, long_timeout=1800)
def test_kill_9_during_move(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """kill -9 (3 rounds on SQLite, 2 on PostgreSQL; 20 or more each with --ondemand) during
    C-MOVE retrieves: every move job succeeds after restarts, every instance the source holds
    is indexed, nothing acknowledged is lost at any kill, duplicate receptions within the per-
    kill bound."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    move_kill_rounds(tmp_path, ledger, rng, kills, url)
