"""kill -9 with ingest worker processes (``storage.ingest_processes``): of a worker while
concurrent associations arrive, and of the node itself (its workers must go with it).

Concurrent senders (DCMTK storescu and pynetdicom) record every C-STORE answered Success; the
ledger then requires each to be stored and indexed with the data set sent, and the node to be
consistent (no spool file left once idle, no temporary link, no file without a row, no row
without a file).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.ledger import Ledger
from tests.helpers.procs import CtnodeProcess
from tests.helpers.senders import SendResult, send_pynetdicom, send_storescu
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PEERS = {
    "modality": {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": ["store"]},
    "storescu": {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104, "accept": ["store"]},
}
CONFIG = {"storage": {"ingest_processes": 2}}
#: Each test on the embedded database and on PostgreSQL (the index commit stays in the node;
#: its connections must not be shared with the forked workers).
BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


def start_node(tmp: Path, backend: str, request: pytest.FixtureRequest) -> CtnodeProcess:
    """A node with two ingest workers on *backend* (PostgreSQL: a fresh, migrated database)."""
    config: dict[str, Any] = dict(CONFIG)
    if backend == "postgresql":
        config["database"] = {"url": request.getfixturevalue("fresh_pg_url")}
    node = CtnodeProcess(tmp / "node", peers=PEERS, config=config)
    if backend == "postgresql":
        assert node.cli("db", "upgrade").returncode == 0
    return node


def children(pid: int) -> set[int]:
    """Process ids whose parent is *pid*."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def send_concurrently(
    node: CtnodeProcess,
    ledger: Ledger,
    batches: list[list[Path]],
    round_no: int,
    on_any_ack: Callable[[int], None] | None = None,
) -> list[SendResult]:
    """Each batch on its own association at once (storescu and pynetdicom alternating);
    every Success goes into the ledger. *on_any_ack(total)* after each Success."""
    results: list[SendResult | None] = [None] * len(batches)
    lock = threading.Lock()
    total = 0

    def run(index: int, files: list[Path]) -> None:
        via = "storescu" if index % 2 == 0 else "pynetdicom"

        def on_ack(uid: str, path: Path) -> None:
            nonlocal total
            ledger.acknowledge(uid, path, via=via, round=round_no)
            with lock:
                total += 1
                seen = total
            if on_any_ack is not None:
                on_any_ack(seen)

        sender = send_storescu if via == "storescu" else send_pynetdicom
        results[index] = sender(node.port, files, on_ack)

    threads = [threading.Thread(target=run, args=(i, batch)) for i, batch in enumerate(batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


@BACKENDS
def test_kill_9_of_an_ingest_worker_during_concurrent_receive(
    tmp_path: Path, ledger: Ledger, backend: str, request: pytest.FixtureRequest
) -> None:
    """kill -9 of one ingest worker while three associations send: the node keeps serving,
    objects in flight in that worker are answered 0xA700 (never Success) and resolved at once,
    a replacement worker takes over, everything answered Success is stored and indexed, and
    the refused objects are stored when sent again. On SQLite and PostgreSQL."""
    node = start_node(tmp_path, backend, request)
    ledger.add_node(node)
    node.start()
    assert node.log is not None
    try:
        workers = wait_until(
            lambda: children(node.pid) if len(children(node.pid)) >= 2 else None, 20
        )
        victim = min(workers)
        batches = [write_series(tmp_path / f"in{i}", 45, size=256) for i in range(3)]
        killed = threading.Event()

        def kill_worker(total: int) -> None:
            if total >= 20 and not killed.is_set():
                killed.set()
                os.kill(victim, 9)

        results = send_concurrently(node, ledger, batches, 0, kill_worker)
        assert killed.is_set()
        ledger.fault("kill -9 of an ingest worker")
        died = node.log.wait_for("storage.ingest_worker_died", timeout=20)
        assert died["pid"] == victim
        # The replacement is ready (the two first workers, then it).
        log = node.log
        wait_until(lambda: len(log.named("storage.ingest_worker_ready")) >= 3, 30)
        refused = {p: code for r in results for p, code in r.refused.items()}
        # pynetdicom gives the status; storescu only "not Success" (-1 in SendResult).
        assert set(refused.values()) <= {0xA700, -1}, refused
        print(
            f"in flight in the killed worker: {died['in_flight']}; refused: {len(refused)}; "
            f"acknowledged: {sum(len(r.acknowledged) for r in results)}"
        )
        ledger.verify()
        # Everything not acknowledged (refused, or never sent because a sender stopped) goes
        # again, now through the replacement: all of it is stored.
        acknowledged = {p for r in results for p in r.acknowledged}
        rest = [p for batch in batches for p in batch if p not in acknowledged]
        if rest:
            halves = [half for half in (rest[0::2], rest[1::2]) if half]  # one refused: one half
            again = send_concurrently(node, ledger, halves, 1)
            assert all(not r.refused and r.broken is None for r in again), again
        counts = ledger.verify()
        assert counts.lost == 0
        assert counts.acknowledged == sum(len(b) for b in batches)
    finally:
        node.stop()
    closed = node.log.named("storage.ingest_pool_closed")
    assert closed and closed[-1]["placed_in_workers"] > 0, closed


@BACKENDS
def test_kill_9_of_the_node_takes_its_ingest_workers_along(
    tmp_path: Path, ledger: Ledger, rng: random.Random, backend: str, request: pytest.FixtureRequest
) -> None:
    """kill -9 of ``ctnode run`` (3 rounds) while two associations send through ingest
    workers: its workers exit with it (none keeps the data dir or the port), the restarted
    node recovers the spool, and nothing acknowledged is lost. On SQLite and PostgreSQL."""
    node = start_node(tmp_path, backend, request)
    ledger.add_node(node)
    node.start()
    interrupted = 0
    try:
        for round_no in range(3):
            workers = wait_until(
                lambda: children(node.pid) if len(children(node.pid)) >= 2 else None, 20
            )
            batches = [
                write_series(tmp_path / f"r{round_no}-{i}", rng.randint(20, 40), size=128)
                for i in range(2)
            ]
            kill_after = rng.randint(4, 24)
            trigger = threading.Event()

            def on_ack(
                total: int, kill_after: int = kill_after, trigger: threading.Event = trigger
            ) -> None:
                if total >= kill_after:
                    trigger.set()

            def killer(trigger: threading.Event = trigger) -> None:
                trigger.wait(60)
                time.sleep(rng.uniform(0, 0.03))
                node.kill()

            thread = threading.Thread(target=killer)
            thread.start()
            try:
                results = send_concurrently(node, ledger, batches, round_no, on_ack)
            finally:
                trigger.set()
                thread.join(30)
            interrupted += any(r.broken for r in results)
            ledger.fault("kill -9 of the node with ingest workers")
            wait_until(
                lambda workers=workers: not any(alive(p) for p in workers),
                10,
                message="the killed node's ingest workers exit",
            )
            node.start()  # same data dir: spool recovery first
            ledger.verify()
    finally:
        node.stop()
    counts = ledger.verify()
    assert counts.lost == 0 and counts.acknowledged > 0
    assert interrupted >= 2, f"only {interrupted}/3 rounds interrupted a transfer"
