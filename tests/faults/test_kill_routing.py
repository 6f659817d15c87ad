"""kill -9 of ``ctnode run`` while routing: during the stable wait and during the forward.

The scanner is DCMTK storescu (calling AE SCANNER); the destination is storescp with unique
file names (``+uf``) so every copy is visible, behind a throttling proxy so a forward lasts
seconds and the kill lands inside it. The shared ledger (``tests/helpers/ledger.py``) checks the
promises: every instance the node acknowledged is stored and indexed byte-identical, the node is
consistent after the kills, every forward job succeeded with each of its instances at the
destination, and duplicates stay within their bound: none for the study killed during its
stable wait (the decisions were committed with the instances, nothing was sent yet), at most
``BATCH_ITEMS + 1`` for the study killed during its forward (the push's unrecorded outcome
batch plus the instance in flight). Every routing decision ends ``delivered``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ctnode.db.models import RouteMatch
from ctnode.scu.push import BATCH_ITEMS
from tests.faults.kills import QUEUE
from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import repo_of
from tests.helpers.ledger import DirectoryPeer, Ledger
from tests.helpers.procs import CtnodeProcess, storescp, write_yaml
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.qrdata import peer
from tests.helpers.senders import send_storescu
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

SCANNER = {"ae_title": "SCANNER", "host": "127.0.0.1", "port": 9, "accept": ["echo", "store"]}


def _node(tmp: Path, dest_port: int, db_url: str | None, stable_after: float) -> CtnodeProcess:
    config: dict[str, Any] = {"queue": QUEUE, "routes_dir": str(tmp / "routes")}
    if db_url:
        config["database"] = {"url": db_url}
    node = CtnodeProcess(
        tmp / "node", config=config, peers={"scanner": SCANNER, "pacs": peer("PACS", dest_port)}
    )
    write_yaml(
        tmp / "routes" / "to-pacs.yaml",
        {"match": {"calling_ae": ["SCANNER"]}, "stable_after": stable_after, "to": ["pacs"]},
    )
    if db_url:
        assert node.cli("db", "upgrade").returncode == 0
    return node


def _send(node: CtnodeProcess, files: list[Path], ledger: Ledger, round: int) -> set[str]:
    """storescu as SCANNER; every C-STORE answered Success goes into the ledger."""
    acked: set[str] = set()

    def on_ack(uid: str, path: Path) -> None:
        ledger.acknowledge(uid, path, via="storescu", round=round)
        acked.add(uid)

    result = send_storescu(node.port, files, on_ack, calling="SCANNER")
    assert result.broken is None and not result.refused, result
    return acked


def _forward_jobs(node: CtnodeProcess) -> dict[int, set[str]]:
    """The route's forward jobs and the instances each took (from the routing decisions)."""
    repo = repo_of(node)
    try:
        with repo.sessions() as session:
            rows = session.execute(select(RouteMatch.job_id, RouteMatch.sop_instance_uid)).all()
    finally:
        repo.engine.dispose()
    jobs: dict[int, set[str]] = {}
    for job_id, uid in rows:
        assert job_id is not None, "a decision without its forward job"
        jobs.setdefault(job_id, set()).add(uid)
    return jobs


def _counters(node: CtnodeProcess) -> dict[str, int]:
    import json

    out = node.cli("routes", "list", "--json")
    assert out.returncode == 0, out.stderr
    (route,) = json.loads(out.stdout)
    counters: dict[str, int] = route["counters"]
    return counters


@pytest.mark.parametrize(
    ("backend", "rounds"),
    [
        pytest.param("sqlite", 1, marks=pytest.mark.timeout(180)),
        pytest.param("postgresql", 1, marks=pytest.mark.timeout(180)),
        pytest.param("sqlite", 8, marks=[pytest.mark.ondemand, pytest.mark.timeout(1200)]),
        pytest.param("postgresql", 6, marks=[pytest.mark.ondemand, pytest.mark.timeout(1200)]),
    ],
)
def test_kill_during_stable_wait_and_during_forward(
    tmp_path: Path, backend: str, rounds: int, ledger: Ledger, request: pytest.FixtureRequest
) -> None:
    """Each round (1 by default; 8 on SQLite and 6 on PostgreSQL with --ondemand): kill -9
    right after a study arrived (inside stable_after): after the restart the study is forwarded
    once, no duplicate; then kill -9 at a random point of the forward of a second study:
    everything arrives, duplicates bounded, decisions delivered. The ledger checks what was
    acknowledged, the node's consistency and each forward job."""
    db_url = str(request.getfixturevalue("fresh_pg_url")) if backend == "postgresql" else None
    rng = random.Random()
    dest_dir = tmp_path / "dest"
    quiet_uids: set[str] = set()
    wanted: set[str] = set()
    with storescp(dest_dir, extra=["+uf"]) as server, FaultProxy(server.port) as proxy:
        dest = DirectoryPeer(dest_dir)
        node = _node(tmp_path, proxy.port, db_url, stable_after=2)
        ledger.add_node(node)
        ledger.add_peer("pacs", DirectoryPeer(dest_dir))
        node.start()
        for round_no in range(rounds):
            quiet = write_series(tmp_path / f"quiet{round_no}", 6)
            arrived = _send(node, quiet, ledger, round=2 * round_no + 1)
            node.kill()  # inside the 2 s stable wait: nothing of this study forwarded yet
            ledger.fault("kill -9 during stable wait")
            assert not arrived & set(dest.copies())
            node.start()
            quiet_uids |= arrived
            wanted |= arrived
            wait_until(
                lambda w=frozenset(wanted): w <= set(dest.copies()), 30, message="quiet forwarded"
            )

            proxy.set_mode(Mode.THROTTLE, rate=rng.uniform(0.5e6, 1.0e6))
            busy = write_series(tmp_path / f"busy{round_no}", 40, size=256)  # ~5 MB: seconds
            busy_uids = _send(node, busy, ledger, round=2 * round_no + 2)
            assert node.log is not None
            node.log.wait_for("route.forward_submitted", timeout=30, instances=40)
            time.sleep(rng.uniform(0.5, 3.0))
            node.kill()
            ledger.fault("kill -9 during forward")
            proxy.set_mode(Mode.PASS)
            node.start()
            wanted |= busy_uids
            assert len(wanted) == 46 * (round_no + 1)
            wait_until(
                lambda w=frozenset(wanted): w <= set(dest.copies()), 60, message="busy forwarded"
            )
            total = len(wanted)
            wait_until(
                lambda total=total: _counters(node)["forwarded"] == total,
                30,
                message="all delivered",
            )
            assert _counters(node) == {
                "matched": total,
                "forwarded": total,
                "failed": 0,
                "waiting": 0,
            }
        node.stop()
    jobs = _forward_jobs(node)
    assert set().union(*jobs.values()) == wanted
    for job_id, uids in jobs.items():
        # a quiet study's job started after its kill: no duplicate; a busy one's was killed
        bound = 0 if uids <= quiet_uids else BATCH_ITEMS + 1
        ledger.submitted(job_id, peer="pacs", uids=uids, max_duplicates=bound)
    counts = ledger.verify()
    assert counts.lost == 0 and counts.acknowledged == 46 * rounds
    assert counts.jobs_succeeded == len(jobs)
