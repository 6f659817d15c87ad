"""Push jobs end to end: `ctnode push` (CLI writes the job) executed by `ctnode run` against
real DCMTK peers and scripted pynetdicom peers."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from ctnode.dicom.contexts import CT_IMAGE
from ctnode.scu.push import BATCH_ITEMS
from tests.helpers.dcmqrscp import dcmqrscp
from tests.helpers.dicomgen import SIX_CLASSES, dataset_bytes, make_dataset, write, write_series
from tests.helpers.fakes import FakeStoreSCP
from tests.helpers.jobs import job_json, wait_job
from tests.helpers.peerfiles import FAST_QUEUE
from tests.helpers.peerfiles import peer as _peer
from tests.helpers.procs import CTNODE, CtnodeProcess, free_port, run_tool, storescp
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow


def _job(node: CtnodeProcess, job_id: int) -> dict[str, Any]:
    return job_json(node, job_id)


def _wait_job(
    node: CtnodeProcess, job_id: int, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    return wait_job(node, job_id, states, timeout)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _received_by_uid(directory: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in directory.rglob("*"):
        if path.is_file():
            out.setdefault(_uid(path), []).append(path)
    return out


@pytest.fixture
def scp_dir(tmp_path: Path) -> Path:
    """Where the DCMTK storescp peer writes."""
    return tmp_path / "peer"


@pytest.fixture
def storescp_peer(scp_dir: Path) -> Iterator[Any]:
    """DCMTK storescp (unique file names, so duplicates are visible)."""
    with storescp(scp_dir, extra=["+uf"]) as server:
        yield server


def test_push_six_classes_byte_identical(tmp_path: Path, storescp_peer: Any, scp_dir: Path) -> None:
    """`ctnode push --wait --json` of the six classes to storescp: exit 0, every item
    succeeded, and the peer holds data sets byte-identical to the files."""
    files = [
        write(make_dataset(uid), tmp_path / "in" / f"{name}.dcm")
        for name, uid in SIX_CLASSES.items()
    ]
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    with CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE},
        peers={"scp": _peer("STORESCP", storescp_peer.port)},
    ) as node:
        result = node.cli("push", "scp", str(tmp_path / "in"), "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        job = json.loads(result.stdout)
        assert job["state"] == "succeeded" and job["kind"] == "push"
        assert job["items"] == {"total": 6, "succeeded": 6, "warning": 0, "failed": 0, "pending": 0}
        assert job["skipped"] == [
            {"path": str(tmp_path / "in" / "notes.txt"), "reason": "not a DICOM Part 10 file"}
        ]
        assert "skipped" in result.stderr
        for key in (
            "id",
            "peer",
            "priority",
            "attempts",
            "max_attempts",
            "not_before",
            "created_at",
            "started_at",
            "finished_at",
            "last_status",
            "last_error",
            "result",
        ):
            assert key in job
    received = _received_by_uid(scp_dir)
    for path in files:
        (copy,) = received[_uid(path)]
        assert dataset_bytes(copy) == dataset_bytes(path), path.name


def test_compressed_to_a_peer_that_refuses_compression(tmp_path: Path) -> None:
    """JPEG 2000 and RLE files pushed to dcmqrscp (uncompressed only) arrive decompressed,
    with identical pixel values."""
    originals = {
        "j2k": write(
            make_dataset(CT_IMAGE, transfer_syntax=JPEG2000Lossless, size=32),
            tmp_path / "in" / "j2k.dcm",
        ),
        "rle": write(
            make_dataset(CT_IMAGE, transfer_syntax=RLELossless, size=32),
            tmp_path / "in" / "rle.dcm",
        ),
    }
    with (
        dcmqrscp(tmp_path / "qr") as qr,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"qr": _peer("DCMQRSCP", qr.port)},
        ) as node,
    ):
        result = node.cli("push", "qr", *map(str, originals.values()), "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
    stored = {
        _uid(p): p
        for p in (tmp_path / "qr" / "storage").rglob("*")
        if p.is_file() and p.name != "index.dat"
    }
    for path in originals.values():
        original = pydicom.dcmread(path)
        copy = pydicom.dcmread(stored[str(original.SOPInstanceUID)])
        assert not copy.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(copy.pixel_array, original.pixel_array)


def test_peer_down_then_up(tmp_path: Path, scp_dir: Path) -> None:
    """Nobody listens: attempts fail with 'cannot connect' and are retried; once storescp
    starts, the job succeeds."""
    port = free_port()
    files = write_series(tmp_path / "in", 5)
    with CtnodeProcess(
        tmp_path / "node", config={"queue": FAST_QUEUE}, peers={"scp": _peer("STORESCP", port)}
    ) as node:
        job_id = int(node.cli("push", "scp", str(tmp_path / "in")).stdout)
        job = wait_until(
            lambda: (j := _job(node, job_id))["attempts"] >= 2 and j,
            30,
            interval=0.2,
            message=lambda: f"a second attempt: {_job(node, job_id)}",
        )
        assert "cannot connect" in job["last_error"]
        with storescp(scp_dir, port):
            job = _wait_job(node, job_id, {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        assert any(e["event"] == "retry_scheduled" for e in job["events"])
    assert len(_received_by_uid(scp_dir)) == len(files)


def test_out_of_resources_then_success(tmp_path: Path) -> None:
    """A peer answering 0xA700 first: the attempt is retried and the job succeeds."""
    write_series(tmp_path / "in", 3)
    fake = FakeStoreSCP(lambda n, uid: 0xA700 if n == 0 else 0x0000)
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"fake": _peer("FAKESCP", fake.port)},
        ) as node,
    ):
        result = node.cli("push", "fake", str(tmp_path / "in"), "--wait", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        job = _job(node, json.loads(result.stdout)["id"])
    assert job["attempts"] == 2
    retry = next(e for e in job["events"] if e["event"] == "retry_scheduled")
    assert retry["status"] == "0xA700"
    assert len(set(fake.received)) == 3


@pytest.mark.parametrize("code", [0x0122, 0xA900, 0xC000])
def test_permanent_refusal_fails_at_once(tmp_path: Path, code: int) -> None:
    """0x0122 / 0xA9xx / 0xCxxx: the job fails on its first attempt with the reason;
    `--wait` exits 1."""
    write_series(tmp_path / "in", 2)
    fake = FakeStoreSCP(lambda n, uid: code)
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"fake": _peer("FAKESCP", fake.port)},
        ) as node,
    ):
        result = node.cli("push", "fake", str(tmp_path / "in"), "--wait", "--json")
        assert result.returncode == 1
        job = _job(node, json.loads(result.stdout)["id"])
    assert job["state"] == "failed" and job["attempts"] == 1
    assert f"0x{code:04X}" in job["last_error"]
    assert job["items"]["failed"] == 2
    assert all(i["status"] == f"0x{code:04X}" for i in job["failed_items"])


def test_association_rejected_permanently(tmp_path: Path) -> None:
    """The peer rejects our called AE title (1/1/7): failed at once, reason names it."""
    write_series(tmp_path / "in", 2)
    fake = FakeStoreSCP()
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"fake": _peer("WRONGAE", fake.port)},
        ) as node,
    ):
        result = node.cli("push", "fake", str(tmp_path / "in"), "--wait", "--json")
        assert result.returncode == 1
        job = _job(node, json.loads(result.stdout)["id"])
    assert job["attempts"] == 1 and job["state"] == "failed"
    assert "called AE title not recognised" in job["last_error"]


def test_kill_9_mid_push_resumes_with_bounded_duplicates(
    tmp_path: Path, scp_dir: Path, storescp_peer: Any
) -> None:
    """kill -9 of `ctnode run` while pushing 300 instances; after restart the job completes,
    every instance is at the peer, and duplicates are bounded by the unrecorded batch."""
    files = write_series(tmp_path / "in", 300, size=320)
    node = CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE},
        peers={"scp": _peer("STORESCP", storescp_peer.port)},
    )
    node.start()
    # The CLI process outlives its submission by its own shutdown; watch the peer meanwhile.
    submit = subprocess.Popen(
        [*CTNODE, "--config", str(node.config_path), "push", "scp", str(tmp_path / "in")],
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: sum(1 for p in scp_dir.iterdir()) >= 60,
        60,
        interval=0.005,
        message="60 files at the peer",
    )
    node.kill()
    job_id = int(submit.communicate(timeout=30)[0])
    at_kill = sum(1 for _ in scp_dir.iterdir())
    assert at_kill < 300, "the push finished before the kill"
    node.start()
    job = _wait_job(node, job_id, {"succeeded", "failed"})
    node.stop()
    assert job["state"] == "succeeded", job
    received = _received_by_uid(scp_dir)
    assert set(received) == {_uid(p) for p in files}
    duplicates = sum(len(v) - 1 for v in received.values())
    assert duplicates <= BATCH_ITEMS + 1, duplicates
    assert any(e["event"] == "resumed" for e in job["events"])


def test_cancel_running_push(tmp_path: Path) -> None:
    """`ctnode jobs cancel` stops a running push at the next instance."""
    write_series(tmp_path / "in", 200)

    def slow(n: int, uid: str) -> int:
        time.sleep(0.03)
        return 0

    fake = FakeStoreSCP(slow)
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": {**FAST_QUEUE, "lease_seconds": 3}},
            peers={"fake": _peer("FAKESCP", fake.port)},
        ) as node,
    ):
        job_id = int(node.cli("push", "fake", str(tmp_path / "in")).stdout)
        _wait_job(node, job_id, {"running"})
        wait_until(lambda: fake.received, 60, message="a first C-STORE at the peer")
        out = node.cli("jobs", "cancel", str(job_id))
        assert out.returncode == 0, out.stderr
        job = _wait_job(node, job_id, {"cancelled", "succeeded"})
    assert job["state"] == "cancelled"
    assert job["items"]["pending"] > 0
    assert 0 < len(fake.received) < 200


def test_push_a_study_from_the_local_store(
    tmp_path: Path, storescp_peer: Any, scp_dir: Path
) -> None:
    """Instances received from a modality are pushed on with `--study UID`."""
    files = write_series(tmp_path / "in", 4)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE},
        peers={
            "scp": _peer("STORESCP", storescp_peer.port),
            "modality": _peer("STORESCU", 104),
        },
    ) as node:
        sent = run_tool(
            ["storescu", "-aec", "CTNODE", "127.0.0.1", str(node.port), *map(str, files)]
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        result = node.cli("push", "scp", "--study", study, "--wait")
        assert result.returncode == 0, result.stdout + result.stderr
    assert set(_received_by_uid(scp_dir)) == {_uid(p) for p in files}


def test_push_usage_errors(tmp_path: Path) -> None:
    """Unknown peer, nothing to push, or both paths and --study: one line, exit 2."""
    with CtnodeProcess(tmp_path / "node", peers={"scp": _peer("STORESCP", 104)}) as node:
        unknown = node.cli("push", "nope", str(tmp_path))
        assert unknown.returncode == 2
        assert "no peer named 'nope'" in unknown.stderr
        (tmp_path / "empty").mkdir()
        empty = node.cli("push", "scp", str(tmp_path / "empty"))
        assert empty.returncode == 2 and "nothing to push" in empty.stderr
        both = node.cli("push", "scp", str(tmp_path), "--study", "1.2.3")
        assert both.returncode == 2


def test_many_pushes_never_lose_a_response(
    tmp_path: Path, storescp_peer: Any, scp_dir: Path
) -> None:
    """3 pushes of 1,500 small instances each at full speed: every job succeeds on its first
    attempt — no lost C-STORE response, no DIMSE timeout, no retry."""
    write_series(tmp_path / "in", 1500, size=32)
    with CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE},
        peers={"scp": _peer("STORESCP", storescp_peer.port)},
    ) as node:
        for _ in range(3):
            result = node.cli("push", "scp", str(tmp_path / "in"), "--wait", "--json", timeout=180)
            assert result.returncode == 0, result.stderr
            job = json.loads(result.stdout)
            assert job["attempts"] == 1, job
            assert job["items"]["succeeded"] == 1500


def test_peer_association_limit_and_retry_override(tmp_path: Path) -> None:
    """Three jobs to a peer with max_associations 1 never overlap; the peer's retry policy
    overrides queue.retry for its jobs."""
    for n in range(3):
        write_series(tmp_path / f"in{n}", 20)

    def slow(n: int, uid: str) -> int:
        time.sleep(0.01)
        return 0

    fake = FakeStoreSCP(slow)
    peer = _peer(
        "FAKESCP", fake.port, max_associations=1, retry={"max_attempts": 2, "initial_delay": 1}
    )
    with (
        fake,
        CtnodeProcess(
            tmp_path / "node", config={"queue": {**FAST_QUEUE, "workers": 3}}, peers={"fake": peer}
        ) as node,
    ):
        ids = [int(node.cli("push", "fake", str(tmp_path / f"in{n}")).stdout) for n in range(3)]
        jobs = [_wait_job(node, i, {"succeeded", "failed"}) for i in ids]
    assert all(j["state"] == "succeeded" for j in jobs)
    assert all(j["max_attempts"] == 2 for j in jobs)
    assert fake.max_concurrent == 1
    assert len(fake.received) == 60


def test_jobs_cli_json_contract(tmp_path: Path, storescp_peer: Any) -> None:
    """`jobs list --json` and `jobs show --json` carry the documented keys; `jobs retry` of a
    succeeded job is refused with exit 2."""
    write_series(tmp_path / "in", 2)
    with CtnodeProcess(
        tmp_path / "node",
        config={"queue": FAST_QUEUE},
        peers={"scp": _peer("STORESCP", storescp_peer.port)},
    ) as node:
        job_id = int(node.cli("push", "scp", str(tmp_path / "in"), "--wait").stdout.split()[1])
        listed = json.loads(node.cli("jobs", "list", "--json").stdout)
        shown = json.loads(node.cli("jobs", "show", str(job_id), "--json").stdout)
        text = node.cli("jobs", "show", str(job_id)).stdout
        retry = node.cli("jobs", "retry", str(job_id))
    assert [j["id"] for j in listed] == [job_id]
    for key in (
        "id",
        "kind",
        "peer",
        "state",
        "priority",
        "attempts",
        "max_attempts",
        "not_before",
        "created_at",
        "started_at",
        "finished_at",
        "last_status",
        "last_error",
        "items",
        "result",
    ):
        assert key in shown
    assert shown["created_at"].endswith("Z")
    assert [e["event"] for e in shown["events"]] == ["submitted", "claimed", "succeeded"]
    assert "events:" in text and "succeeded" in text
    assert retry.returncode == 2 and "only failed or cancelled" in retry.stderr


def test_push_to_a_peer_added_before_reload(
    tmp_path: Path, storescp_peer: Any, scp_dir: Path
) -> None:
    """A peer file added after the node started: the CLI accepts the push, the node retries
    ('not loaded ... reload') and delivers once SIGHUP reloaded the peers."""
    import signal

    files = write_series(tmp_path / "in", 3)
    with CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE}) as node:
        node.write_peer("late", _peer("STORESCP", storescp_peer.port))
        job_id = int(node.cli("push", "late", str(tmp_path / "in")).stdout)
        wait_until(
            lambda: "not loaded" in str(_job(node, job_id)["last_error"]),
            30,
            interval=0.1,
            message=lambda: f"a 'not loaded' error: {_job(node, job_id)}",
        )
        node.signal(signal.SIGHUP)
        job = _wait_job(node, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert set(_received_by_uid(scp_dir)) == {_uid(p) for p in files}
