"""Push throughput: ``ctnode push --wait`` vs DCMTK storescu, both into DCMTK storescp.

Each repetition starts a fresh storescp; ctnode pushes through a running ``ctnode run`` (the
CLI hands the submission to the node over its hand-off socket — or, if the node does not take
it, writes the job itself —, the daemon executes it, ``--wait`` follows it to the end), DCMTK
storescu sends the same files on one association. Wall time is the sending command's, from
start to exit, so ctnode's includes its CLI start-up and the probing of the 600 files. Also
reported: the job's own run time (claim to finish), the CPU of the daemon (ctnode) or of
storescu, and in how many repetitions the hand-off was used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial

from bench.common import (
    DCMTK_AE,
    DCMTK_ENV,
    CtnodeServer,
    Run,
    Series,
    StorescpServer,
    ct_series,
    exit_cleanly_on_sigterm,
    load_note,
    measure_quietly,
    run_dir,
    storescu_args,
    system_busy_seconds,
    throughput_table,
)

CTNODE_LABEL = "ctnode push --wait"
DCMTK_LABEL = "DCMTK storescu"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_storescu(series: Series) -> Run:
    """One repetition: storescu -> fresh storescp."""
    with run_dir("push-dcmtk") as work, StorescpServer(work / "scp") as scp:
        (work / "scp").mkdir(exist_ok=True)
        scp.start()
        busy, cpu = system_busy_seconds(), _children_cpu()
        started = time.perf_counter()
        proc = subprocess.run(
            storescu_args(scp.port, DCMTK_AE, series.files),
            env=DCMTK_ENV,
            capture_output=True,
            check=False,
            timeout=900,
        )
        wall = time.perf_counter() - started
        sender = _children_cpu() - cpu
        if proc.returncode != 0 or scp.stored() != len(series.files):
            raise RuntimeError(f"storescu failed: {proc.stdout[-2000:]!r}")
        run = Run(len(series.files), series.nbytes, wall, sender)
        run.extra["other_cpus"] = max(0.0, system_busy_seconds() - busy - sender) / wall
        return run


def run_ctnode(series: Series) -> Run:
    """One repetition: ``ctnode push scp DIR --wait`` through a running ctnode -> storescp."""
    with run_dir("push-ctnode") as work:
        (work / "scp").mkdir()
        with StorescpServer(work / "scp") as scp:
            scp.start()
            peer = {
                "ae_title": DCMTK_AE,
                "host": "127.0.0.1",
                "port": scp.port,
                "services": ["store"],
            }
            with CtnodeServer(
                work / "node", peers={"scp": peer}, config={"queue": {"poll_interval": 0.1}}
            ) as node:
                node.start()
                busy, daemon_cpu, cli_cpu = (
                    system_busy_seconds(),
                    node.cpu_seconds(),
                    _children_cpu(),
                )
                started = time.perf_counter()
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "ctnode",
                        "--config",
                        str(node.config_path),
                        "push",
                        "scp",
                        str(series.directory),
                        "--wait",
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=900,
                )
                wall = time.perf_counter() - started
                used = node.cpu_seconds() - daemon_cpu
                cli = _children_cpu() - cli_cpu
                if proc.returncode != 0:
                    raise RuntimeError(f"ctnode push failed: {proc.stderr[-2000:]}")
                job = json.loads(proc.stdout)
                handoff = _handoff(node, job.get("id"))
            if scp.stored() != len(series.files):
                raise RuntimeError(f"storescp holds {scp.stored()} of {len(series.files)}")
    run = Run(len(series.files), series.nbytes, wall, used)
    run.extra["cli_cpu_s"] = cli
    if handoff is not None:
        run.extra["handoff_ms"] = float(handoff.get("duration_ms", 0.0))
    with contextlib.suppress(KeyError, TypeError, ValueError):
        from datetime import datetime

        begin = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
        run.extra["job_s"] = (end - begin).total_seconds()
    run.extra["other_cpus"] = max(0.0, system_busy_seconds() - busy - used - cli) / wall
    return run


def _handoff(node: CtnodeServer, job_id: object) -> dict[str, object] | None:
    """The node's ``handoff.submitted`` line for the job (None: the command did not hand its
    submission to the node, it took the ordinary path)."""
    with contextlib.suppress(OSError):
        for line in node.log_path.read_text().splitlines():
            if '"handoff.submitted"' in line:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("job") == job_id:
                        return dict(event)
    return None


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max-background", type=float, metavar="CPUS")
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 instances, 2 reps")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.reps, args.count = 2, 60
    series = ct_series(args.count, args.size)
    groups: dict[str, list[Run]] = {CTNODE_LABEL: [], DCMTK_LABEL: []}
    start_note = load_note()
    for rep in range(args.reps):
        order = [CTNODE_LABEL, DCMTK_LABEL] if rep % 2 == 0 else [DCMTK_LABEL, CTNODE_LABEL]
        for label in order:
            one = partial(run_ctnode if label == CTNODE_LABEL else run_storescu, series)
            run = measure_quietly(one, args.max_background)
            groups[label].append(run)
            print(
                f"  rep {rep + 1}/{args.reps} {label}: {run.images_per_s:.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
    job_s = [r.extra["job_s"] for r in groups[CTNODE_LABEL] if "job_s" in r.extra]
    handed = [r.extra["handoff_ms"] for r in groups[CTNODE_LABEL] if "handoff_ms" in r.extra]
    notes = [
        "CPU s: the ctnode daemon's (the CLI process is extra, below) / storescu's own",
        f"ctnode push handed its submission to the node in {len(handed)} of "
        f"{len(groups[CTNODE_LABEL])} reps"
        + (
            f" (the node's submission, connection to committed job: median "
            f"{statistics.median(handed):.0f} ms)"
            if handed
            else " (the ordinary path: the CLI wrote the job itself)"
        ),
        f"load at start: {start_note}; at end: {load_note()}",
    ]
    if job_s:
        rate = len(series.files) / statistics.median(job_s)
        notes.insert(
            0,
            f"ctnode job run time (claim to finish) median {statistics.median(job_s):.2f}"
            f" s = {rate:.0f} images/s; CLI CPU median "
            f"{statistics.median(r.extra['cli_cpu_s'] for r in groups[CTNODE_LABEL]):.2f} s",
        )
    title = (
        f"push: {len(series.files)} CT instances "
        f"({series.nbytes / len(series.files) / 1e6:.2f} MB each) into DCMTK storescp"
    )
    table = throughput_table(
        title,
        groups,
        ratios=[("ratio ctnode/DCMTK images/s (paired reps)", CTNODE_LABEL, DCMTK_LABEL, 1.0)],
        notes=notes,
    )
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
