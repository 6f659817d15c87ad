"""Shared machinery for the benchmarks: data, servers, senders, /proc accounting, tables.

Every benchmark compares ctnode with a DCMTK reference *in the same run*, alternately, on fresh
processes and fresh data directories, and prints min/median/max over the repetitions plus the
ratio of paired repetitions. Absolute figures on a shared 2-core machine are noisy; the ratio of
runs interleaved in time is what to read.

Nothing here asserts a speed: the output is a table for a human.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DATA = OUT / "data"
RUNS = OUT / "runs"

#: Debian's DCMTK keeps Nagle's algorithm on unless this is set (TEST-PEERS.md).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
STORESCU = shutil.which("storescu", path="/usr/bin:/bin") or "storescu"
STORESCP = shutil.which("storescp", path="/usr/bin:/bin") or "storescp"
#: AE title DCMTK storescu uses by default; configured as a peer of ctnode.
SENDER_AE = "STORESCU"
CTNODE_AE = "CTNODE"
DCMTK_AE = "STORESCP"


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class Series:
    """A cached directory of generated instances."""

    directory: Path
    files: tuple[Path, ...]
    nbytes: int

    def split(self, parts: int) -> list[list[Path]]:
        """The files dealt into *parts* equal(ish) contiguous lists."""
        size = -(-len(self.files) // parts)
        return [list(self.files[i : i + size]) for i in range(0, len(self.files), size)]


def ct_series(count: int, size: int = 512) -> Series:
    """*count* CT instances of *size*×*size* 16-bit pixels (~0.5 MB at 512), generated once."""
    directory = DATA / f"ct{size}x{count}"
    marker = directory / "complete.json"
    if not marker.exists():
        # Imported lazily: generating needs numpy and the test helpers.
        sys.path.insert(0, str(ROOT))
        from tests.helpers.dicomgen import write_series

        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        print(f"generating {count} CT instances ({size}×{size}) in {directory} …", flush=True)
        write_series(directory, count, size=size)
        marker.write_text(json.dumps({"count": count, "size": size}))
    files = tuple(sorted(directory.glob("IMG*.dcm")))
    if len(files) != count:
        raise RuntimeError(f"{directory} holds {len(files)} files, expected {count}: remove it")
    return Series(directory, files, sum(f.stat().st_size for f in files))


@contextlib.contextmanager
def run_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory on the same filesystem as the data; removed (and synced) after."""
    RUNS.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=RUNS))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        # Write back whatever the run left dirty (storescp does not fsync) so that it does not
        # compete with the next run's own writes.
        os.sync()


def source_tree(rev: str) -> Path:
    """``src/`` of git revision *rev* exported under bench/out (for before/after runs)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = OUT / "revs" / commit
    if not (target / "src" / "ctnode" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "src", "migrations"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


# ------------------------------------------------------------------ /proc accounting


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of *pid* (all its threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of *pid*."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of *pid* (all threads), of its reaped children, and of live descendants."""
    fields = _stat_fields(pid)
    # After the ")": state is field 3, utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for child in descendants(pid):
        with contextlib.suppress(OSError, IndexError):
            f = _stat_fields(child)
            ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def system_busy_seconds() -> float:
    """CPU time (all CPUs) the machine spent not idle since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU of this process plus its reaped children (the senders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmHWM, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Samples the summed VmRSS of a process tree (for servers that fork per association)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in [self.pid, *descendants(self.pid)]:
                with contextlib.suppress(OSError):
                    total += status_kib(pid, "VmRSS")
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def pss_kib(pid: int) -> int:
    """Proportional set size of *pid* (/proc/PID/smaps_rollup): shared pages split among the
    processes mapping them, so the sum over a process tree is what the tree costs."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class PssSampler(RssSampler):
    """Samples the summed PSS of a process tree (every process counted: a node's ingest
    workers, storescp's per-association children)."""

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in [self.pid, *descendants(self.pid)]:
                with contextlib.suppress(OSError):
                    total += pss_kib(pid)
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)


# ------------------------------------------------------------------ servers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    """Wait until something accepts connections on 127.0.0.1:*port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _yaml(data: Mapping[str, Any]) -> str:
    # JSON is a subset of YAML 1.2: no YAML writer needed.
    return json.dumps(data, indent=2, default=str)


class Server:
    """A server process started for one measurement and stopped by its PID."""

    name = "server"
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Process id."""
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU used so far by the server and its children."""
        return tree_cpu_seconds(self.pid)

    def peak_rss_kib(self) -> int:
        """VmHWM of the server process (a fresh process per run, so per run)."""
        return status_kib(self.pid, "VmHWM")

    def stop(self) -> None:
        """SIGTERM the process group we started, then reap (SIGKILL after 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CtnodeServer(Server):
    """``ctnode run`` with a generated config: data dir (and its SQLite index) in *workdir*."""

    name = "ctnode"

    def __init__(
        self,
        workdir: Path,
        *,
        peers: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        src: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.src = src
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.log_path = workdir / "ctnode.log"
        peers_dir = workdir / "peers"
        peers_dir.mkdir(parents=True, exist_ok=True)
        for name, peer in (
            peers
            or {
                "sender": {
                    "ae_title": SENDER_AE,
                    "host": "127.0.0.1",
                    "port": 11112,
                    "accept": ["echo", "store"],
                }
            }
        ).items():
            (peers_dir / f"{name}.yaml").write_text(_yaml(peer))
        base: dict[str, Any] = {
            "node": {"ae_title": CTNODE_AE, "bind": "127.0.0.1", "port": self.port},
            "storage": {"data_dir": str(self.data_dir), "min_free_bytes": "64MiB"},
            "peers_dir": str(peers_dir),
            "logging": {"level": "INFO", "format": "json"},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        self.config_path = workdir / "ctnode.yaml"
        self.config_path.write_text(_yaml(base))

    def start(self, timeout: float = 60) -> CtnodeServer:
        """Start and wait for the ``daemon.ready`` log event."""
        env = {**os.environ}
        env.pop("CTNODE_CONFIG", None)
        if self.src is not None:
            # Another checkout's ctnode (see source_tree): first on the path, before the venv's
            # editable install of this one.
            env["PYTHONPATH"] = str(self.src)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ctnode", "--config", str(self.config_path), "run"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ctnode exited with {self.proc.returncode}: {self.log_tail()}")
            if b'"daemon.ready"' in self.log_path.read_bytes():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"ctnode not ready after {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def store_durations_ms(self) -> list[float]:
        """``duration_ms`` of every ``scp.store.accepted`` log line: from the C-STORE command's
        arrival to the response (since the response goes out before the log line)."""
        out = []
        with contextlib.suppress(OSError), self.log_path.open() as fh:
            for line in fh:
                if '"scp.store.accepted"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        out.append(float(json.loads(line)["duration_ms"]))
        return out

    def stored(self) -> tuple[int, int]:
        """(index rows, files under store/)."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "ctnode.db")) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM instances").fetchone()
        files = sum(1 for p in (self.data_dir / "store").rglob("*.dcm") if p.is_file())
        return int(rows), files


class StorescpServer(Server):
    """DCMTK ``storescp`` writing into *workdir*/out (as shipped: no fsync)."""

    name = "storescp"

    def __init__(self, workdir: Path, *, fork: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.out_dir = workdir / "out"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fork = fork
        if fork:
            self.name = "storescp --fork"

    def start(self) -> StorescpServer:
        """Start and wait until the port accepts connections."""
        args = [STORESCP, "-aet", DCMTK_AE, "-od", str(self.out_dir)]
        if self.fork:
            args.append("--fork")
        with (self.workdir / "storescp.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [*args, str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV,
                cwd=self.workdir,
                start_new_session=True,
            )
        wait_port(self.port)
        return self

    def stored(self) -> int:
        """Files written."""
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())


# ------------------------------------------------------------------ senders and runs


@dataclass
class Run:
    """One measured transfer (one repetition of one configuration)."""

    images: int
    nbytes: int
    wall_s: float
    cpu_s: float | None = None
    peak_rss_kib: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.wall_s / 1e6

    @property
    def cpu_ms_per_image(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / self.images * 1000


def storescu_args(port: int, called_ae: str, files: Sequence[Path]) -> list[str]:
    """DCMTK storescu sending *files* on one association (defaults otherwise)."""
    return [STORESCU, "-aet", SENDER_AE, "-aec", called_ae, "127.0.0.1", str(port)] + [
        str(f) for f in files
    ]


def send_parallel(
    server: Server,
    called_ae: str,
    batches: Sequence[Sequence[Path]],
    *,
    sample_tree_rss: bool = False,
    sample_tree_pss: bool = False,
) -> Run:
    """Run one storescu per batch at once into *server*; measure wall, server CPU and RSS
    (and, with *sample_tree_pss*, the peak summed PSS of its process tree: ``extra["pss_kib"]``)."""
    nbytes = sum(f.stat().st_size for batch in batches for f in batch)
    images = sum(len(b) for b in batches)
    sampler = RssSampler(server.pid) if sample_tree_rss else None
    pss = PssSampler(server.pid, interval=0.2) if sample_tree_pss else None
    cpu_before = server.cpu_seconds()
    busy_before, own_before = system_busy_seconds(), own_cpu_seconds()
    with sampler or contextlib.nullcontext(), pss or contextlib.nullcontext():
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                storescu_args(server.port, called_ae, batch),
                env=DCMTK_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for batch in batches
        ]
        outputs = [p.communicate(timeout=900)[0] for p in procs]
        wall = time.perf_counter() - started
    cpu_after = server.cpu_seconds()
    busy = system_busy_seconds() - busy_before
    senders = own_cpu_seconds() - own_before
    server_cpu = cpu_after - cpu_before
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(
                f"storescu into {server.name} failed ({proc.returncode}):\n"
                + out.decode(errors="replace")[-2000:]
            )
    rss = server.peak_rss_kib()
    if sampler is not None:
        rss = max(rss, sampler.peak_kib)
    run = Run(images, nbytes, wall, server_cpu, rss)
    run.extra["sender_cpu_s"] = senders
    if pss is not None:
        run.extra["pss_kib"] = pss.peak_kib
    # Everything else the machine did meanwhile (other users, kernel writeback): the noise.
    run.extra["other_cpus"] = max(0.0, busy - server_cpu - senders) / wall
    return run


def measure_quietly(run: Callable[[], Run], max_background: float | None, tries: int = 6) -> Run:
    """*run()*, repeated (up to *tries* times) while other processes kept more than
    *max_background* CPUs busy during it; the last attempt is kept whatever the load."""
    result = run()
    for _ in range(tries - 1):
        if max_background is None or result.extra.get("other_cpus", 0.0) <= max_background:
            break
        print(
            f"  (background load {result.extra['other_cpus']:.2f} CPUs > {max_background}: again)",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(2)
        result = run()
    return result


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that the servers a benchmark started are stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def settle(seconds: float = 0.5) -> None:
    """Let the previous run's stragglers (log flush, close linger) finish."""
    time.sleep(seconds)


# ------------------------------------------------------------------ statistics and tables


def stats(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(values: Sequence[float | None]) -> str:
    """``median [min–max]`` of the values present, or ``–``."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    lo, med, hi = stats(present)
    if len(present) == 1:
        return _fmt(med)
    return f"{_fmt(med)} [{_fmt(lo)}–{_fmt(hi)}]"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(cells)
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


THROUGHPUT_HEADERS = (
    "configuration",
    "n",
    "images/s",
    "MB/s",
    "server CPU s",
    "CPU ms/image",
    "peak RSS MiB",
    "ms/C-STORE",
)


def throughput_row(label: str, runs: Sequence[Run]) -> list[str]:
    """One table row: median [min–max] of each metric over the repetitions."""
    return [
        label,
        str(len(runs)),
        spread([r.images_per_s for r in runs]),
        spread([r.mb_per_s for r in runs]),
        spread([r.cpu_s for r in runs]),
        spread([r.cpu_ms_per_image for r in runs]),
        spread([None if r.peak_rss_kib is None else r.peak_rss_kib / 1024 for r in runs]),
        spread([r.extra.get("store_ms") for r in runs]),
    ]


def paired_ratios(numerator: Sequence[Run], denominator: Sequence[Run]) -> list[float]:
    """images/s ratio of the runs of the same repetition."""
    return [n.images_per_s / d.images_per_s for n, d in zip(numerator, denominator, strict=False)]


def ratio_line(label: str, ratios: Sequence[float], target: float | None = None) -> str:
    """``label: min x  median y  max z`` (and the target, if any)."""
    if not ratios:
        return f"{label}: –"
    lo, med, hi = stats(ratios)
    text = f"{label}: min {lo:.2f}  median {med:.2f}  max {hi:.2f}  (n={len(ratios)})"
    if target is not None:
        text += f"  target ≥ {target:.2f}"
    return text


def throughput_table(
    title: str,
    groups: Mapping[str, Sequence[Run]],
    ratios: Sequence[tuple[str, str, str, float | None]] = (),
    notes: Sequence[str] = (),
) -> str:
    """The whole table: title, one row per configuration, paired ratios, notes.

    *ratios* are (label, numerator group, denominator group, target).
    """
    parts = [title, "=" * len(title)]
    parts.append(render(THROUGHPUT_HEADERS, [throughput_row(k, v) for k, v in groups.items() if v]))
    parts.append(
        "cells: median [min–max] over repetitions; ms/C-STORE: per run, the median time ctnode "
        "took from a C-STORE command's arrival to its response (its log)"
    )
    for label, num, den, target in ratios:
        parts.append(
            ratio_line(label, paired_ratios(groups.get(num, []), groups.get(den, [])), target)
        )
    other = [
        r.extra["other_cpus"] for runs in groups.values() for r in runs if "other_cpus" in r.extra
    ]
    if other:
        lo, med, hi = stats(other)
        parts.append(
            f"background: other processes and the kernel kept {med:.2f} CPUs busy "
            f"[{lo:.2f}–{hi:.2f}] of {os.cpu_count()} during the runs"
        )
    parts.extend(f"note: {n}" for n in notes)
    return "\n".join(parts)


LATENCY_HEADERS = ("client → server", "n", "min ms", "median ms", "p90 ms", "p99 ms", "max ms")


def latency_row(label: str, samples_ms: Sequence[float]) -> list[str]:
    """One latency row."""
    if not samples_ms:
        return [label, "0", "–", "–", "–", "–", "–"]
    return [
        label,
        str(len(samples_ms)),
        f"{min(samples_ms):.2f}",
        f"{statistics.median(samples_ms):.2f}",
        f"{percentile(samples_ms, 90):.2f}",
        f"{percentile(samples_ms, 99):.2f}",
        f"{max(samples_ms):.2f}",
    ]


def load_note() -> str:
    """The machine's load while the benchmark ran (it is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
