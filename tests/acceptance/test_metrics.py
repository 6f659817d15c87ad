"""/metrics, /healthz and /readyz of a running node."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.fakes import FakeStoreSCP
from tests.helpers.jobs import wait_job
from tests.helpers.procs import CtnodeProcess, free_port, run_tool

pytestmark = pytest.mark.slow


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs for the data dir (to make it read-only later)."""
    mount = tmp_path / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_metrics_move_and_readiness_follows_the_data_dir(tmp_path: Path, tmpfs: Path) -> None:
    """Receiving an instance and a failing job move their metrics; /readyz answers 503 with
    the failing check while the data dir is read-only, 200 again once it is writable; no
    UID appears in any label."""
    metrics_port = free_port()
    write_series(tmp_path / "in", 2)
    fake = FakeStoreSCP(lambda n, uid: 0x0122)
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            config={
                "metrics": {"enabled": True, "bind": "127.0.0.1", "port": metrics_port},
                "storage": {"data_dir": str(tmpfs), "min_free_bytes": 0},
                "database": {"url": f"sqlite:///{tmp_path / 'index.db'}"},
                "queue": {"poll_interval": 0.2},
            },
            peers={
                "modality": {
                    "ae_title": "STORESCU",
                    "host": "127.0.0.1",
                    "port": 104,
                    "accept": ["echo", "store"],
                },
                "fake": {"ae_title": "FAKESCP", "host": "127.0.0.1", "port": fake.port},
            },
        ) as node,
    ):
        assert _get(metrics_port, "/healthz")[0] == 200
        code, body = _get(metrics_port, "/readyz")
        assert code == 200, body
        assert set(json.loads(body)["checks"]) == {"database", "scp", "data_dir", "peers"}
        before = _get(metrics_port, "/metrics")[1]
        assert _value(before, "ctnode_instances_received_total", peer="modality") == 0

        sent = run_tool(
            [
                "storescu",
                "-aec",
                "CTNODE",
                "127.0.0.1",
                str(node.port),
                str(tmp_path / "in" / "IMG0001.dcm"),
            ]
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        job_id = int(node.cli("push", "fake", str(tmp_path / "in")).stdout)
        assert wait_job(node, job_id, {"failed"})["state"] == "failed"
        time.sleep(2.5)  # the scrape-time gauges are cached for 2 s
        after = _get(metrics_port, "/metrics")[1]
        assert _value(after, "ctnode_instances_received_total", peer="modality") == 1
        assert _value(after, "ctnode_bytes_received_total", peer="modality") > 0
        assert (
            _value(
                after,
                "ctnode_associations_total",
                direction="inbound",
                peer="modality",
                result="released",
            )
            >= 1
        )
        assert _value(after, "ctnode_jobs", kind="push", state="failed") == 1
        assert (
            _value(
                after, "ctnode_dimse_failures_total", direction="outbound", status_group="0x0122"
            )
            == 2
        )
        assert _value(after, "ctnode_job_attempts_total", kind="push", outcome="permanent") == 1
        assert _value(after, "ctnode_data_dir_free_bytes") > 0
        assert not re.search(r'="[0-9]+(\.[0-9]+){3,}"', after), "a UID leaked into a label"

        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
        try:
            code, body = _get(metrics_port, "/readyz")
            assert code == 503
            checks = json.loads(body)["checks"]
            assert not checks["data_dir"]["ok"] and "not writable" in checks["data_dir"]["detail"]
            assert checks["database"]["ok"] and checks["scp"]["ok"]
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
        assert _get(metrics_port, "/readyz")[0] == 200


def test_status_reports_node_queue_and_failures(tmp_path: Path) -> None:
    """`ctnode status --json`: up with the failed job and its reason while the node runs
    (readiness included when metrics are on), the Q/R SCP's requests and sub-operations by
    status and peer; exit 1 and DOWN once it stopped."""
    write_series(tmp_path / "in", 1)
    metrics_port = free_port()
    fake = FakeStoreSCP(lambda n, uid: 0xA900)
    with fake:
        node = CtnodeProcess(
            tmp_path / "node",
            config={
                "queue": {"poll_interval": 0.2},
                "metrics": {"enabled": True, "bind": "127.0.0.1", "port": metrics_port},
            },
            peers={
                "fake": {"ae_title": "FAKESCP", "host": "127.0.0.1", "port": fake.port},
                "viewer": {
                    "ae_title": "VIEWER",
                    "host": "127.0.0.1",
                    "port": 104,
                    "accept": ["store", "find", "move"],
                },
            },
        )
        with node:
            job_id = int(node.cli("push", "fake", str(tmp_path / "in")).stdout)
            wait_job(node, job_id, {"failed"})
            dcmtk = ["-aet", "VIEWER", "-aec", "CTNODE"]
            address = ["127.0.0.1", str(node.port)]
            image = str(tmp_path / "in" / "IMG0001.dcm")
            stored = run_tool(["storescu", *dcmtk, *address, image])
            found = run_tool(["findscu", "-S", *dcmtk, "-k", "QueryRetrieveLevel=STUDY", *address])
            for done in (stored, found):
                assert done.returncode == 0, done.stdout + done.stderr
            patient = ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PAT001"]
            # every sub-operation refused by the destination: 0xA702
            run_tool(["movescu", "-P", *dcmtk, "-aem", "FAKESCP", *patient, *address])
            result = node.cli("status", "--json")
            text = node.cli("status").stdout
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["up"] and report["ready"]["ready"]
        assert report["queue"] == {"failed": 1}
        (failed,) = report["failed_last_24h"]
        assert failed["id"] == job_id and "0xA900" in failed["last_error"]
        assert report["query_retrieve"] == {
            "requests": {"find": {"0x0000": 1}, "move": {"0xA702": 1}},
            "suboperations": {"move": {"0xA9xx": 1}},
            "by_peer": {"viewer": {"find": 1, "move": 1}},
        }
        assert "node: up" in text and "0xA900" in text
        assert "query/retrieve since start: 1 C-FIND, 1 C-MOVE (1 not successful), 0 C-GET" in text
        assert "C-MOVE sub-operations: 1 0xA9xx" in text
        down = node.cli("status")
    assert down.returncode == 1
    assert "node: DOWN" in down.stdout
