"""What durability costs on this disk: the floor under a durable receive.

Each step is timed one object after another (as one association does; the steps take turns, so
that other users' load hits them alike) in a fresh directory under ``bench/out`` (the benchmarks'
filesystem), with 0.5 MB objects:

* ``write+fdatasync``: create a file, write 0.5 MB, fdatasync, close;
* ``+link+rename+dir fsync``: the same, then hard-link it into a store directory under a temporary
  name, rename it into place and fsync the directory (what ctnode does per object);
* ``SQLite commit``: one INSERT of an index row and COMMIT, WAL mode, synchronous=FULL;
* ``full chain``: all of it, in ctnode's order;
* ``full chain, N threads``: the same from N threads at once (concurrent associations): how much
  the kernel's journal and the disk overlap independent syncs;
* ``hash then fdatasync``, with and without ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` first: what
  starting the writeback before ~0.4 ms of CPU work (ctnode's walk and hash) saves.

    python -m bench.disk [--count 300] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import exit_cleanly_on_sigterm, load_note, render, run_dir

OBJECT = os.urandom(525_000)
SCHEMA = """
CREATE TABLE instances (
  id INTEGER PRIMARY KEY, sop_instance_uid VARCHAR(64) UNIQUE, study_instance_uid VARCHAR(64),
  series_instance_uid VARCHAR(64), patient_id VARCHAR(64), path VARCHAR(400), sha256 VARCHAR(64),
  size_bytes BIGINT, received_at VARCHAR(40));
CREATE INDEX ix_study ON instances (study_instance_uid);
CREATE INDEX ix_series ON instances (series_instance_uid);
CREATE INDEX ix_patient ON instances (patient_id);
"""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, sync: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(OBJECT)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    if not conn.execute("SELECT name FROM sqlite_master WHERE name='instances'").fetchone():
        conn.executescript(SCHEMA)
    return conn


def _insert(conn: sqlite3.Connection, uid: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO instances (sop_instance_uid, study_instance_uid, series_instance_uid,"
        " patient_id, path, sha256, size_bytes, received_at) VALUES (?,?,?,?,?,?,?,?)",
        (uid, "1.2.3", "1.2.3.4", "PAT", f"1.2.3/1.2.3.4/{uid}.dcm", "0" * 64, 525000, "now"),
    )
    conn.execute("COMMIT")


def _sync_file_range() -> Callable[[int], object]:
    func = ctypes.CDLL(None, use_errno=True).sync_file_range
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return lambda fd: func(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE


class Bench:
    """The steps, on one working directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.spool = work / "spool"
        self.store = work / "store" / "study" / "series"
        self.spool.mkdir()
        self.store.mkdir(parents=True)
        _fsync_dir(self.store)
        self.conn = _db(work / "index.db")
        self.local = threading.local()
        self.start_writeback = _sync_file_range()

    def conn_for_thread(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = _db(self.work / "index.db")
        return conn

    def write_only(self) -> None:
        path = self.spool / uuid.uuid4().hex
        _write_file(path, sync=False)
        path.unlink()

    def write_sync(self) -> None:
        path = self.spool / uuid.uuid4().hex
        _write_file(path)
        path.unlink()

    def place(self, uid: str) -> Path:
        spool = self.spool / uuid.uuid4().hex
        _write_file(spool)
        target = self.store / f"{uid}.dcm"
        tmp = self.store / f".{uid}.tmp"
        os.link(spool, tmp)
        os.replace(tmp, target)
        _fsync_dir(self.store)
        return spool

    def link_sync(self) -> None:
        self.place(uuid.uuid4().hex).unlink()

    def dir_fsync_clean(self) -> None:
        _fsync_dir(self.store)

    def commit(self) -> None:
        _insert(self.conn_for_thread(), uuid.uuid4().hex)

    def hash_then_sync(self, hint: bool) -> None:
        path = self.spool / uuid.uuid4().hex
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, OBJECT)
            if hint:
                self.start_writeback(fd)
            hashlib.sha256(OBJECT).hexdigest()
            os.fdatasync(fd)
        finally:
            os.close(fd)
        path.unlink()

    def full_chain(self) -> None:
        uid = uuid.uuid4().hex
        spool = self.place(uid)
        _insert(self.conn_for_thread(), uid)
        spool.unlink()


def timed(steps: Sequence[Callable[[], None]], count: int) -> list[list[float]]:
    """Per-call milliseconds of *count* rounds in which every step runs once, in turn (so that
    a change in other users' load hits all steps alike)."""
    out: list[list[float]] = [[] for _ in steps]
    for _ in range(count):
        for i, step in enumerate(steps):
            started = time.perf_counter()
            step()
            out[i].append((time.perf_counter() - started) * 1000)
    return out


def threaded(step: Callable[[], None], count: int, threads: int) -> float:
    """Calls per second of *count* calls spread over *threads* threads."""
    per = count // threads

    def worker() -> None:
        for _ in range(per):
            step()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per * threads / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> str:
    """Run the measurements; print and return the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.disk", description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.count = 40
    rows = []
    note = load_note()
    with run_dir("disk") as work:
        bench = Bench(work)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("write 0.5 MB, no sync (page cache)", bench.write_only),
            ("write 0.5 MB + fdatasync", bench.write_sync),
            ("… + link + rename + dir fsync", bench.link_sync),
            ("dir fsync, nothing changed", bench.dir_fsync_clean),
            ("SQLite INSERT + COMMIT (WAL, FULL)", bench.commit),
            ("full chain (ctnode's order)", bench.full_chain),
            ("write, sha256, fdatasync", lambda: bench.hash_then_sync(False)),
            ("write, writeback hint, sha256, fdatasync", lambda: bench.hash_then_sync(True)),
        ]
        timed([step for _, step in steps], 5)  # warm-up
        for (label, _), ms in zip(
            steps, timed([step for _, step in steps], args.count), strict=True
        ):
            med = statistics.median(ms)
            rows.append(
                [label, f"{med:.2f}", f"{min(ms):.2f}", f"{max(ms):.2f}", f"{1000 / med:.0f}"]
            )
        threaded_rows = []
        for n in (1, 2, 4, 8):
            rate = threaded(bench.full_chain, args.count, n)
            threaded_rows.append([f"full chain, {n} thread(s)", f"{rate:.0f}"])
    title = "disk: durability costs, one after another (0.5 MB objects)"
    table = "\n".join(
        [
            title,
            "=" * len(title),
            render(("step", "median ms", "min ms", "max ms", "per s (1/median)"), rows),
            "",
            render(("concurrency", "objects/s"), threaded_rows),
            f"note: {note}",
        ]
    )
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
