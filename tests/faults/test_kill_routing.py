"""kill -9 of ``ctnode run`` while routing: during the stable wait and during the forward.

The scanner is DCMTK storescu (calling AE SCANNER); the destination is storescp with unique
file names (``+uf``) so every copy is visible, behind a throttling proxy so a forward lasts
seconds and the kill lands inside it. After the restart every instance reaches the destination;
a kill during the stable wait costs no duplicate at all (the decisions were committed with the
instances, nothing was sent yet); a kill during the forward costs at most ``BATCH_ITEMS + 1``
duplicates per kill (the push's unrecorded outcome batch plus the instance in flight), and
every routing decision ends ``delivered``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from ctnode.scu.push import BATCH_ITEMS
from tests.faults.kills import QUEUE
from tests.helpers.dicomgen import write_series
from tests.helpers.ledger import DirectoryPeer, uid_of
from tests.helpers.procs import CtnodeProcess, run_tool, storescp, write_yaml
from tests.helpers.proxy import FaultProxy, Mode
from tests.helpers.qrdata import peer
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


def _send(node: CtnodeProcess, files: list[Path]) -> None:
    out = run_tool(
        ["storescu", "-aet", "SCANNER", "-aec", "CTNODE", "127.0.0.1", str(node.port)]
        + [str(f) for f in files]
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _counters(node: CtnodeProcess) -> dict[str, int]:
    import json

    out = node.cli("routes", "list", "--json")
    assert out.returncode == 0, out.stderr
    (route,) = json.loads(out.stdout)
    counters: dict[str, int] = route["counters"]
    return counters


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_during_stable_wait_and_during_forward(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Round 1: kill -9 right after the study arrived (inside stable_after): after the restart
    the study is forwarded once, no duplicate. Round 2: kill -9 at a random point of the
    forward of a second study: everything arrives, duplicates bounded, decisions delivered."""
    db_url = str(request.getfixturevalue("fresh_pg_url")) if backend == "postgresql" else None
    rng = random.Random()
    dest_dir = tmp_path / "dest"
    with storescp(dest_dir, extra=["+uf"]) as server, FaultProxy(server.port) as proxy:
        dest = DirectoryPeer(dest_dir)
        node = _node(tmp_path, proxy.port, db_url, stable_after=2)
        quiet = write_series(tmp_path / "quiet", 6)
        node.start()
        _send(node, quiet)
        node.kill()  # inside the 2 s stable wait: nothing forwarded yet
        assert sum(dest.copies().values()) == 0
        node.start()
        wanted = {uid_of(f) for f in quiet}
        wait_until(lambda: wanted <= set(dest.copies()), 30, message="quiet study forwarded")
        assert all(dest.copies()[u] == 1 for u in wanted)  # no duplicate at all

        proxy.set_mode(Mode.THROTTLE, rate=rng.uniform(0.5e6, 1.0e6))
        busy = write_series(tmp_path / "busy", 40, size=256)  # ~5 MB: several seconds
        _send(node, busy)
        assert node.log is not None
        node.log.wait_for("route.forward_submitted", timeout=30, instances=40)
        time.sleep(rng.uniform(0.5, 3.0))
        node.kill()
        proxy.set_mode(Mode.PASS)
        node.start()
        wanted |= {uid_of(f) for f in busy}
        wait_until(lambda: wanted <= set(dest.copies()), 60, message="busy study forwarded")
        copies = dest.copies()
        duplicates = sum(copies[u] - 1 for u in wanted)
        assert duplicates <= BATCH_ITEMS + 1, copies
        wait_until(lambda: _counters(node)["forwarded"] == 46, 30, message="all delivered")
        assert _counters(node) == {"matched": 46, "forwarded": 46, "failed": 0, "waiting": 0}
        node.stop()
