"""The wake channel end to end: a job submitted by the CLI starts at once, not at the next
poll; without a running node, submitting works exactly as before."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.jobs import job_json, wait_job
from tests.helpers.procs import CtnodeProcess, storescp

pytestmark = pytest.mark.slow

#: Far longer than any test here may take: a job that starts by polling fails the test.
SLOW_POLL = {"workers": 2, "poll_interval": 30, "lease_seconds": 10}


def _peer(port: int) -> dict[str, Any]:
    return {
        "ae_title": "STORESCP",
        "host": "127.0.0.1",
        "port": port,
        "accept": ["echo", "store"],
        "timeouts": {"connect": 3, "acse": 5, "dimse": 10, "network": 10},
    }


@pytest.fixture
def peer_port(tmp_path: Path) -> Iterator[int]:
    """A DCMTK storescp peer."""
    with storescp(tmp_path / "peer") as server:
        yield server.port


def test_submitted_job_starts_at_once(tmp_path: Path, peer_port: int) -> None:
    """poll_interval 30 s: `push --wait` and a plain `push` both finish within seconds, and
    the wake socket exists while the node runs and is removed when it stops."""
    write_series(tmp_path / "in", 5)
    node = CtnodeProcess(
        tmp_path / "node", config={"queue": SLOW_POLL}, peers={"scp": _peer(peer_port)}
    )
    with node:
        assert (node.data_dir / "run" / "wake.sock").is_socket()
        time.sleep(0.5)  # the workers' start-up claim found nothing: they now wait 30 s
        started = time.monotonic()
        result = node.cli("push", "scp", str(tmp_path / "in"), "--wait", "--json", timeout=25)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["state"] == "succeeded"
        assert time.monotonic() - started < 10

        started = time.monotonic()
        result = node.cli("push", "scp", str(tmp_path / "in"))
        assert result.returncode == 0, result.stderr
        job = wait_job(node, int(result.stdout), {"succeeded", "failed"}, timeout=20)
        assert job["state"] == "succeeded", job
        assert time.monotonic() - started < 10
    assert not (node.data_dir / "run" / "wake.sock").exists()


def test_submission_without_a_node(tmp_path: Path, peer_port: int) -> None:
    """No node running (and a stale socket file): `push` exits 0 with the job queued; a node
    started later runs it."""
    write_series(tmp_path / "in", 3)
    node = CtnodeProcess(
        tmp_path / "node", config={"queue": SLOW_POLL}, peers={"scp": _peer(peer_port)}
    )
    (node.data_dir / "run").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
        stale.bind(str(node.data_dir / "run" / "wake.sock"))
    result = node.cli("push", "scp", str(tmp_path / "in"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    job_id = int(result.stdout)
    assert job_json(node, job_id)["state"] == "queued"
    with node:
        job = wait_job(node, job_id, {"succeeded", "failed"}, timeout=20)
    assert job["state"] == "succeeded", job
