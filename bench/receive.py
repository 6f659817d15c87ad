"""Receive throughput: DCMTK storescu → ctnode (durable) vs storescu → DCMTK storescp.

One association per run, 600 CT instances of ~0.5 MB (``--count``). ctnode and storescp run
alternately (the order flips every repetition), each on a fresh process, a fresh data directory
and a free loopback port; the data directory, ctnode's SQLite index and storescp's output all live
on the same filesystem as the input data (``bench/out``).

    python -m bench.receive [--reps 5] [--count 600] [--quick] [--profile DIR] [--baseline REV]

``--baseline REV`` adds a third configuration: ctnode as of git revision REV (its ``src/`` exported
under bench/out/revs), alternated with the other two, for before/after comparisons in one run.

``--profile DIR`` additionally records every ctnode run with py-spy (raw collapsed stacks, idle
samples included so blocking calls count) and prints the wall-clock split; see PROFILE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    CTNODE_AE,
    DCMTK_AE,
    CtnodeServer,
    Run,
    Series,
    StorescpServer,
    ct_series,
    load_note,
    run_dir,
    send_parallel,
    settle,
    source_tree,
    throughput_table,
)

CTNODE_LABEL = "ctnode (durable)"
DCMTK_LABEL = "DCMTK storescp (no fsync)"


@contextlib.contextmanager
def pyspy(pid: int, output: Path | None, rate: int = 250) -> Iterator[None]:
    """Record *pid* with py-spy for the duration of the block (no-op without *output*)."""
    if output is None:
        yield
        return
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
            "--idle",
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


def run_ctnode(series: Series, profile: Path | None = None, src: Path | None = None) -> Run:
    """One repetition into a fresh ctnode (this checkout's, or the one in *src*)."""
    with run_dir("ctnode") as work, CtnodeServer(work, src=src) as server:
        server.start()
        with pyspy(server.pid, profile):
            run = send_parallel(server, CTNODE_AE, [series.files])
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
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 instances, 2 reps")
    parser.add_argument("--profile", type=Path, help="record ctnode with py-spy into this dir")
    parser.add_argument("--baseline", metavar="REV", help="also run ctnode as of git revision REV")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.count = 2, 60
    series = ct_series(args.count, args.size)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Run]] = {CTNODE_LABEL: [], DCMTK_LABEL: []}
    baseline_label = f"ctnode @{args.baseline} (durable)" if args.baseline else None
    baseline_src = source_tree(args.baseline) if args.baseline else None
    if baseline_label:
        groups[baseline_label] = []
    start_note = load_note()
    labels = list(groups)
    for rep in range(args.reps):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label == CTNODE_LABEL:
                profile = args.profile / f"receive-rep{rep + 1}.txt" if args.profile else None
                run = run_ctnode(series, profile)
            elif label == baseline_label:
                run = run_ctnode(series, src=baseline_src)
            else:
                run = run_storescp(series)
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
            *(
                [
                    (f"ratio ctnode @{args.baseline}/DCMTK", baseline_label, DCMTK_LABEL, None),
                    (f"ratio ctnode/ctnode @{args.baseline}", CTNODE_LABEL, baseline_label, None),
                ]
                if baseline_label
                else []
            ),
        ],
        notes=[
            "ctnode answers Success only once the object and its index row are durable "
            "(fdatasync, atomic link, directory fsync, SQLite WAL synchronous=FULL commit)",
            "DCMTK storescp as shipped does not fsync: its figure is an upper bound for a "
            "durable receiver",
            "server CPU = utime+stime of the server process (all threads) and its children "
            "during the transfer; peak RSS = VmHWM of a fresh server process per repetition",
            f"before: {start_note}; after: {load_note()}",
        ],
    )
    print(table, flush=True)
    if args.profile:
        from bench.profile_summary import summarize_files

        print(
            summarize_files(
                sorted(args.profile.glob("receive-rep*.txt")), instances_per_file=args.count
            ),
            flush=True,
        )
    return table


if __name__ == "__main__":
    main()
