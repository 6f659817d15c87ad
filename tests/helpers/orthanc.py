"""Orthanc as a real PACS peer (Debian package), run unprivileged from a temp dir.

It is a Storage Commitment SCP (reports come on a new association to the host/port it has for
the caller in ``DicomModalities``), a Q/R SCP (C-FIND/C-MOVE) and a storage SCP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers.procs import DCMTK_ENV, free_port, wait_port
from tests.helpers.waiting import wait_until

ORTHANC = "/usr/sbin/Orthanc"


class Orthanc:
    """An Orthanc process with its own storage; ``modalities`` become DicomModalities.

    *workdir* is accepted for symmetry with other peers but not used (see ``__init__``).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        ae_title: str = "ORTHANC",
        modalities: dict[str, dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        # Orthanc runs as `nobody`, which cannot enter pytest's 0700 temp dirs: use a
        # world-traversable directory of its own (removed on stop).
        self.workdir = Path(tempfile.mkdtemp(prefix="ctnode-orthanc-", dir="/tmp"))
        os.chmod(self.workdir, 0o755)
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.extra = extra or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "ctnode-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "Plugins": [],
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                name: {
                    "AllowEcho": True,
                    "AllowFind": True,
                    "AllowMove": True,
                    "AllowStore": True,
                    "AllowStorageCommitment": True,
                    **spec,
                }
                for name, spec in self.modalities.items()
            },
            "SaveJobs": False,
            "StableAge": 5,
            **self.extra,
        }

    def start(self, timeout: float = 30) -> Orthanc:
        """Start as ``nobody`` and wait until DICOM and HTTP answer."""
        (self.workdir / "db").mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        for path in (self.workdir, self.workdir / "db", self.workdir / "logs", config):
            shutil.chown(path, "nobody", "nogroup")
        os.chmod(self.workdir, 0o755)
        self.proc = subprocess.Popen(
            [
                "runuser",
                "-u",
                "nobody",
                "--",
                ORTHANC,
                f"--logdir={self.workdir / 'logs'}",
                str(config),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_port(self.http_port, timeout)
            wait_port(self.dicom_port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM (Orthanc stops cleanly), then reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST helpers --------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Any:
        """Call the REST API; JSON in and out (bytes bodies are sent as is)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as rsp:
            raw = rsp.read()
        return json.loads(raw) if raw else None

    def upload(self, path: Path) -> str:
        """POST /instances; returns the Orthanc instance id."""
        return str(self.request("POST", "/instances", path.read_bytes())["ID"])

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored Part 10 file of an instance."""
        req = urllib.request.Request(f"{self.url}/instances/{orthanc_id}/file")
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return bytes(rsp.read())

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of everything Orthanc holds."""
        out = set()
        for orthanc_id in self.request("GET", "/instances"):
            tags = self.request("GET", f"/instances/{orthanc_id}/simplified-tags")
            out.add(tags["SOPInstanceUID"])
        return out

    def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        """Poll *predicate(self)* until true."""
        wait_until(lambda: predicate(self), timeout, interval=0.2, message="an Orthanc condition")
