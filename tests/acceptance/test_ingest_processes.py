"""``storage.ingest_processes``: concurrent associations placed by worker processes, end to end
through ``ctnode run`` — every object stored and indexed, routing decided in the workers with
the node's current route set (also after a SIGHUP), and a clean stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_routing import Setup, send, started, uid_of, uids_in
from tests.helpers.dicomgen import write_series
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A routing node with two ingest workers and a storescp destination (started)."""
    with started(tmp_path, {"storage": {"ingest_processes": 2, "min_free_bytes": "1MiB"}}) as s:
        yield s


def send_at_once(setup: Setup, series: list[tuple[str, list[Path]]]) -> None:
    """Each (calling AE, files) on its own storescu association, all at once."""
    threads = [threading.Thread(target=send, args=(setup.node, files, ae)) for ae, files in series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_concurrent_receive_through_workers_routes_with_the_current_set(
    setup: Setup, tmp_path: Path
) -> None:
    """Three scanners' associations at once: all 60 objects are indexed (`studies`) and, by an
    instance route decided where each was placed, reach storescp. After SIGHUP swaps the route
    for one that only takes SCANNER2, objects from SCANNER (placed by workers too) are no longer
    forwarded and SCANNER2's are. The stop reports objects placed by the workers."""
    setup.route("all", trigger="instance", to=["pacs"])
    with setup.node as node:
        assert node.log is not None
        first = [(ae, write_series(tmp_path / f"a{i}", 20)) for i, ae in enumerate(["SCANNER"] * 3)]
        send_at_once(setup, first)
        sent = {uid_of(f) for _, files in first for f in files}
        wait_until(lambda: set(uids_in(setup.received)) == sent, 30, message="60 at storescp")
        (setup.routes / "all.yaml").unlink()
        setup.route("second", trigger="instance", to=["pacs"], match={"calling_ae": ["SCANNER2"]})
        node.signal(signal.SIGHUP)
        node.log.wait_for("route.reloaded", routes=1)
        second = [
            ("SCANNER", write_series(tmp_path / "b0", 20)),
            ("SCANNER2", write_series(tmp_path / "b1", 20)),
            ("SCANNER", write_series(tmp_path / "b2", 20)),
        ]
        send_at_once(setup, second)
        routed = {uid_of(f) for f in second[1][1]}
        wait_until(
            lambda: set(uids_in(setup.received)) == sent | routed, 30, message="SCANNER2's 20"
        )
        assert sum(study["instances"] for study in setup.studies()) == 120
    closed = node.log.named("storage.ingest_pool_closed")
    assert closed and closed[-1]["placed_in_workers"] > 0, closed
    # Nothing the old route would have taken arrived late, and nothing twice.
    assert sorted(uids_in(setup.received)) == sorted(sent | routed)
