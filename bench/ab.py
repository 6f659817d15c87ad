"""Fine-grained A/B of ctnode versions on the receive path, for a machine shared with others.

``bench.receive`` alternates whole runs of 600 instances (seconds each); when other users' load
changes at that time scale, run-to-run noise hides differences of 10–20 %. Here every version
runs as a server at once, and short batches (``--batch`` instances, one storescu association
each) go to them in turn: A, B, (C…), A, B, … Each batch is compared with the neighbouring
batches of the other versions, so a load change hits them alike. The series is sent once to each
server (no duplicates); ``--rounds`` repeats with fresh servers.

    python -m bench.ab [REV …] [--batch 30] [--rounds 2] [--count 600] [--dcmtk]

REV: git revisions to compare with this checkout (``.``); ``--dcmtk`` adds DCMTK storescp.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

from bench.common import (
    CTNODE_AE,
    DCMTK_AE,
    CtnodeServer,
    Run,
    Server,
    StorescpServer,
    ct_series,
    exit_cleanly_on_sigterm,
    load_note,
    render,
    run_dir,
    send_parallel,
    source_tree,
)


def main(argv: list[str] | None = None) -> str:
    """Run the comparison; print and return the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("revs", nargs="*", help="git revisions to compare with this checkout")
    parser.add_argument("--batch", type=int, default=30, help="instances per association")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--dcmtk", action="store_true", help="also DCMTK storescp (no fsync)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 instances")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.count, args.batch, args.rounds = 60, 20, 1
    series = ct_series(args.count)
    batches = [list(series.files[i : i + args.batch]) for i in range(0, args.count, args.batch)]
    versions: dict[str, Path | None] = {"ctnode .": None}
    versions.update({f"ctnode @{rev}": source_tree(rev) for rev in args.revs})
    labels = [*versions, *(["DCMTK storescp"] if args.dcmtk else [])]
    runs: dict[str, list[Run]] = {label: [] for label in labels}
    store_ms: dict[str, list[float]] = {label: [] for label in versions}
    note = load_note()
    for round_no in range(args.rounds):
        with ExitStack() as stack:
            servers: dict[str, tuple[Server, str]] = {}
            for label, src in versions.items():
                work = stack.enter_context(run_dir("ab"))
                server = stack.enter_context(CtnodeServer(work, src=src))
                servers[label] = (server.start(), CTNODE_AE)
            if args.dcmtk:
                work = stack.enter_context(run_dir("ab-dcmtk"))
                servers["DCMTK storescp"] = (
                    stack.enter_context(StorescpServer(work)).start(),
                    DCMTK_AE,
                )
            for i, batch in enumerate(batches):
                shift = (i + round_no) % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    server, ae_title = servers[label]
                    runs[label].append(send_parallel(server, ae_title, [batch]))
            for label in versions:
                server = servers[label][0]
                assert isinstance(server, CtnodeServer)
                store_ms[label].extend(server.store_durations_ms())
                rows, files = server.stored()
                if rows != len(series.files) or files != len(series.files):
                    raise RuntimeError(f"{label} stored {files} files / {rows} rows")
        print(f"  round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    reference = labels[0]
    rows_out = []
    for label in labels:
        ips = [r.images_per_s for r in runs[label]]
        ratios = [
            a.images_per_s / b.images_per_s
            for a, b in zip(runs[label], runs[reference], strict=True)
        ]
        cpu = [r.cpu_ms_per_image for r in runs[label] if r.cpu_ms_per_image is not None]
        ms = store_ms.get(label, [])
        rows_out.append(
            [
                label,
                str(len(ips)),
                f"{statistics.median(ips):.0f}",
                f"{statistics.median(cpu):.2f}",
                f"{statistics.median(ms):.2f}" if ms else "–",
                f"{statistics.mean(ms):.2f}" if ms else "–",
                f"{statistics.median(ratios):.2f}",
                f"{min(ratios):.2f}–{max(ratios):.2f}",
            ]
        )
    other = [r.extra["other_cpus"] for rs in runs.values() for r in rs]
    title = (
        f"A/B: {args.count} CT instances in batches of {args.batch} (one association each), "
        f"versions interleaved batch by batch, {args.rounds} round(s)"
    )
    table = "\n".join(
        [
            title,
            "=" * len(title),
            render(
                (
                    "version",
                    "batches",
                    "images/s",
                    "CPU ms/image",
                    "ms/C-STORE median",
                    "ms/C-STORE mean",
                    f"ratio to {reference}",
                    "ratio range",
                ),
                rows_out,
            ),
            "cells: medians over batches (images/s, CPU) or over every C-STORE (ms/C-STORE, from "
            "ctnode's log); ratio: paired with the neighbouring batch of the reference",
            f"background: other processes kept {statistics.median(other):.2f} CPUs busy "
            f"(median over batches); {note}",
        ]
    )
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
