"""One ``ctnode run`` per test module, and the invariants checked after every hostile case.

After each case (``HostileNode.check``):

* the daemon is alive with the same PID, and a legitimate C-ECHO and C-STORE (pynetdicom, an
  independent stack, as the configured peer MODALITY) succeed within 2 s;
* no file appeared outside the data dir: the module's work dir (config, peers, the node's
  private ``TMPDIR``) is unchanged, nothing in ``/tmp`` or pytest's base temp carries the
  module's hostile-path marker, and the node holds no open file outside the data dir;
* the data dir holds only ``store/``, ``spool/``, ``quarantine/``, ``run/`` (the wake socket)
  and the SQLite files; the index rows are exactly the instances answered Success and every
  store file is one of them;
* the spool is empty;
* the node's RSS is back within 20 MB of the baseline and its thread count back to the
  baseline within ``network_timeout`` + 5 s (polled, never a fixed sleep).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom.uid import generate_uid

from ctnode.dicom.contexts import CT_IMAGE
from tests.helpers.dicomgen import Ids, make_dataset
from tests.helpers.procs import CtnodeProcess
from tests.helpers.scu import echo_ok, store_dataset

NETWORK_TIMEOUT = 2.0
ACSE_TIMEOUT = 2.0
DIMSE_TIMEOUT = 3.0
MAX_PDU = 65536
MAX_INSTANCE_BYTES = 2 * 1024 * 1024
MAX_ASSOCIATIONS = 16
MAX_PER_ADDRESS = 8
#: Seconds allowed for threads and memory to settle after a case.
SETTLE = NETWORK_TIMEOUT + 5
RSS_SLACK_KB = 20 * 1024
LEGIT_DEADLINE = 2.0

CONFIG: dict[str, Any] = {
    "node": {
        "timeouts": {"acse": ACSE_TIMEOUT, "network": NETWORK_TIMEOUT, "dimse": DIMSE_TIMEOUT},
        "max_pdu_length": MAX_PDU,
        "max_associations": MAX_ASSOCIATIONS,
        "max_associations_per_address": MAX_PER_ADDRESS,
        "shutdown_grace": 5,
    },
    "storage": {"max_instance_bytes": MAX_INSTANCE_BYTES, "min_free_bytes": "1MiB"},
}
#: MODALITY is the legitimate device; FARAWAY is known only at 127.0.0.2; PACS and OTHERPACS may
#: send storage commitment reports (none was ever requested from either).
PEERS: dict[str, dict[str, Any]] = {
    "modality": {
        "ae_title": "MODALITY",
        "host": "127.0.0.1",
        "port": 104,
        "accept": ["echo", "store"],
    },
    "faraway": {
        "ae_title": "FARAWAY",
        "host": "127.0.0.2",
        "port": 104,
        "accept": ["echo", "store"],
    },
    "pacs": {
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 104,
        "accept": ["echo", "commitment_report"],
    },
    "otherpacs": {
        "ae_title": "OTHERPACS",
        "host": "127.0.0.1",
        "port": 105,
        "accept": ["commitment_report"],
    },
}
DB_FILES = {"ctnode.db", "ctnode.db-wal", "ctnode.db-shm", "ctnode.db-journal"}

T = TypeVar("T")


def poll(probe: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Call *probe* until *done* accepts its value or *timeout* passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of *pid* from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Baseline:
    """What the node looked like, idle, after warming up."""

    pid: int
    rss_kb: int
    threads: int


class HostileNode:
    """``ctnode run`` under attack, with the bookkeeping the invariants need."""

    def __init__(self, workdir: Path, *, open_to_unknown_callers: bool = False) -> None:
        self.workdir = workdir
        self.private_tmp = workdir / "node-tmp"
        self.private_tmp.mkdir(parents=True)
        #: Put in every hostile path so an escape can be found anywhere.
        self.marker = f"ctnode-adv-{secrets.token_hex(4)}"
        config = CONFIG
        if open_to_unknown_callers:  # like the embedded default
            config = {**CONFIG, "node": {**CONFIG["node"], "accept_unknown_callers": True}}
        self.proc = CtnodeProcess(
            workdir / "node",
            config=config,
            peers=PEERS,
            env={"TMPDIR": str(self.private_tmp)},
        )
        self.data_dir = self.proc.data_dir
        #: SOP Instance UIDs the node answered Success for.
        self.stored: set[str] = set()
        self.baseline: Baseline | None = None
        self._outside: set[str] = set()
        self.ids = Ids(generate_uid(), generate_uid())

    @property
    def port(self) -> int:
        """The node's DICOM port."""
        return self.proc.port

    def start(self) -> None:
        """Start the node, warm it up, record the baseline and the outside-world snapshot."""
        self.proc.start()
        for _ in range(3):
            self.legit_echo_and_store()
        pid = self.proc.pid
        samples = []
        for _ in range(10):  # idle: association threads of the warm-up have ended
            samples.append(proc_status(pid)["Threads"])
            time.sleep(0.05)
        self.baseline = Baseline(pid, proc_status(pid)["VmRSS"], min(samples))
        self._outside = self._snapshot_outside()

    def stop(self) -> int:
        """SIGTERM; the exit code."""
        return self.proc.stop(timeout=30)

    # -- the legitimate device ---------------------------------------------------------

    def legit_echo_and_store(self) -> float:
        """MODALITY's C-ECHO and C-STORE both succeed; returns the seconds they took."""
        ds = make_dataset(CT_IMAGE, self.ids, size=16)
        started = time.monotonic()
        assert echo_ok(self.port, calling="MODALITY"), "legitimate C-ECHO failed"
        assert store_dataset(self.port, ds, calling="MODALITY") == 0, "legitimate C-STORE failed"
        elapsed = time.monotonic() - started
        self.stored.add(str(ds.SOPInstanceUID))
        return elapsed

    def new_uid(self) -> str:
        """A fresh UID for a case's instance."""
        return str(generate_uid())

    # -- observation -------------------------------------------------------------------

    def index(self) -> dict[str, str]:
        """sop_instance_uid -> path, read from the SQLite index (read-only)."""
        db = self.data_dir / "ctnode.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            return dict(conn.execute("SELECT sop_instance_uid, path FROM instances"))

    def spool(self) -> list[str]:
        """Names in the spool directory."""
        return sorted(p.name for p in (self.data_dir / "spool").iterdir())

    def status(self) -> dict[str, int]:
        """VmRSS and Threads of the node."""
        return proc_status(self.proc.pid)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every logged event called *name* so far."""
        assert self.proc.log is not None
        return self.proc.log.named(name)

    def wait_event(self, name: str, timeout: float = 20, **fields: Any) -> dict[str, Any]:
        """The first event *name* with *fields* (waits for it)."""
        assert self.proc.log is not None
        return self.proc.log.wait_for(name, timeout=timeout, **fields)

    def _snapshot_outside(self) -> set[str]:
        return {
            str(p)
            for p in self.workdir.rglob("*")
            if not p.is_relative_to(self.data_dir) and not p.is_relative_to(self.private_tmp)
        }

    def _escaped(self) -> list[str]:
        roots = {Path("/tmp"), self.workdir.parent}
        found: list[str] = []
        for root in roots:
            found.extend(str(p) for p in root.glob(f"*{self.marker}*"))
            found.extend(str(p) for p in root.glob(f"*/*{self.marker}*"))
        return found

    def _open_files_outside(self) -> list[str]:
        out = []
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if not target.startswith("/") or target.startswith("/dev/"):
                continue
            if not Path(target).is_relative_to(self.data_dir):
                out.append(target)
        return out

    # -- the invariants ----------------------------------------------------------------

    def check(self) -> None:
        """Every invariant in the module docstring; an AssertionError names the broken one."""
        base = self.baseline
        assert base is not None, "the node was not started"
        assert self.proc.proc is not None and self.proc.proc.poll() is None, "the daemon died"
        assert self.proc.pid == base.pid
        elapsed = self.legit_echo_and_store()
        assert elapsed <= LEGIT_DEADLINE, f"legitimate echo + store took {elapsed:.2f} s"

        threads = poll(lambda: self.status()["Threads"], lambda n: n <= base.threads, SETTLE)
        assert threads <= base.threads, f"{threads} threads, baseline {base.threads}"
        rss = poll(
            lambda: self.status()["VmRSS"], lambda kb: kb <= base.rss_kb + RSS_SLACK_KB, SETTLE
        )
        assert rss <= base.rss_kb + RSS_SLACK_KB, (
            f"RSS {rss} kB, baseline {base.rss_kb} kB (+{(rss - base.rss_kb) // 1024} MB)"
        )
        spool = poll(self.spool, lambda names: not names, SETTLE)
        assert spool == [], f"spool not empty: {spool}"

        assert not (files := list(self.private_tmp.iterdir())), f"node wrote to TMPDIR: {files}"
        assert self._snapshot_outside() == self._outside, "files changed outside the data dir"
        assert not (escaped := self._escaped()), f"hostile paths escaped: {escaped}"
        assert not (opened := self._open_files_outside()), f"open outside data dir: {opened}"

        top = {p.name for p in self.data_dir.iterdir()}
        assert top <= {"store", "spool", "quarantine", "run"} | DB_FILES, top
        index = self.index()
        assert set(index) == self.stored, (
            f"index rows not answered Success: {set(index) - self.stored}; "
            f"answered Success but not indexed: {self.stored - set(index)}"
        )
        store = self.data_dir / "store"
        on_disk = {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
        assert on_disk == set(index.values()), on_disk ^ set(index.values())
        for quarantined in (self.data_dir / "quarantine").iterdir():
            assert quarantined.name.split(".dcm")[0].rsplit(".", 2)[0] in self.stored
