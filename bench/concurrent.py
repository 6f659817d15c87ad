"""Concurrent receive: several storescu senders at once into ctnode.

Per repetition, in rotating order, each on a fresh process and data directory:

* ctnode, one association carrying all 600 instances (the single-association figure);
* ctnode, 4 storescu senders of 150 instances each at once;
* DCMTK ``storescp --fork``, the same 4 senders (reference: storescp without ``--fork`` serves
  one association at a time);
* ctnode, 8 senders of 75 instances each (memory on 8 concurrent associations);
* ctnode with ``storage.ingest_processes`` N (``--ingest-processes``, default 2), 4 and 8
  senders: the concurrent associations' ingests placed by worker processes on both cores;
* unless ``--no-peers``: Orthanc with ``SyncStorageArea`` (multi-threaded: 4 DICOM threads by
  default) and the pynetdicom SCP of ``bench/pynetdicom_scp.py`` (a thread per association), each
  with the same 4 senders. Every server must have stored every instance, else the benchmark fails.

Memory: the peak summed proportional set size (PSS) of the server's process tree.

    python -m bench.concurrent [--reps 5] [--count 600] [--quick] [--baseline REV]
                               [--ingest-processes N] [--no-peers] [--no-peers]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
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
    source_tree,
    throughput_table,
)
from bench.peers import DURABILITY_NOTES, OrthancServer, PynetdicomServer, run_peer

SINGLE = "ctnode 1 association"
FOUR = "ctnode 4 associations"
DCMTK_FOUR = "storescp --fork 4 assoc. (no fsync)"
EIGHT = "ctnode 8 associations"
FOUR_P = "ctnode 4 assoc., {n} ingest processes"
EIGHT_P = "ctnode 8 assoc., {n} ingest processes"
ORTHANC_FOUR = "Orthanc 4 assoc. (SyncStorageArea)"
PYNETDICOM_FOUR = "pynetdicom SCP 4 assoc. (fsync)"


def run_ctnode(
    series: Series, senders: int, src: Path | None = None, ingest_processes: int = 0
) -> Run:
    """*senders* storescu at once into a fresh ctnode (this checkout's, or the one in *src*)
    with *ingest_processes* worker processes; the PSS of the node and its workers is sampled."""
    config = {"storage": {"ingest_processes": ingest_processes}} if ingest_processes else None
    with (
        run_dir(f"ctnode{senders}") as work,
        CtnodeServer(work, src=src, config=config) as server,
    ):
        server.start()
        run = send_parallel(server, CTNODE_AE, series.split(senders), sample_tree_pss=True)
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


def run_storescp_fork(series: Series, senders: int) -> Run:
    """*senders* storescu at once into a fresh ``storescp --fork``."""
    with run_dir("storescp-fork") as work, StorescpServer(work, fork=True) as server:
        server.start()
        run = send_parallel(
            server, DCMTK_AE, series.split(senders), sample_tree_rss=True, sample_tree_pss=True
        )
        if server.stored() != len(series.files):
            raise RuntimeError(f"storescp wrote {server.stored()} of {len(series.files)} files")
        return run


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.concurrent", description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--max-background",
        type=float,
        metavar="CPUS",
        help="repeat a run (up to 6 times) while other processes kept more CPUs than this busy",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        action="append",
        default=[],
        help="also run ctnode as of git revision REV, 1 and 4 associations (repeatable)",
    )
    parser.add_argument(
        "--ingest-processes",
        type=int,
        default=2,
        metavar="N",
        help="also run ctnode with storage.ingest_processes N, 4 and 8 senders (0: not)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 instances, 2 reps")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run Orthanc (SyncStorageArea) and a pynetdicom SCP, 4 senders (default: yes)",
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.reps, args.count = 2, 64
    series = ct_series(args.count, args.size)
    plan: dict[str, Callable[[], Run]] = {
        SINGLE: partial(run_ctnode, series, 1),
        FOUR: partial(run_ctnode, series, 4),
        DCMTK_FOUR: partial(run_storescp_fork, series, 4),
        EIGHT: partial(run_ctnode, series, 8),
    }
    extra_ratios: list[tuple[str, str, str, float | None]] = []
    four_p = eight_p = None
    if args.ingest_processes:
        n = args.ingest_processes
        four_p, eight_p = FOUR_P.format(n=n), EIGHT_P.format(n=n)
        plan[four_p] = partial(run_ctnode, series, 4, None, n)
        plan[eight_p] = partial(run_ctnode, series, 8, None, n)
        extra_ratios += [
            (f"ratio {four_p}/storescp --fork 4 assoc. (target ≥ 1.0)", four_p, DCMTK_FOUR, 1.0),
            (f"ratio {four_p}/ctnode 1 association (target ≥ 1.8)", four_p, SINGLE, 1.8),
            (f"ratio {four_p}/ctnode 4 associations", four_p, FOUR, None),
        ]
    if args.peers:
        plan[ORTHANC_FOUR] = partial(run_peer, OrthancServer, series, 4)
        plan[PYNETDICOM_FOUR] = partial(run_peer, PynetdicomServer, series, 4)
        extra_ratios += [
            ("ratio ctnode 4 assoc./Orthanc 4 assoc.", FOUR, ORTHANC_FOUR, None),
            ("ratio ctnode 4 assoc./pynetdicom SCP 4 assoc.", FOUR, PYNETDICOM_FOUR, None),
            ("ratio Orthanc 4 assoc./storescp --fork 4 assoc.", ORTHANC_FOUR, DCMTK_FOUR, None),
            (
                "ratio pynetdicom SCP 4 assoc./storescp --fork 4 assoc.",
                PYNETDICOM_FOUR,
                DCMTK_FOUR,
                None,
            ),
        ]
    for rev in args.baseline:
        src = source_tree(rev)
        one, four = f"ctnode @{rev} 1 association", f"ctnode @{rev} 4 associations"
        plan[one] = partial(run_ctnode, series, 1, src)
        plan[four] = partial(run_ctnode, series, 4, src)
        extra_ratios += [
            (f"ratio ctnode @{rev} 4 assoc./1 assoc.", four, one, None),
            (f"ratio ctnode/ctnode @{rev}, 4 assoc.", FOUR, four, None),
        ]
    groups: dict[str, list[Run]] = {label: [] for label in plan}
    start_note = load_note()
    labels = list(plan)
    for rep in range(args.reps):
        shift = rep % len(labels)
        for label in labels[shift:] + labels[:shift]:
            run = measure_quietly(plan[label], args.max_background)
            groups[label].append(run)
            print(
                f"  rep {rep + 1}/{args.reps} {label}: {run.images_per_s:.0f} images/s, "
                f"CPU {run.cpu_s:.2f} s, RSS {(run.peak_rss_kib or 0) / 1024:.0f} MiB, "
                f"other load {run.extra['other_cpus']:.2f} CPUs",
                file=sys.stderr,
                flush=True,
            )
    title = (
        f"concurrent: {len(series.files)} CT instances "
        f"({series.nbytes / len(series.files) / 1e6:.2f} MB each) split over N storescu senders"
    )
    table = throughput_table(
        title,
        groups,
        ratios=[
            ("ratio ctnode 4 assoc./1 assoc. images/s (paired reps)", FOUR, SINGLE, 1.8),
            (
                "ratio ctnode 4 assoc./storescp --fork 4 assoc. (paired reps)",
                FOUR,
                DCMTK_FOUR,
                None,
            ),
            *extra_ratios,
        ],
        notes=[
            "target: ctnode ≤ 150 MiB proportional set size with 8 concurrent associations, "
            "every process counted (peak of the summed PSS, sampled every 0.2 s): "
            + "; ".join(
                f"{label} {statistics.median(pss) / 1024:.0f} MiB"
                for label, runs in groups.items()
                if (pss := [r.extra["pss_kib"] for r in runs if "pss_kib" in r.extra])
            ),
            "storescp --fork: RSS is the sampled peak of the summed VmRSS of the parent and its "
            "per-association children; CPU includes the children",
            *(DURABILITY_NOTES if args.peers else ()),
            *(
                [
                    "Orthanc and the pynetdicom SCP are one process each (threads): "
                    "RSS = its VmHWM, CPU = all its threads"
                ]
                if args.peers
                else []
            ),
            f"every run stored all {len(series.files)} instances (checked: ctnode's index rows "
            "and files, storescp's files"
            + (", Orthanc's /statistics, the pynetdicom SCP's files)" if args.peers else ")"),
            f"before: {start_note}; after: {load_note()}",
        ],
    )
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
