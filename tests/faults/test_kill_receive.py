"""kill -9 of ``ctnode run`` at random points while instances arrive, restarted each time.

The senders (pynetdicom and DCMTK storescu, alternating) know exactly which C-STOREs were
answered Success; the ledger then requires each of those to be stored and indexed with the
data set that was sent, and the node to be consistent (spool empty after recovery, no
temporary links, no file without a row and no row without a file).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.faults.kills import kill_rounds as kill_round_params
from tests.helpers.dicomgen import write_series
from tests.helpers.ledger import Ledger
from tests.helpers.procs import CtnodeProcess
from tests.helpers.senders import SendResult, send_pynetdicom, send_storescu

pytestmark = pytest.mark.slow

PEERS = {
    "modality": {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104, "accept": ["store"]},
    "storescu": {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104, "accept": ["store"]},
}


def one_round(
    node: CtnodeProcess, ledger: Ledger, rng: random.Random, directory: Path, round_no: int
) -> SendResult:
    """Send a fresh series; kill -9 the node after a random number of acknowledgements plus
    a random delay (or when the sender ends, whichever is first)."""
    count = rng.randint(12, 40)
    size = rng.choice([32, 64, 128, 256])
    files = write_series(directory, count, size=size)
    kill_after = rng.randint(0, count - 8)
    delay = rng.uniform(0.0, 0.04)
    via = "storescu" if round_no % 2 else "pynetdicom"
    acks = 0
    trigger = threading.Event()
    if kill_after == 0:
        trigger.set()

    def on_ack(uid: str, path: Path) -> None:
        nonlocal acks
        ledger.acknowledge(uid, path, via=via, round=round_no)
        acks += 1
        if acks >= kill_after:
            trigger.set()

    def killer() -> None:
        trigger.wait(30)
        time.sleep(delay)
        node.kill()

    thread = threading.Thread(target=killer)
    thread.start()
    sender = send_storescu if via == "storescu" else send_pynetdicom
    try:
        result = sender(node.port, files, on_ack)
    finally:
        trigger.set()
        thread.join(30)
    print(
        f"round {round_no}: {via}, {count} x {size}px, kill after {kill_after} acks "
        f"+ {delay * 1000:.0f} ms: {len(result.acknowledged)} acknowledged, "
        f"stopped: {result.broken}"
    )
    return result


def kill_rounds(
    tmp_path: Path, ledger: Ledger, rng: random.Random, rounds: int, db_url: str | None
) -> None:
    """*rounds* times: a round of sending with a kill -9, restart (spool recovery), check the
    ledger; at the end the totals. *db_url* None: SQLite in the data dir."""
    config = {"database": {"url": db_url}} if db_url else {}
    node = CtnodeProcess(tmp_path / "node", peers=PEERS, config=config)
    if db_url:
        assert node.cli("db", "upgrade").returncode == 0
    ledger.add_node(node)
    node.start()
    interrupted = 0
    try:
        for round_no in range(rounds):
            result = one_round(node, ledger, rng, tmp_path / f"in{round_no}", round_no)
            ledger.fault("kill -9 during receive" if result.broken else "kill -9 (idle)")
            interrupted += result.broken is not None
            node.start()  # restart on the same data dir: spool recovery runs first
            ledger.verify()
    finally:
        node.stop()
    counts = ledger.verify()
    assert counts.lost == 0
    assert counts.acknowledged > 0
    # The kills land while instances are in flight (not after the sender finished).
    assert interrupted >= max(1, rounds * 2 // 3), f"only {interrupted}/{rounds} interrupted"


@kill_round_params(25, 20, long_timeout=1800)
def test_kill_9_during_receive(
    tmp_path: Path,
    ledger: Ledger,
    rng: random.Random,
    backend: str,
    kills: int,
    request: pytest.FixtureRequest,
) -> None:
    """kill -9 rounds during receive (3 on SQLite, 2 on PostgreSQL; 25 and 20 with
    --ondemand): nothing acknowledged is lost, the node is consistent after every restart."""
    url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    kill_rounds(tmp_path, ledger, rng, kills, url)
