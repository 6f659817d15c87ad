"""`ctnode push` handed to the running node over `<data_dir>/run/submit.sock` (ctnode.handoff),
end to end: a real `ctnode run`, real DCMTK storescp peers, the command as its own process.

Which path a command took is read from the node's log (`handoff.submitted`, `handoff.rejected`,
`handoff.fallback`, `handoff.refused`), never from timing. The ordinary path, for comparison, is
the Typer app run in a fresh process (`ctnode.cli.main`, which never hands off).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctnode.queue.jobs import Job
from tests.helpers.dicomgen import write_series
from tests.helpers.fake_commitment import FakeCommitmentSCP
from tests.helpers.fakes import FakeStoreSCP
from tests.helpers.jobs import job_json, repo_of, wait_job
from tests.helpers.peerfiles import FAST_QUEUE, commit_peer
from tests.helpers.peerfiles import peer as _peer
from tests.helpers.procs import CTNODE, CtnodeProcess, free_port, storescp
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow

#: The ordinary path in a fresh process: the Typer app, which never hands off.
ORDINARY = [
    sys.executable,
    "-c",
    "import sys; from ctnode.cli import main; sys.exit(main(sys.argv[1:]))",
]
NOBODY = 65534


def _run(
    node: CtnodeProcess,
    *args: str,
    ordinary: bool = False,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``ctnode --config NODE ARGS`` (through the node if it takes it, or the ordinary path)."""
    return subprocess.run(
        [*(ORDINARY if ordinary else CTNODE), "--config", str(node.config_path), *args],
        env={**node.env, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _events(node: CtnodeProcess, event: str) -> list[dict[str, Any]]:
    assert node.log is not None
    return node.log.named(event)


def _submitted(node: CtnodeProcess, job_id: int) -> dict[str, Any]:
    """The node's ``handoff.submitted`` line for *job_id* (waits for it)."""
    assert node.log is not None
    return node.log.wait_for("handoff.submitted", timeout=10, job=job_id)


def _row(node: CtnodeProcess, job_id: int) -> Job:
    repo = repo_of(node)
    try:
        return repo.get(job_id)
    finally:
        repo.engine.dispose()


def _jobs(node: CtnodeProcess) -> int:
    with sqlite3.connect(node.data_dir / "ctnode.db") as db:
        (count,) = db.execute("SELECT count(*) FROM jobs").fetchone()
    return int(count)


def _same_shape(fast: dict[str, Any], ordinary: dict[str, Any]) -> None:
    """Two job JSONs alike but for what differs between two jobs (id, times)."""
    varying = {"id", "created_at", "started_at", "finished_at", "not_before", "updated_at"}
    assert fast.keys() == ordinary.keys()
    assert {k: v for k, v in fast.items() if k not in varying} == {
        k: v for k, v in ordinary.items() if k not in varying
    }


def _ids_out(text: str) -> str:
    return re.sub(r"job \d+", "job N", text)


@pytest.fixture
def peer_dir(tmp_path: Path) -> Path:
    return tmp_path / "peer"


@pytest.fixture
def down_port() -> int:
    """The port of peer ``down``: nobody listens there (until a test starts a peer)."""
    return free_port()


@pytest.fixture
def node(tmp_path: Path, peer_dir: Path, down_port: int) -> Iterator[CtnodeProcess]:
    """A node with a DCMTK storescp peer ``scp``, the same peer as ``storeonly`` (no storage
    commitment) and ``findonly`` (no C-STORE), and a peer ``down`` nobody listens for."""
    with storescp(peer_dir) as scp:
        node = CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={
                "scp": _peer("STORESCP", scp.port),
                "findonly": {**_peer("FIND", scp.port), "services": ["find"]},
                "storeonly": {**_peer("STOREONLY", scp.port), "services": ["store"]},
                "down": _peer("DOWN", down_port),
            },
        )
        with node:
            yield node


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three CT files and a text file in ``in/``."""
    written = write_series(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    return written


def test_push_through_the_node_prints_what_the_ordinary_path_prints(
    node: CtnodeProcess, files: list[Path], tmp_path: Path
) -> None:
    """`push --wait --json` handed to the node: the same exit code, JSON and stderr as the
    ordinary path; the node wrote the job (`handoff.submitted`), and only for that command."""
    args = ("push", "scp", str(tmp_path / "in"), "--wait", "--json")
    fast = _run(node, *args)
    ordinary = _run(node, *args, ordinary=True)
    assert fast.returncode == ordinary.returncode == 0, fast.stderr + ordinary.stderr
    fast_job, ordinary_job = json.loads(fast.stdout), json.loads(ordinary.stdout)
    _same_shape(fast_job, ordinary_job)
    assert fast_job["state"] == "succeeded"
    assert fast_job["skipped"] == [
        {"path": str(tmp_path / "in" / "notes.txt"), "reason": "not a DICOM Part 10 file"}
    ]
    first, *_, last = fast.stderr.splitlines()
    assert (
        first
        == ordinary.stderr.splitlines()[0]
        == (f"ctnode: skipped {tmp_path / 'in' / 'notes.txt'}: not a DICOM Part 10 file")
    )
    assert _ids_out(last) == _ids_out(ordinary.stderr.splitlines()[-1])
    assert last == f"job {fast_job['id']} (push to scp) succeeded: 3/3 delivered, 0 failed"
    submitted = _submitted(node, fast_job["id"])
    assert submitted["created"] is True and submitted["items"] == 3 and submitted["wait"] is True
    assert [e["job"] for e in _events(node, "handoff.submitted")] == [fast_job["id"]]
    # The job rows alike: payload, items, node.
    fast_row, ordinary_row = _row(node, fast_job["id"]), _row(node, ordinary_job["id"])
    assert fast_row.payload == ordinary_row.payload
    assert fast_row.node_name == ordinary_row.node_name
    assert fast_row.retry_policy == ordinary_row.retry_policy

    # Without --wait: the job id alone, as the ordinary path prints it.
    plain = _run(node, "push", "scp", str(files[0]))
    assert plain.returncode == 0 and plain.stderr == ""
    job_id = int(plain.stdout)
    _submitted(node, job_id)
    assert wait_job(node, job_id, {"succeeded", "failed"})["state"] == "succeeded"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("push", "nosuchpeer", "{in}"), id="unknown-peer"),
        pytest.param(("push", "findonly", "{in}"), id="peer-without-store"),
        pytest.param(("push", "scp", "{in}/nosuchfile"), id="no-such-path"),
        pytest.param(("push", "scp", "{in}/notes.txt", "--wait"), id="nothing-to-push"),
        pytest.param(("push", "scp", "{in}", "--study", "1.2.3"), id="paths-and-study"),
        pytest.param(("push", "scp", "--study", "1.2.3", "--json"), id="no-such-study"),
        pytest.param(("push", "storeonly", "{in}", "--commit"), id="peer-without-commit"),
    ],
)
def test_refusals_are_the_ordinary_paths(
    node: CtnodeProcess, files: list[Path], tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A refused push handed to the node prints the ordinary path's lines and exit code, and
    writes nothing; the node answered it itself (`handoff.rejected`)."""
    argv = [a.format(**{"in": tmp_path / "in"}) for a in args]
    fast = _run(node, *argv)
    ordinary = _run(node, *argv, ordinary=True)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        ordinary.returncode,
        ordinary.stdout,
        ordinary.stderr,
    )
    assert fast.returncode != 0 and fast.stderr.splitlines()[-1].startswith("ctnode: error: ")
    assert _jobs(node) == 0
    assert len(_events(node, "handoff.rejected")) == 1
    assert _events(node, "handoff.submitted") == []


def test_relative_paths_from_another_directory(node: CtnodeProcess, files: list[Path]) -> None:
    """Paths relative to the command's directory (not the node's): the same files, named in
    lines and JSON as given; the job's source paths as given."""
    cwd = files[0].parent.parent
    args = ("push", "scp", "in", "missing.dcm", "--wait", "--json")
    fast = _run(node, *args, cwd=cwd)
    ordinary = _run(node, *args, cwd=cwd, ordinary=True)
    assert fast.returncode == ordinary.returncode == 0, fast.stderr
    fast_job, ordinary_job = json.loads(fast.stdout), json.loads(ordinary.stdout)
    _same_shape(fast_job, ordinary_job)
    assert fast_job["skipped"] == [
        {"path": "in/notes.txt", "reason": "not a DICOM Part 10 file"},
        {"path": "missing.dcm", "reason": "does not exist"},
    ]
    assert fast.stderr.splitlines()[:2] == ordinary.stderr.splitlines()[:2]
    _submitted(node, fast_job["id"])
    assert _row(node, fast_job["id"]).payload["paths"] == ["in", "missing.dcm"]


def test_the_commands_own_settings_are_used(node: CtnodeProcess, files: list[Path]) -> None:
    """The node submits with the settings the command would load (its CTNODE_* variables), not
    its own; settings naming the database differently make the command take the ordinary path."""
    retry = {"CTNODE_QUEUE__RETRY__MAX_ATTEMPTS": "2"}
    result = _run(node, "push", "scp", str(files[0]), "--json", env=retry)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    _submitted(node, job["id"])
    assert job["max_attempts"] == 2

    other = {"ctnode_database__busy_timeout": "3"}  # any case, as pydantic-settings reads it
    result = _run(node, "push", "scp", str(files[0]), env=other)
    assert result.returncode == 0, result.stderr
    assert node.log is not None
    node.log.wait_for("handoff.fallback", reason="the settings name another database or data dir")
    assert [e["job"] for e in _events(node, "handoff.submitted")] == [job["id"]]
    assert int(result.stdout) == job["id"] + 1


def test_wait_exit_code_when_the_job_fails(tmp_path: Path) -> None:
    """A peer that refuses every instance (0xA900): `push --wait` exits 1 with the failed job,
    through the node as through the ordinary path."""
    write_series(tmp_path / "in", 2)
    with (
        FakeStoreSCP(lambda n, uid: 0xA900) as fake,
        CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"fake": _peer("FAKESCP", fake.port)},
        ) as node,
    ):
        args = ("push", "fake", str(tmp_path / "in"), "--wait")
        fast, ordinary = _run(node, *args), _run(node, *args, ordinary=True)
        assert fast.returncode == ordinary.returncode == 1
        assert _ids_out(fast.stdout) == _ids_out(ordinary.stdout)
        assert re.fullmatch(
            r"job (\d+) \(push to fake\) failed: 0/2 delivered, 2 failed — .*0xA900.*\n",
            fast.stdout,
        ), fast.stdout
        _submitted(node, int(fast.stdout.split()[1]))


def test_push_commit_wait_follows_both_jobs(tmp_path: Path) -> None:
    """`push --commit --wait --json` through the node: the push, then its commit job, followed
    to their ends; exit 0 with both in the JSON."""
    write_series(tmp_path / "in", 2)
    with FakeCommitmentSCP() as fake:
        node = CtnodeProcess(
            tmp_path / "node",
            config={"queue": FAST_QUEUE},
            peers={"fake": commit_peer("FAKECOMMIT", fake.port)},
        )
        fake.target = ("127.0.0.1", node.port, "CTNODE")
        with node:
            result = _run(
                node, "push", "fake", str(tmp_path / "in"), "--commit", "--wait", "--json"
            )
            assert result.returncode == 0, result.stdout + result.stderr
            job = json.loads(result.stdout)
            assert job["state"] == "succeeded" and job["commit"]["state"] == "succeeded"
            _submitted(node, job["id"])


def test_no_node_no_socket_or_a_stale_one(tmp_path: Path, files: list[Path]) -> None:
    """No node running, and a stale submit.sock left by one that died: the command takes the
    ordinary path silently; a node started later runs the job."""
    node = CtnodeProcess(tmp_path / "node", config={"queue": FAST_QUEUE}, peers={})
    node.write_peer("scp", _peer("STORESCP", free_port()))
    result = _run(node, "push", "scp", str(files[0]))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    run = node.data_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(run / "submit.sock"))
    result = _run(node, "push", "scp", str(files[0]), "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout)["state"] == "queued"
    assert _jobs(node) == 2


def test_socket_is_the_owners_alone(node: CtnodeProcess) -> None:
    """submit.sock: a socket, mode 0600, owned by the node's user; gone once the node stops."""
    path = node.data_dir / "run" / "submit.sock"
    mode = path.lstat()
    assert stat.S_ISSOCK(mode.st_mode)
    assert stat.S_IMODE(mode.st_mode) == 0o600
    assert mode.st_uid == os.geteuid()
    assert not any(p.name.startswith(".handoff-") for p in path.parent.iterdir())
    node.stop()
    assert not path.exists()


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line, "the command ended before printing anything"
    return line


def test_kill_9_of_the_command_leaves_the_job(
    tmp_path: Path, node: CtnodeProcess, files: list[Path], down_port: int
) -> None:
    """kill -9 of `push --wait` once it printed its job: the job stays (committed before the
    command heard of it), the node stops following it, and runs it when the peer comes."""
    proc = subprocess.Popen(
        [*CTNODE, "--config", str(node.config_path), "push", "down", str(files[0]), "--wait"],
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        job_id = int(re.match(r"job (\d+) ", line).group(1))  # type: ignore[union-attr]
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert node.log is not None
    node.log.wait_for("handoff.client_gone", timeout=10, job=job_id)
    assert job_json(node, job_id)["state"] in {"queued", "running"}
    with storescp(tmp_path / "late", down_port, ae_title="DOWN"):
        job = wait_job(node, job_id, {"succeeded", "failed"})
        assert job["state"] == "succeeded", (job["last_error"], job["events"])
    # The node still takes submissions.
    again = _run(node, "push", "scp", str(files[1]), "--wait")
    assert again.returncode == 0, again.stderr
    _submitted(node, int(again.stdout.split()[1]))


def test_node_stopping_hands_the_follow_back(tmp_path: Path, files: list[Path]) -> None:
    """The node stops while a `push --wait --json` follows its job through it: the command
    follows the job through the database instead, and ends when a restarted node ran it."""
    port = free_port()
    node = CtnodeProcess(
        tmp_path / "node", config={"queue": FAST_QUEUE}, peers={"late": _peer("STORESCP", port)}
    )
    node.start()
    args = ["push", "late", str(files[0]), "--wait", "--json"]
    proc = subprocess.Popen(
        [*CTNODE, "--config", str(node.config_path), *args],
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = int(re.match(r"job (\d+) ", _first_line(proc)).group(1))  # type: ignore[union-attr]
        log = node.log
        node.stop()
        assert log is not None
        log.wait_for("handoff.detached", timeout=5, job=job_id)
        time.sleep(1)
        assert proc.poll() is None  # still following, through the database
        with storescp(tmp_path / "late", port):
            node.start()
            out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.stop()
    assert proc.returncode == 0, err
    assert json.loads(out)["id"] == job_id and json.loads(out)["state"] == "succeeded"


# ---------------------------------------------------------------- another user


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ctnode-handoff-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody(command: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_another_user_is_refused(shared_dir: Path) -> None:
    """A node running as nobody and root connecting anyway (root ignores the socket's mode):
    the kernel's credentials refuse it (`handoff.refused`); the command takes the ordinary
    path and its job is written there."""
    write_series(shared_dir / "in", 1)
    node = CtnodeProcess(
        shared_dir / "node",
        config={"queue": FAST_QUEUE},
        peers={"scp": _peer("STORESCP", free_port())},
        command=_as_nobody(CTNODE),
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    for path in [shared_dir, *shared_dir.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    with node:
        result = _run(node, "push", "scp", str(shared_dir / "in"))
        assert result.returncode == 0, result.stderr
        assert node.log is not None
        refused = node.log.wait_for("handoff.refused", timeout=10)
        assert refused["uid"] == 0 and refused["reason"] == "another user"
        assert _events(node, "handoff.submitted") == []
        assert job_json(node, int(result.stdout))["state"] in {"queued", "running", "failed"}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_another_user_on_an_abstract_address_is_refused(shared_dir: Path) -> None:
    """A data dir too long for a socket path: the node listens on an abstract address (no
    file mode), so another user reaches it; SO_PEERCRED refuses them, nothing is written by
    the node."""
    deep = shared_dir / ("d" * 60) / ("e" * 60)
    write_series(shared_dir / "in", 1)
    node = CtnodeProcess(
        deep, config={"queue": FAST_QUEUE}, peers={"scp": _peer("STORESCP", free_port())}
    )
    for path in [shared_dir, *shared_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    with node:
        assert not (node.data_dir / "run" / "submit.sock").exists()
        result = _run_as_nobody(node, "push", "scp", str(shared_dir / "in"))
        assert node.log is not None
        refused = node.log.wait_for("handoff.refused", timeout=10)
        assert refused["uid"] == NOBODY and refused["reason"] == "another user"
        assert _events(node, "handoff.submitted") == []
        assert result.returncode != 0  # the ordinary path, as nobody: the database is root's
        assert _jobs(node) == 0


def _run_as_nobody(node: CtnodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_nobody([*CTNODE, "--config", str(node.config_path), *args]),
        env={**node.env, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctrl_c_stops_following_not_the_job(node: CtnodeProcess, files: list[Path]) -> None:
    """SIGINT of `push --wait` (Ctrl-C): exit 130 as the ordinary path; the job goes on."""
    proc = subprocess.Popen(
        [*CTNODE, "--config", str(node.config_path), "push", "down", str(files[0]), "--wait"],
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = int(re.match(r"job (\d+) ", _first_line(proc)).group(1))  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert node.log is not None
    node.log.wait_for("handoff.client_gone", timeout=10, job=job_id)
    assert job_json(node, job_id)["state"] in {"queued", "running"}
    wait_until(lambda: job_json(node, job_id)["attempts"] >= 1, 20, interval=0.2)


def test_the_command_imports_nothing_heavy(node: CtnodeProcess, files: list[Path]) -> None:
    """A push handed to the node loads none of pydantic, SQLAlchemy, Typer, rich, structlog,
    pydicom or the daemon in the command (without a terminal)."""
    script = (
        "import json, sys\n"
        "from ctnode.handoff.client import push\n"
        "code = push(sys.argv[1:])\n"
        "heavy = ['pydantic', 'sqlalchemy', 'typer', 'rich', 'structlog', 'pydicom',"
        " 'ctnode.config', 'ctnode.daemon', 'ctnode.cli.app']\n"
        "print(json.dumps({'code': code, 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    args = ["--config", str(node.config_path), "push", "scp", str(files[0]), "--wait"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "loaded": []}, (outcome, done.stderr)
    job_id = int(done.stdout.split()[1])
    _submitted(node, job_id)
