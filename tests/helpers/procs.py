"""Real processes for tests: ``ctnode run``, DCMTK tools and servers, all on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tests.helpers.waiting import wait_until

#: Debian's DCMTK keeps Nagle's algorithm on unless this is set (see TEST-PEERS.md).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CTNODE = [sys.executable, "-m", "ctnode"]


#: Ports tests listen on: below Linux's ephemeral range (32768-60999), from which the kernel
#: picks the local port of every outgoing connection (a port it handed out by ``bind(0)`` can
#: meanwhile become some test's client port), and split between the pytest-xdist workers.
_PORTS = range(20000, 32000)
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, never handed out before by this process, in this
    xdist worker's share of ``_PORTS``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    share = len(_PORTS) // count
    first = _PORTS.start + (index % count) * share
    with _ports_lock:
        for _ in range(share):
            port = random.randrange(first, first + share)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port left in {first}-{first + share - 1}")


def wait_port(port: int, timeout: float = 15, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on *port*."""

    def accepts() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    wait_until(accepts, timeout, ignore=(OSError,), message=f"a listener on {host}:{port}")


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write *data* as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with path.open("w") as fh:
        yaml.dump(json.loads(json.dumps(data, default=str)), fh)
    return path


def run_tool(
    args: list[str], timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool with TCP_NODELAY=1; returns the completed process (text output)."""
    return subprocess.run(
        args, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout, check=check
    )


class LogReader:
    """Collects a process's JSON log lines in a background thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, ""):
            line = raw.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._cond.notify_all()

    def wait_for(self, event: str, timeout: float = 20, **fields: Any) -> dict[str, Any]:
        """The first event named *event* with the given field values (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.events:
                    if item.get("event") == event and all(
                        item.get(k) == v for k, v in fields.items()
                    ):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    raise TimeoutError(f"no {event} {fields} within {timeout} s; log tail:\n{tail}")
                self._cond.wait(left)

    def named(self, event: str) -> list[dict[str, Any]]:
        """Every event named *event* so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == event]


class CtnodeProcess:
    """``ctnode run`` in a subprocess with its own config, data dir and peers."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: Mapping[str, Any] | None = None,
        peers: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        #: How to start ctnode (``python -m ctnode`` unless a test needs a launcher).
        self.command = command or CTNODE
        self.port = port or free_port()
        self.data_dir = workdir / "data"
        self.peers_dir = workdir / "peers"
        self.config_path = workdir / "ctnode.yaml"
        base: dict[str, Any] = {
            "node": {
                "ae_title": "CTNODE",
                "bind": "127.0.0.1",
                "port": self.port,
                "accept_unknown_callers": False,
            },
            "storage": {"data_dir": str(self.data_dir), "min_free_bytes": "1MiB"},
            "peers_dir": str(self.peers_dir),
            "logging": {"level": "INFO", "format": "json"},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        self.config = base
        self.env = {**os.environ, **(env or {})}
        self.env.pop("CTNODE_CONFIG", None)
        self.proc: subprocess.Popen[str] | None = None
        self.log: LogReader | None = None
        self.peers_dir.mkdir(parents=True, exist_ok=True)
        for name, peer in (peers or {}).items():
            self.write_peer(name, peer)
        write_yaml(self.config_path, self.config)

    def write_peer(self, name: str, peer: Mapping[str, Any]) -> Path:
        """Write (or replace) ``peers/<name>.yaml``."""
        return write_yaml(self.peers_dir / f"{name}.yaml", peer)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``ctnode --config ... ARGS`` against this node's configuration."""
        return subprocess.run(
            [*CTNODE, "--config", str(self.config_path), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, wait: bool = True) -> CtnodeProcess:
        """Start ``ctnode run``; wait for ``daemon.ready`` unless *wait* is false."""
        self.proc = subprocess.Popen(
            [*self.command, "--config", str(self.config_path), "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir,
        )
        self.log = LogReader(self.proc.stderr)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        """Wait for the ``daemon.ready`` event (fails early if the process exits)."""
        assert self.log is not None and self.proc is not None
        log, proc = self.log, self.proc

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(
                    f"ctnode run exited with {proc.returncode}:\n" + "\n".join(log.lines)
                )
            try:
                return log.wait_for("daemon.ready", timeout=0.2)
            except TimeoutError:
                return None

        return wait_until(
            ready,
            timeout,
            interval=0,
            message=lambda: "ctnode run ready:\n" + "\n".join(log.lines[-40:]),
        )

    @property
    def pid(self) -> int:
        """Process id."""
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        """Send *sig* to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        """Wait for exit; returns the exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no clean-up at all) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> CtnodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


class ServerProcess:
    """A long-running peer process (DCMTK storescp, dcmqrscp, Orthanc) stopped by PID."""

    def __init__(
        self,
        args: list[str],
        port: int,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.args, self.port, self.cwd = args, port, cwd
        self.env = dict(env or DCMTK_ENV)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> ServerProcess:
        """Start and wait until the port accepts connections."""
        out = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the process group we started (storescp --fork children too), then reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def storescp(
    directory: Path,
    port: int | None = None,
    *,
    ae_title: str = "STORESCP",
    extra: list[str] | None = None,
) -> ServerProcess:
    """DCMTK storescp writing into *directory* (accepts compressed syntaxes with +xa)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    return ServerProcess(
        ["storescp", "-aet", ae_title, "+xa", "-od", str(directory), *(extra or []), str(port)],
        port,
    )


@contextlib.contextmanager
def started(server: ServerProcess) -> Iterator[ServerProcess]:
    """Start *server* for the duration of a with-block."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
