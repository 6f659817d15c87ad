"""SIGHUP reloads the peers of a running `ctnode run` atomically: a new valid peer can associate
at once, an invalid file keeps the old set (and says why), and associations in progress go on."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.procs import DCMTK_ENV, CtnodeProcess, run_tool
from tests.helpers.scu import echo_ok
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

#: DCMTK's default calling AE title is STORESCU (echoscu's is ECHOSCU).
MODALITY = {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104, "accept": ["echo", "store"]}


def peer(ae_title: str) -> dict[str, object]:
    """A peer on this host that may C-ECHO us."""
    return {"ae_title": ae_title, "host": "127.0.0.1", "port": 104, "accept": ["echo"]}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[CtnodeProcess]:
    """`ctnode run` with one configured modality."""
    with CtnodeProcess(tmp_path, peers={"modality": MODALITY}) as proc:
        yield proc


def reload(node: CtnodeProcess, event: str, **fields: object) -> dict[str, object]:
    """Send SIGHUP and wait for the *event* it leads to (a new one, not an earlier one)."""
    assert node.log is not None
    seen = len(node.log.named(event))
    node.signal(signal.SIGHUP)
    log = node.log

    def logged() -> dict[str, object] | None:
        for candidate in log.named(event)[seen:]:
            if all(candidate.get(k) == v for k, v in fields.items()):
                return candidate
        return None

    return wait_until(
        logged,
        30,
        interval=0.02,
        message=lambda: f"{event} {fields} after SIGHUP:\n" + "\n".join(log.lines[-20:]),
    )


def test_new_valid_peer_can_associate_right_after_sighup(node: CtnodeProcess) -> None:
    """A caller unknown at start is rejected; after adding its file and SIGHUP
    (``config.reloaded`` with 2 peers) its C-ECHO succeeds at once; the old peer still works."""
    assert not echo_ok(node.port, calling="NEWPEER")
    node.write_peer("newpeer", peer("NEWPEER"))
    reloaded = reload(node, "config.reloaded")
    assert reloaded["peers"] == 2 and reloaded["previous_peers"] == 1
    assert echo_ok(node.port, calling="NEWPEER")
    assert echo_ok(node.port, calling="STORESCU")


def test_invalid_peer_file_keeps_the_old_set_and_logs_every_problem(node: CtnodeProcess) -> None:
    """One invalid file next to a valid new one: the whole new set is refused
    (``config.reload_failed`` lists every problem), the old peers keep working and the new valid
    peer is not half-added. Once the file is fixed, the next SIGHUP applies the set."""
    node.write_peer("other", peer("OTHER"))
    node.write_peer("broken", {"ae_title": "THIS_AE_TITLE_IS_TOO_LONG", "host": "127.0.0.1"})
    failed = reload(node, "config.reload_failed")
    problems = failed["problems"]
    assert isinstance(problems, list) and len(problems) == 2  # ae_title too long, port missing
    assert all("broken.yaml" in p for p in problems)
    assert failed["kept_peers"] == 1
    assert failed["level"] == "error"
    assert echo_ok(node.port, calling="STORESCU")
    assert not echo_ok(node.port, calling="OTHER")
    result = run_tool(["echoscu", "-aec", "CTNODE", "127.0.0.1", str(node.port)])
    assert result.returncode != 0  # ECHOSCU was never a peer

    node.write_peer("broken", peer("FIXED"))
    assert reload(node, "config.reloaded")["peers"] == 3
    assert echo_ok(node.port, calling="OTHER")
    assert echo_ok(node.port, calling="FIXED")


def test_storescu_in_progress_is_not_dropped_by_reloads(
    node: CtnodeProcess, tmp_path: Path
) -> None:
    """storescu sends 600 instances on one association while the peers are reloaded three
    times: storescu exits 0, the association ends released (after the reloads), and every
    instance is indexed."""
    files = write_series(tmp_path / "in", 600, size=64)
    sender = subprocess.Popen(
        ["storescu", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)],
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert node.log is not None
        first = node.log.wait_for("scp.store.accepted", timeout=60)
        association = first["association"]
        for n in range(3):
            node.write_peer(f"extra{n}", peer(f"EXTRA{n}"))
            reload(node, "config.reloaded", peers=2 + n)
        output, _ = sender.communicate(timeout=300)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert sender.returncode == 0, output

    ended = node.log.wait_for("scp.association", association=association, timeout=30)
    assert ended["result"] == "released"
    assert ended["stored"] == 600
    events = node.log.events
    reloads = [i for i, e in enumerate(events) if e.get("event") == "config.reloaded"]
    assert len(reloads) == 3
    assert max(reloads) < events.index(ended), "storescu finished before the reloads"
    with sqlite3.connect(node.data_dir / "ctnode.db") as conn:
        (count,) = conn.execute("SELECT count(*) FROM instances").fetchone()
    assert count == 600
