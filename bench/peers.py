"""What a user would run instead of ctnode, as benchmark servers: Orthanc and a pynetdicom SCP.

Both have the interface of ``bench.common.StorescpServer`` / ``CtnodeServer``: construct with a
fresh run directory, ``start()``, ``port``, ``ae_title``, CPU and peak RSS accounting (the
``Server`` base class), ``stop()`` (also on leaving a ``with`` block) and ``check_stored(n)``,
which raises unless the server holds exactly *n* instances.

* ``OrthancServer``: the Debian package's ``/usr/sbin/Orthanc`` with its built-in SQLite index
  and filesystem storage area in the run directory, ``"SyncStorageArea": true`` (an ``fdatasync``
  of every file written to the storage area before the C-STORE response, as strace shows),
  otherwise its defaults (4 DICOM threads, 128 MB storage cache, MD5 of attachments). Run as
  ``nobody`` when started as root, like the tests do (TEST-PEERS.md).
* ``PynetdicomServer``: ``bench/pynetdicom_scp.py`` in a subprocess (its docstring says exactly
  what it makes durable).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import DCMTK_ENV, ROOT, Run, Series, Server, free_port, run_dir, send_parallel
from bench.common import wait_port as _wait_port

ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_AE = "ORTHANC"
PYNETDICOM_AE = "PYNETDICOM"
PYNETDICOM_SCRIPT = ROOT / "bench" / "pynetdicom_scp.py"

#: Table labels, with what each one makes durable before answering Success.
ORTHANC_LABEL = "Orthanc (SyncStorageArea)"
PYNETDICOM_LABEL = "pynetdicom SCP (fsync)"

#: Notes for the tables: what each competitor guarantees when it answers Success.
DURABILITY_NOTES = (
    "Orthanc 1.10 with SyncStorageArea: fdatasync of each stored file (written in place, its "
    "new directories not synced) and an index commit to SQLite in WAL mode with synchronous=NORMAL "
    "(survives a crash of Orthanc, not necessarily an OS crash or power loss before the next "
    "WAL checkpoint), both before the C-STORE response",
    "pynetdicom SCP (bench/pynetdicom_scp.py): decode, save_as into a temporary file, fsync, "
    "rename to <SOP Instance UID>.dcm, fsync of the directory, then Success; no index",
)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class OrthancServer(Server):
    """Orthanc with ``SyncStorageArea`` and its index and storage in *workdir*/db."""

    name = "Orthanc"
    ae_title = ORTHANC_AE

    def __init__(self, workdir: Path, *, extra: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.http_port = free_port()
        self.db_dir = workdir / "db"
        self.log_dir = workdir / "logs"
        self.config_path = workdir / "orthanc.json"
        self.extra = extra or {}

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The configuration file's content: Orthanc's defaults except for what is listed."""
        return {
            "Name": "ctnode-bench",
            "StorageDirectory": str(self.db_dir),
            "IndexDirectory": str(self.db_dir),
            "Plugins": [],
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": ORTHANC_AE,
            "DicomPort": self.port,
            # Any calling and called AE title: the sender is not configured as a modality.
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            # Defaults of Orthanc >= 1.7.4, stated so that the table's label stays true.
            "SyncStorageArea": True,
            "StorageCompression": False,
            "SaveJobs": False,
            **self.extra,
        }

    def start(self, timeout: float = 30) -> OrthancServer:
        """Start, wait until the REST API answers ``/system`` and the DICOM port accepts."""
        if not os.access(ORTHANC, os.X_OK):
            raise RuntimeError(f"{ORTHANC} not found: apt-get install orthanc, or use --no-peers")
        for path in (self.db_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        user: dict[str, Any] = {}
        if os.geteuid() == 0:
            # Unprivileged, as in the tests: nobody owns what Orthanc writes and can reach it
            # (run directories are created 0700).
            for path in (self.workdir, self.db_dir, self.log_dir, self.config_path):
                shutil.chown(path, "nobody", "nogroup")
            os.chmod(self.workdir, 0o755)
            user = {"user": "nobody", "group": "nogroup", "extra_groups": []}
        self.proc = subprocess.Popen(
            [ORTHANC, f"--logdir={self.log_dir}", str(self.config_path)],
            env={**DCMTK_ENV, "HOME": str(self.workdir)},
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **user,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                if "DicomAet" in self.request("/system"):
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Orthanc not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)
        _wait_port(self.port, max(1.0, deadline - time.monotonic()))
        return self

    def request(self, path: str) -> Any:
        """GET *path* of the REST API; its JSON."""
        with urllib.request.urlopen(self.url + path, timeout=10) as rsp:
            return json.loads(rsp.read())

    def log_tail(self, lines: int = 20) -> str:
        """The end of Orthanc's newest log file."""
        logs = sorted(self.log_dir.glob("*.log*"), key=lambda p: p.stat().st_mtime)
        return _tail(logs[-1], lines) if logs else ""

    def stored(self) -> int:
        """Instances in Orthanc's index (``/statistics``)."""
        return int(self.request("/statistics")["CountInstances"])

    def check_stored(self, expected: int) -> None:
        """Raise unless Orthanc holds *expected* instances."""
        count = self.stored()
        if count != expected:
            raise RuntimeError(
                f"Orthanc holds {count} instances of {expected} sent:\n{self.log_tail()}"
            )


class PynetdicomServer(Server):
    """``bench/pynetdicom_scp.py``: a pynetdicom AE storing durably into *workdir*/out."""

    name = "pynetdicom SCP"
    ae_title = PYNETDICOM_AE

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.out_dir = workdir / "out"
        self.log_path = workdir / "pynetdicom_scp.log"

    def start(self, timeout: float = 30) -> PynetdicomServer:
        """Start and wait until the port accepts connections."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(PYNETDICOM_SCRIPT),
                    "--port",
                    str(self.port),
                    "--out",
                    str(self.out_dir),
                    "--ae-title",
                    PYNETDICOM_AE,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while b"ready" not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pynetdicom SCP exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"pynetdicom SCP not ready after {timeout} s")
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 20) -> str:
        """The end of the script's output."""
        return _tail(self.log_path, lines)

    def stored(self) -> int:
        """``.dcm`` files written (temporary files are hidden ``.tmp`` ones)."""
        return sum(1 for p in self.out_dir.glob("*.dcm") if p.is_file())

    def check_stored(self, expected: int) -> None:
        """Raise unless *expected* files were written."""
        count = self.stored()
        if count != expected:
            raise RuntimeError(
                f"pynetdicom SCP wrote {count} files of {expected} sent:\n{self.log_tail()}"
            )


PeerServer = OrthancServer | PynetdicomServer


def run_peer(kind: type[PeerServer], series: Series, senders: int = 1) -> Run:
    """*senders* storescu at once into a fresh *kind* server, all of *series* in total; fails
    loudly unless the server stored every instance."""
    with run_dir(kind.__name__.lower()) as work, kind(work) as server:
        server.start()
        run = send_parallel(server, server.ae_title, series.split(senders))
        server.check_stored(len(series.files))
        return run
