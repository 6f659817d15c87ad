"""`ctnode run` as a process, driven by DCMTK: storage of the six classes, disk full,
kill -9 in the middle of a transfer, orderly stop."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from ctnode.dicom.contexts import CT_IMAGE
from tests.helpers.dicomgen import (
    SIX_CLASSES,
    dataset_bytes,
    make_dataset,
    write,
    write_series,
)
from tests.helpers.procs import CTNODE, DCMTK_ENV, CtnodeProcess, run_tool

pytestmark = pytest.mark.slow

MODALITY = {"ae_title": "STORESCU", "host": "127.0.0.1", "port": 11112, "accept": ["echo", "store"]}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[CtnodeProcess]:
    """`ctnode run` with one configured modality (DCMTK's default AE title STORESCU)."""
    with CtnodeProcess(tmp_path, peers={"modality": MODALITY}) as proc:
        yield proc


def _index(node: CtnodeProcess) -> dict[str, str]:
    """sop_instance_uid -> relative path, read straight from the SQLite index."""
    with sqlite3.connect(node.data_dir / "ctnode.db") as conn:
        return dict(conn.execute("SELECT sop_instance_uid, path FROM instances"))


def test_echoscu(node: CtnodeProcess) -> None:
    """DCMTK echoscu (as a configured peer) gets a successful C-ECHO."""
    result = run_tool(
        ["echoscu", "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1", str(node.port)]
    )
    assert result.returncode == 0, result.stderr


def test_storescu_six_classes_and_syntaxes_byte_identical(
    node: CtnodeProcess, tmp_path: Path
) -> None:
    """storescu sends the six scanner classes (plus implicit VR, RLE and JPEG 2000 CT);
    every stored data set is byte-identical to what was sent and indexed."""
    files = [
        write(make_dataset(uid), tmp_path / "in" / f"{name}.dcm")
        for name, uid in SIX_CLASSES.items()
    ]
    for syntax, flag in (
        (ImplicitVRLittleEndian, "-xi"),
        (RLELossless, "-xr"),
        (JPEG2000Lossless, "-xv"),
    ):
        path = write(
            make_dataset(CT_IMAGE, transfer_syntax=syntax), tmp_path / "in" / f"CT-{flag}.dcm"
        )
        result = run_tool(
            ["storescu", "-aec", "CTNODE", flag, "127.0.0.1", str(node.port), str(path)]
        )
        assert result.returncode == 0, result.stdout + result.stderr
        files.append(path)
    result = run_tool(
        ["storescu", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files[:6])]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    index = _index(node)
    assert len(index) == 9
    for path in files:
        import pydicom

        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = node.data_dir / "store" / index[uid]
        assert dataset_bytes(stored) == dataset_bytes(path), path.name
    assert list((node.data_dir / "spool").iterdir()) == []
    studies = json.loads(node.cli("studies", "--json").stdout)
    assert len(studies) == 9
    assert {m for s in studies for m in s["modalities"]} == {
        "CT",
        "MR",
        "PR",
        "SR",
        "RTSTRUCT",
        "PT",
    }
    one = studies[0]["study_instance_uid"]
    listed = json.loads(node.cli("instances", "--study", one, "--json").stdout)
    assert len(listed) == 1 and listed[0]["study_instance_uid"] == one


def test_unknown_caller_is_rejected(node: CtnodeProcess) -> None:
    """An AE title that is no configured peer gets A-ASSOCIATE-RJ (storescu fails)."""
    result = run_tool(
        ["echoscu", "-aet", "STRANGER", "-aec", "CTNODE", "127.0.0.1", str(node.port)]
    )
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (tests run as root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_gives_a700_and_recovers(tmp_path: Path, tmpfs: Path) -> None:
    """On a full data dir C-STORE answers 0xA700 with no partial file; once space returns,
    storing works again without a restart."""
    data_dir = tmpfs / "data"
    proc = CtnodeProcess(
        tmp_path / "node",
        peers={"modality": MODALITY},
        config={
            "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
            "database": {"url": f"sqlite:///{tmp_path / 'index.db'}"},
        },
    )
    images = write_series(tmp_path / "in", 12, size=256)  # ~130 KB each
    with proc:
        filler = tmpfs / "filler"
        free = 3 * 1024 * 1024
        filler.write_bytes(b"\0" * (free - 200_000))
        statuses = []
        for path in images:
            result = run_tool(
                ["storescu", "-v", "-aec", "CTNODE", "127.0.0.1", str(proc.port), str(path)]
            )
            statuses.append("Success" in result.stdout + result.stderr)
        assert not all(statuses), "the disk never filled up"
        assert any(statuses)
        log = proc.log
        assert log is not None
        refused = log.wait_for("scp.store.refused", status="0xA700")
        assert "space" in refused["reason"] or "spool" in refused["reason"]
        stored = list((data_dir / "store").rglob("*.dcm"))
        assert len(stored) == sum(statuses)
        assert list((data_dir / "spool").iterdir()) == []
        assert not list((data_dir / "store").rglob(".*.tmp"))
        filler.unlink()
        result = run_tool(
            ["storescu", "-aec", "CTNODE", "127.0.0.1", str(proc.port), *map(str, images)]
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(list((data_dir / "store").rglob("*.dcm"))) == len(images)


def test_min_free_bytes_refuses_before_writing(tmp_path: Path) -> None:
    """Free space below storage.min_free_bytes: 0xA700 before a byte is written."""
    with CtnodeProcess(
        tmp_path, peers={"modality": MODALITY}, config={"storage": {"min_free_bytes": "100PiB"}}
    ) as proc:
        path = write(make_dataset(CT_IMAGE), tmp_path / "in" / "ct.dcm")
        result = run_tool(["storescu", "-aec", "CTNODE", "127.0.0.1", str(proc.port), str(path)])
        assert result.returncode != 0 or "A700" in result.stdout + result.stderr
        assert proc.log is not None
        proc.log.wait_for("scp.store.refused", status="0xA700")
        assert list((proc.data_dir / "store").rglob("*.dcm")) == []


def test_kill_9_during_storescu_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 while storescu sends 200 instances; after restart every instance that got
    Success is on disk and indexed, and the spool is empty."""
    files = write_series(tmp_path / "in", 200, size=128)
    node = CtnodeProcess(tmp_path / "node", peers={"modality": MODALITY})
    node.start()
    sender = subprocess.Popen(
        ["storescu", "-v", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)],
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert sender.stdout is not None
    acknowledged: list[str] = []
    current: str | None = None
    killed = False
    for line in sender.stdout:
        if m := re.match(r"I: Sending file: (.*)$", line.strip()):
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(current)
            if len(acknowledged) == 60 and not killed:
                node.kill()
                killed = True
    sender.wait(timeout=60)
    assert killed and 60 <= len(acknowledged) < 200
    node.start()  # restart on the same data dir: spool recovery runs
    node.stop()
    index = _index(node)
    import pydicom

    for path in acknowledged:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in index, f"{path} was acknowledged but is not indexed"
        stored = node.data_dir / "store" / index[uid]
        assert dataset_bytes(stored) == dataset_bytes(Path(path))
    assert list((node.data_dir / "spool").iterdir()) == []
    # nothing in the store that is not in the index
    on_disk = {p.name for p in (node.data_dir / "store").rglob("*.dcm")}
    assert on_disk == {Path(p).name for p in index.values()}


def test_sigterm_lets_inflight_store_finish(tmp_path: Path) -> None:
    """SIGTERM during a transfer: the association in progress completes, then exit 0."""
    files = write_series(tmp_path / "in", 150, size=256)
    with CtnodeProcess(tmp_path / "node", peers={"modality": MODALITY}) as node:
        sender = subprocess.Popen(
            ["storescu", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert node.log is not None
        node.log.wait_for("scp.store.accepted")
        node.signal(signal.SIGTERM)
        output, _ = sender.communicate(timeout=60)
        assert sender.returncode == 0, output
        assert node.wait(30) == 0
        assert len(_index(node)) == 150
        node.log.wait_for("daemon.stopped")


def test_config_check_lists_problems_and_exits_2(tmp_path: Path) -> None:
    """`ctnode config check` lists every problem with file and key and exits 2."""
    node = CtnodeProcess(
        tmp_path, peers={"bad": {"ae_title": "X" * 20, "host": "h", "port": 0, "extra": 1}}
    )
    result = node.cli("config", "check")
    assert result.returncode == 2
    assert "bad.yaml: ae_title" in result.stderr
    assert "bad.yaml: port" in result.stderr
    assert "bad.yaml: extra: unknown key" in result.stderr
    run = subprocess.run(
        [*CTNODE, "--config", str(node.config_path), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        env=node.env,
        check=False,
    )
    assert run.returncode == 2
    assert "bad.yaml: ae_title" in run.stderr


def test_postgres_not_at_head_refuses_to_start(tmp_path: Path, fresh_pg_url: str) -> None:
    """On PostgreSQL, `ctnode run` exits 2 naming `ctnode db upgrade` until the schema is
    migrated; after `ctnode db upgrade` it starts."""
    node = CtnodeProcess(tmp_path, config={"database": {"url": fresh_pg_url}})
    node.start(wait=False)
    assert node.wait(30) == 2
    assert node.log is not None
    time.sleep(0.2)
    assert any("ctnode db upgrade" in line for line in node.log.lines)
    upgrade = node.cli("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    node.start()
    assert node.stop() == 0
