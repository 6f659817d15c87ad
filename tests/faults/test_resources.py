"""Resource faults: the data dir's filesystem full, the index database locked by another
process beyond ``database.busy_timeout``, the SQLite file on a filesystem that fills up.

In each case a C-STORE that cannot be made durable is answered 0xA700 with nothing half-written
(no spool file, no store file without its row), Success is only ever answered for what is
stored and indexed, and the node recovers once the resource is back — without a restart.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ctnode.scu.push import BATCH_ITEMS
from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import submit_push, wait_job
from tests.helpers.ledger import DirectoryPeer, Ledger, uids_of
from tests.helpers.procs import CtnodeProcess, storescp
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.senders import send_pynetdicom
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

MODALITY = {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": ["store"]}
QUEUE = {
    "workers": 2,
    "poll_interval": 0.2,
    "lease_seconds": 3,
    "retry": {
        "max_attempts": 50,
        "initial_delay": 0.3,
        "multiplier": 1,
        "max_delay": 1,
        "jitter": 0,
    },
}
FINAL = {"succeeded", "failed", "cancelled"}


def _peer(ae: str, port: int) -> dict[str, Any]:
    return {
        "ae_title": ae,
        "host": "127.0.0.1",
        "port": port,
        "accept": ["echo"],
        "timeouts": {"connect": 2, "acse": 2, "dimse": 3, "network": 3},
    }


def _send(node: CtnodeProcess, ledger: Ledger, files: list[Path], label: str) -> dict[Path, int]:
    """Send *files*; acknowledgements go to the ledger; returns the refusals."""
    result = send_pynetdicom(
        node.port, files, lambda uid, path: ledger.acknowledge(uid, path, via=label)
    )
    assert result.broken is None, result.broken
    return result.refused


def test_data_dir_full(tmp_path: Path, ledger: Ledger, small_fs: Callable[[str], Path]) -> None:
    """The data dir's filesystem fills up mid-series: the rest is answered 0xA700, nothing
    half-written stays behind; once space is freed the same instances are stored."""
    fs = small_fs("4m")
    node = CtnodeProcess(
        tmp_path / "node",
        peers={"modality": MODALITY},
        config={
            "storage": {"data_dir": str(fs / "data"), "min_free_bytes": 0},
            "database": {"url": f"sqlite:///{tmp_path / 'index.db'}"},
        },
    )
    ledger.add_node(node)
    files = write_series(tmp_path / "in", 30, size=256)  # ~130 kB each, ~4 MB in all
    with node:
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (2 * 1024 * 1024))
        ledger.fault("data dir full")
        refused = _send(node, ledger, files, "pynetdicom")
        assert refused, "the filesystem never filled up"
        assert set(refused.values()) == {0xA700}, refused
        assert len(refused) < len(files), "nothing was stored before the disk filled up"
        ledger.verify()  # while still full: nothing half-written
        filler.unlink()
        assert _send(node, ledger, list(refused), "pynetdicom (after freeing)") == {}
    counts = ledger.verify()
    assert counts.lost == 0 and counts.acknowledged == len(files)


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""

PG_LOCKER = """
import psycopg, sys, time
with psycopg.connect(sys.argv[1]) as conn:
    conn.execute("LOCK TABLE instances, jobs IN ACCESS EXCLUSIVE MODE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.rollback()
print("released", flush=True)
"""


def _lock(url: str, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the database's write lock for *seconds*."""
    if url.startswith("sqlite:///"):
        code, target = LOCKER, url.removeprefix("sqlite:///")
    else:
        code, target = PG_LOCKER, url.replace("postgresql+psycopg://", "postgresql://")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, target, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_database_locked_by_another_process(
    tmp_path: Path, ledger: Ledger, backend: str, request: pytest.FixtureRequest
) -> None:
    """Another process holds the database lock 6 s (busy_timeout 1 s): C-STOREs get 0xA700
    with nothing half-written. Two pushes are running: one whose attempt ends inside the lock
    (it cannot record its outcome yet: its worker must survive and the job still finish), one
    actively sending (it cannot record its item outcomes: the attempt stops and is retried,
    duplicates within one batch). After the release storing works again and a new job runs
    (no worker lost)."""
    url = (
        f"sqlite:///{tmp_path / 'node' / 'data' / 'ctnode.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("fresh_pg_url"))
    )
    with (
        storescp(tmp_path / "peer", extra=["+uf"]) as server,
        FaultProxy(server.port) as proxy,
        storescp(tmp_path / "busy-peer", ae_title="BUSYSCP", extra=["+uf"]) as busy_server,
        FaultProxy(busy_server.port) as busy_proxy,
    ):
        node = CtnodeProcess(
            tmp_path / "node",
            peers={
                "modality": MODALITY,
                "scp": _peer("STORESCP", proxy.port),
                "busy": _peer("BUSYSCP", busy_proxy.port),
            },
            config={"database": {"url": url, "busy_timeout": 1}, "queue": QUEUE},
        )
        if backend == "postgresql":
            assert node.cli("db", "upgrade").returncode == 0
        ledger.add_node(node)
        ledger.add_peer("scp", DirectoryPeer(tmp_path / "peer"))
        ledger.add_peer("busy", DirectoryPeer(tmp_path / "busy-peer"))
        before = write_series(tmp_path / "before", 3)
        during = write_series(tmp_path / "during", 3)
        pushed = write_series(tmp_path / "push", 20)
        busy = write_series(tmp_path / "busy", 200)
        with node:
            assert node.log is not None
            assert _send(node, ledger, before, "before the lock") == {}
            # A push stuck in a black hole until its ACSE timeout (2 s), inside the lock...
            proxy.set_mode(Mode.BLACKHOLE)
            job_id = submit_push(node, "scp", tmp_path / "push")
            # ... and one sending at 300 kB/s (about 6 s of work) when the lock starts.
            busy_proxy.set_mode(Mode.THROTTLE, rate=300_000)
            busy_id = submit_push(node, "busy", tmp_path / "busy")
            node.log.wait_for("job.attempt_started", job=job_id)
            wait_until(lambda: busy_proxy.stats.bytes_up >= 200_000, 60, message="200 kB upstream")
            locker = _lock(url, 6)
            ledger.fault("database locked")
            started = time.monotonic()
            refused = _send(node, ledger, during, "during the lock")
            assert set(refused) == set(during), refused
            assert set(refused.values()) == {0xA700}
            assert time.monotonic() - started < 6, "the lock ended before the stores did"
            assert not list((node.data_dir / "spool").iterdir())
            stored = {p.name for p in (node.data_dir / "store").rglob("*.dcm")}
            assert not stored & {f"{uid}.dcm" for uid in uids_of(during)}
            assert locker.wait(20) == 0
            proxy.pass_through()
            busy_proxy.pass_through()
            assert _send(node, ledger, during, "after the release") == {}
            report = wait_job(node, job_id, FINAL, timeout=60)
            busy_report = wait_job(node, busy_id, FINAL, timeout=60)
            # The first job's attempt really ended inside the lock and waited to be recorded.
            assert node.log.named("job.record_retry"), "the attempt did not end during the lock"
            # The pool still has its workers: a new job runs at once.
            again = submit_push(node, "scp", tmp_path / "before")
            wait_job(node, again, FINAL, timeout=30)
        ledger.submitted(job_id, peer="scp", uids=uids_of(pushed), max_duplicates=0)
        ledger.submitted(busy_id, peer="busy", uids=uids_of(busy), max_duplicates=BATCH_ITEMS + 1)
        ledger.submitted(again, peer="scp", uids=uids_of(before), max_duplicates=0)
        counts = ledger.verify()
    assert "retry_scheduled" in [e["event"] for e in report["events"]]
    busy_retries = [e["message"] for e in busy_report["events"] if e["event"] == "retry_scheduled"]
    assert any("index database unavailable" in m for m in busy_retries), busy_retries
    assert counts.lost == 0 and counts.jobs_succeeded == 3


def _fill(path: Path) -> None:
    """Write *path* until its filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    error = 0
    try:
        while not error:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                error = exc.errno or -1
    finally:
        os.close(fd)
    assert error == errno.ENOSPC


def test_database_filesystem_full(
    tmp_path: Path, ledger: Ledger, small_fs: Callable[[str], Path]
) -> None:
    """The SQLite file's filesystem fills up: C-STOREs get 0xA700 and their store files are
    removed again; once space is back, storing and the job queue work without a restart."""
    fs = small_fs("3m")
    db = fs / "ctnode.db"
    scp_dir = tmp_path / "peer"
    files = write_series(tmp_path / "in", 40, size=32)
    with storescp(scp_dir, extra=["+uf"]) as server:
        node = CtnodeProcess(
            tmp_path / "node",
            peers={"modality": MODALITY, "scp": _peer("STORESCP", server.port)},
            config={"database": {"url": f"sqlite:///{db}", "busy_timeout": 2}, "queue": QUEUE},
        )
        ledger.add_node(node)
        ledger.add_peer("scp", DirectoryPeer(scp_dir))
        with node:
            filler = fs / "filler"
            _fill(filler)
            ledger.fault("database filesystem full")
            refused = _send(node, ledger, files, "disk full")
            assert refused, "the database never ran out of space"
            assert set(refused.values()) == {0xA700}, refused
            assert node.log is not None
            reasons = {e["reason"] for e in node.log.named("scp.store.refused")}
            assert any("full" in r for r in reasons), reasons
            ledger.verify()
            filler.unlink()
            assert _send(node, ledger, list(refused), "after freeing") == {}
            job_id = int(node.cli("push", "scp", str(tmp_path / "in")).stdout)
            wait_job(node, job_id, FINAL, timeout=60)
        ledger.submitted(job_id, peer="scp", uids=uids_of(files), max_duplicates=0)
        counts = ledger.verify()
    assert counts.lost == 0 and counts.acknowledged == len(files)
