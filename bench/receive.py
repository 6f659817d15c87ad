"""Receive throughput: DCMTK storescu → ctnode (durable) vs storescu → DCMTK storescp, and
what a user would pick instead: Orthanc (``SyncStorageArea``) and a plain pynetdicom SCP.

One association per run, 600 CT instances of ~0.5 MB (``--count``). The servers run alternately
(the order rotates every repetition), each on a fresh process, a fresh data directory and a free
loopback port, with the same storescu sender; the data directory, ctnode's SQLite index,
storescp's output, Orthanc's storage and index and the pynetdicom SCP's files all live on the same
filesystem as the input data (``bench/out``). Every server must have stored every instance, else
the benchmark fails.

    python -m bench.receive [--reps 5] [--count 600] [--quick] [--profile DIR] [--baseline REV]
                            [--no-peers]

``--no-peers`` leaves Orthanc and the pynetdicom SCP out (a quicker ctnode-only A/B with
``--baseline``); they are in by default.

``--baseline REV`` (repeatable) adds a configuration: ctnode as of git revision REV (its ``src/``
exported under bench/out/revs), alternated with the others, for before/after comparisons in one
run.

``--profile DIR`` additionally records every ctnode run (baselines too) with py-spy (raw collapsed
stacks, idle samples included so blocking calls count) and prints the wall-clock split of each;
``--profile-cpu`` leaves idle samples out. See PROFILE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from bench.common import (
    CTNODE_AE,
    DCMTK_AE,
    CtnodeServer,
    Run,
    Series,
    StorescpServer,
    ct_series,
    exit_cleanly_on_sigterm,
    load_note,
    measure_quietly,
    run_dir,
    send_parallel,
    settle,
    source_tree,
    throughput_table,
)
from bench.peers import (
    DURABILITY_NOTES,
    ORTHANC_LABEL,
    PYNETDICOM_LABEL,
    OrthancServer,
    PynetdicomServer,
    run_peer,
)

CTNODE_LABEL = "ctnode (durable)"
DCMTK_LABEL = "DCMTK storescp (no fsync)"


@contextlib.contextmanager
def pyspy(pid: int, output: Path | None, rate: int = 250, idle: bool = True) -> Iterator[None]:
    """Record *pid* with py-spy for the duration of the block (no-op without *output*).

    With *idle* (the default) threads blocked in system calls are sampled too (wall-clock
    profile); without, only samples where the thread runs (CPU profile).
    """
    if output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen(
        [
            str(exe if exe.exists() else "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--nonblocking",
            *(["--idle"] if idle else []),
            "--threads",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settle(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def run_ctnode(
    series: Series, profile: Path | None = None, src: Path | None = None, idle: bool = True
) -> Run:
    """One repetition into a fresh ctnode (this checkout's, or the one in *src*)."""
    with run_dir("ctnode") as work, CtnodeServer(work, src=src) as server:
        server.start()
        with pyspy(server.pid, profile, idle=idle):
            run = send_parallel(server, CTNODE_AE, [series.files])
        durations = server.store_durations_ms()
        if durations:
            run.extra["store_ms"] = statistics.median(durations)
        rows, files = server.stored()
        if rows != len(series.files) or files != len(series.files):
            raise RuntimeError(
                f"ctnode stored {files} files / {rows} rows of {len(series.files)}:\n"
                + server.log_tail()
            )
        return run


def run_storescp(series: Series) -> Run:
    """One repetition into a fresh DCMTK storescp."""
    with run_dir("storescp") as work, StorescpServer(work) as server:
        server.start()
        run = send_parallel(server, DCMTK_AE, [series.files])
        if server.stored() != len(series.files):
            raise RuntimeError(f"storescp wrote {server.stored()} of {len(series.files)} files")
        return run


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.receive", description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of the CT images")
    parser.add_argument(
        "--max-background",
        type=float,
        metavar="CPUS",
        help="repeat a run (up to 6 times) while other processes kept more CPUs than this busy",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 instances, 2 reps")
    parser.add_argument("--profile", type=Path, help="record ctnode with py-spy into this dir")
    parser.add_argument(
        "--profile-cpu",
        action="store_true",
        help="with --profile: sample only running threads (CPU profile, not wall clock)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        action="append",
        default=[],
        help="also run ctnode as of git revision REV (repeatable)",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run Orthanc (SyncStorageArea) and a pynetdicom SCP (default: yes)",
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.reps, args.count = 2, 60
    series = ct_series(args.count, args.size)
    groups: dict[str, list[Run]] = {CTNODE_LABEL: [], DCMTK_LABEL: []}
    # Competitors -> their server class (run with the same sender, one association).
    peers: dict[str, type[OrthancServer] | type[PynetdicomServer]] = (
        {ORTHANC_LABEL: OrthancServer, PYNETDICOM_LABEL: PynetdicomServer} if args.peers else {}
    )
    for label in peers:
        groups[label] = []
    baselines = {f"ctnode @{rev} (durable)": (rev, source_tree(rev)) for rev in args.baseline}
    for label in baselines:
        groups[label] = []
    # ctnode configurations -> their src/ (None: this checkout's)
    sources: dict[str, Path | None] = {CTNODE_LABEL: None}
    sources.update({label: src for label, (_, src) in baselines.items()})
    start_note = load_note()
    labels = list(groups)
    for rep in range(args.reps):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label in sources:
                profile = (
                    args.profile / _slug(label) / f"rep{rep + 1}.txt" if args.profile else None
                )
                one = partial(
                    run_ctnode, series, profile, sources[label], idle=not args.profile_cpu
                )
            elif label in peers:
                one = partial(run_peer, peers[label], series)
            else:
                one = partial(run_storescp, series)
            run = measure_quietly(one, args.max_background)
            groups[label].append(run)
            print(
                f"  rep {rep + 1}/{args.reps} {label}: {run.images_per_s:.0f} images/s, "
                f"CPU {run.cpu_s:.2f} s, other load {run.extra['other_cpus']:.2f} CPUs",
                file=sys.stderr,
                flush=True,
            )
    title = (
        f"receive: {len(series.files)} CT instances ({series.nbytes / len(series.files) / 1e6:.2f}"
        f" MB each), one association, DCMTK storescu as sender"
    )
    table = throughput_table(
        title,
        groups,
        ratios=[
            ("ratio ctnode/DCMTK images/s (paired reps)", CTNODE_LABEL, DCMTK_LABEL, 1.0),
            *[
                (f"ratio ctnode @{rev}/DCMTK", label, DCMTK_LABEL, None)
                for label, (rev, _) in baselines.items()
            ],
            *[
                (f"ratio ctnode/ctnode @{rev}", CTNODE_LABEL, label, None)
                for label, (rev, _) in baselines.items()
            ],
            *[
                (f"ratio {kind.name}/DCMTK", label, DCMTK_LABEL, None)
                for label, kind in peers.items()
            ],
            *[
                (f"ratio ctnode/{kind.name}", CTNODE_LABEL, label, None)
                for label, kind in peers.items()
            ],
        ],
        notes=[
            "ctnode answers Success only once the object and its index row are durable "
            "(fdatasync, atomic link, directory fsync, SQLite WAL synchronous=FULL commit)",
            "DCMTK storescp as shipped does not fsync: its figure is an upper bound for a "
            "durable receiver",
            *(DURABILITY_NOTES if peers else ()),
            "server CPU = utime+stime of the server process (all threads) and its children "
            "during the transfer; peak RSS = VmHWM of a fresh server process per repetition",
            f"every run stored all {len(series.files)} instances (checked: ctnode's index rows "
            "and files, storescp's files"
            + (", Orthanc's /statistics, the pynetdicom SCP's files)" if args.peers else ")"),
            f"before: {start_note}; after: {load_note()}",
        ],
    )
    print(table, flush=True)
    if args.profile:
        from bench.profile_summary import SRC, summarize_files

        for label, src in sources.items():
            files = sorted((args.profile / _slug(label)).glob("rep*.txt"))
            print(f"\n{label}:", flush=True)
            print(summarize_files(files, instances_per_file=args.count, src=src or SRC), flush=True)
    return table


if __name__ == "__main__":
    main()
