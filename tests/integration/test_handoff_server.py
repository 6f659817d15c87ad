"""The node's side of the hand-off in-process (``HandoffServer`` on a real UNIX socket and a
real SQLite database), driven by a scripted command: what it refuses, and that nothing is
written before the command's ``submit``."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ctnode.config import Settings, load_settings
from ctnode.db.models import Job as JobRow
from ctnode.db.opening import open_database
from ctnode.handoff.client import parse, request
from ctnode.handoff.server import HandoffServer
from ctnode.handoff.wire import Message, Reader, send
from ctnode.queue.repository import JobRepository
from tests.helpers.dicomgen import write_series
from tests.helpers.procs import write_yaml
from tests.helpers.waiting import wait_until


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_yaml(tmp_path / "peers" / "scp.yaml", {"ae_title": "SCP", "host": "127.0.0.1", "port": 9})
    return write_yaml(
        tmp_path / "ctnode.yaml",
        {"storage": {"data_dir": str(tmp_path / "data")}, "peers_dir": str(tmp_path / "peers")},
    )


@pytest.fixture
def settings(config: Path) -> Settings:
    return load_settings(config, env={})


@pytest.fixture
def repo(settings: Settings) -> Iterator[JobRepository]:
    repo = JobRepository(open_database(settings, migrate_sqlite=True))
    try:
        yield repo
    finally:
        repo.engine.dispose()


@pytest.fixture
def server(settings: Settings, repo: JobRepository) -> Iterator[HandoffServer]:
    server = HandoffServer(settings, repo, threads=1)
    assert server.open()
    try:
        yield server
    finally:
        server.stop()
        assert server.wait(10)


class Command:
    """A scripted command: connects, and the server accepts at once (as its event loop would)."""

    def __init__(self, server: HandoffServer) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        assert isinstance(server.address, str)
        self.sock.connect(server.address)
        server.accept()
        self.reader = Reader(self.sock)

    def ask(self, message: Message) -> Message:
        send(self.sock, message)
        return self.reader.read()

    def close(self) -> None:
        self.sock.close()


def _push(config: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Message:
    parsed = parse(["--config", str(config), "push", *args])
    assert parsed is not None
    return request(parsed, env or {}, cwd)


def _idle(server: HandoffServer) -> None:
    """Wait until the server's threads are free again (the last command was served)."""
    wait_until(lambda: server._busy == 0, 10, message="the hand-off thread free")


def _jobs(repo: JobRepository) -> int:
    with repo.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(JobRow)) or 0)


def test_a_submission_is_written_only_after_submit(
    server: HandoffServer, repo: JobRepository, config: Path, tmp_path: Path
) -> None:
    """``ready`` comes before anything is written; a command that closes then leaves nothing;
    one that sends ``submit`` gets its job, committed before it hears of it."""
    write_series(tmp_path / "in", 2)
    gave_up = Command(server)
    assert gave_up.ask(_push(config, tmp_path, "scp", "in"))["t"] == "ready"
    gave_up.close()
    _idle(server)
    went_on = Command(server)
    assert went_on.ask(_push(config, tmp_path, "scp", "in"))["t"] == "ready"
    job = went_on.ask({"t": "submit"})
    assert job["t"] == "job"
    assert _jobs(repo) == 1 and repo.get(job["id"]).items.total == 2
    end = went_on.reader.read()
    assert end == {"t": "end", "stdout": [str(job["id"])], "code": 0}
    went_on.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": "0.0.0"}, "not a request of this ctnode"),
        ({"protocol": 0}, "not a request of this ctnode"),
        ({"package": "/elsewhere"}, "not a request of this ctnode"),
        ({"paths": [1]}, "not a request of this ctnode"),
        ({"env": {"CTNODE_STORAGE__DATA_DIR": "/elsewhere"}}, "another database or data dir"),
        ({"env": {"CTNODE_DATABASE__BUSY_TIMEOUT": "3"}}, "another database or data dir"),
        ({"env": {"CTNODE_QUEUE__WORKERS": "many"}}, "the settings do not load"),
        ({"config": "/no/such/file.yaml"}, "the settings do not load"),
    ],
)
def test_what_the_node_does_not_take(
    server: HandoffServer,
    repo: JobRepository,
    config: Path,
    tmp_path: Path,
    change: dict[str, Any],
    reason: str,
) -> None:
    """Another ctnode, a malformed request, settings naming another database or data dir,
    settings that do not load: ``fallback`` (the command runs the ordinary path), nothing
    written."""
    answer = Command(server).ask({**_push(config, tmp_path, "scp", "in"), **change})
    assert answer["t"] == "fallback" and reason in answer["reason"]
    assert _jobs(repo) == 0


def test_relative_paths_in_the_settings_from_another_directory(
    tmp_path: Path, repo: JobRepository
) -> None:
    """A peers_dir relative to the working directory means another directory for the node:
    taken only from the node's own working directory."""
    write_yaml(tmp_path / "peers" / "scp.yaml", {"ae_title": "SCP", "host": "127.0.0.1", "port": 9})
    config = write_yaml(
        tmp_path / "relative.yaml",
        {"storage": {"data_dir": str(tmp_path / "data")}, "peers_dir": "peers"},
    )
    settings = load_settings(config, env={}, cwd=tmp_path)
    server = HandoffServer(settings, repo, threads=1)
    assert server.open()
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        answer = Command(server).ask(_push(config, elsewhere, "scp", "x"))
        assert answer == {
            "t": "fallback",
            "reason": "paths in the settings depend on the working directory",
        }
        _idle(server)
        assert Command(server).ask(_push(config, Path(os.getcwd()), "scp", "x"))["t"] == "ready"
    finally:
        server.stop()
        server.wait(10)


def test_busy_threads_send_commands_back(server: HandoffServer, config: Path) -> None:
    """Every hand-off thread busy (one here, held by a command that says nothing yet): the
    next command is told to fall back at once."""
    holding = Command(server)
    answer = Command(server).reader.read()
    assert answer == {"t": "fallback", "reason": "busy"}
    holding.close()


def test_stopping_removes_the_socket(server: HandoffServer) -> None:
    assert isinstance(server.address, str)
    path = Path(server.address)
    assert path.is_socket()
    server.stop()
    assert not path.exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late, pytest.raises(OSError):
        late.connect(str(path))
