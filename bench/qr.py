"""Query/Retrieve SCP: C-FIND latency on a large index, C-MOVE and C-GET against ``ctnode push``.

One ``ctnode run`` (SQLite) holds a real study of ``--count`` CT instances stored through
DCMTK storescu (the receive path), and an index of ``--rows`` rows in ``--studies`` studies in
all: the other studies' rows are written straight into the node's SQLite database (their files
do not exist: only C-FIND reads them). Then, in the same run:

* C-FIND: a STUDY-level query with a wildcard Patient Name that every study matches, from a
  pynetdicom SCU on an open association; the time from sending the request to the first and to
  the last (final) response. Target (issue 15): first ≤ 50 ms, last ≤ 500 ms.
* C-MOVE of the real study to a fresh DCMTK storescp (DCMTK movescu), ``ctnode push --study
  --wait`` of the same study to the same storescp, and C-GET of it by DCMTK getscu (into a
  directory), alternating in each repetition. Wall time is the client command's. Target: C-MOVE
  and C-GET at ≥ 0.9× the images/s of the push in the same repetition.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    DCMTK_AE,
    DCMTK_ENV,
    SENDER_AE,
    CtnodeServer,
    Run,
    Series,
    StorescpServer,
    ct_series,
    exit_cleanly_on_sigterm,
    free_port,
    latency_row,
    load_note,
    measure_quietly,
    render,
    run_dir,
    storescu_args,
    system_busy_seconds,
    throughput_table,
)

MOVE_LABEL = "C-MOVE → storescp (movescu)"
PUSH_LABEL = "ctnode push --wait → storescp"
GET_LABEL = "C-GET → getscu -od DIR"
#: UID root of the synthetic rows (the ``2.25`` arc: a UUID-derived root needs no registration).
_UID_ROOT = "2.25.1971"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def synthetic_rows(
    template: dict[str, Any], studies: int, rows: int, node_name: str
) -> list[dict[str, Any]]:
    """*rows* index rows in *studies* studies (three series each) modelled on *template*; every
    patient is ``Doe^Bench<n>`` (a ``Doe*`` query matches them all)."""
    out: list[dict[str, Any]] = []
    per_study, extra = divmod(rows, studies)
    for study in range(studies):
        study_uid = f"{_UID_ROOT}.{study + 1}"
        count = per_study + (1 if study < extra else 0)
        for number in range(count):
            series = number % 3 + 1
            series_uid = f"{study_uid}.{series}"
            sop_uid = f"{series_uid}.{number + 1}"
            out.append(
                {
                    **template,
                    "sop_instance_uid": sop_uid,
                    "study_instance_uid": study_uid,
                    "series_instance_uid": series_uid,
                    "patient_id": f"BENCH{study:05d}",
                    "patient_name": f"Doe^Bench{study:05d}",
                    "study_date": f"2025{study % 12 + 1:02d}{study % 28 + 1:02d}",
                    "accession_number": f"ACC{study:06d}",
                    "series_number": series,
                    "instance_number": number + 1,
                    "path": f"{study_uid}/{series_uid}/{sop_uid}.dcm",
                    "node_name": node_name,
                }
            )
    return out


def fill_index(database: Path, studies: int, rows: int) -> float:
    """Add the synthetic rows (copies of a stored row) to the node's index; returns seconds."""
    started = time.perf_counter()
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as conn:
        conn.row_factory = sqlite3.Row
        real = conn.execute("SELECT * FROM instances ORDER BY id LIMIT 1").fetchone()
        template = {k: real[k] for k in real.keys() if k != "id"}  # noqa: SIM118 (sqlite3.Row)
        new = synthetic_rows(template, studies, rows, template["node_name"])
        columns = list(template)
        statement = (
            f"INSERT INTO instances ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        with conn:
            conn.executemany(statement, new)
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def time_find(port: int, reps: int) -> tuple[list[float], list[float], int]:
    """*reps* STUDY-level C-FINDs with ``PatientName=Doe*`` on one association: (ms to the
    first response, ms to the final one, matches of the last query)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "Doe*"
    for keyword in ("PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        setattr(query, keyword, "")
    query.NumberOfStudyRelatedInstances = None
    first_ms: list[float] = []
    last_ms: list[float] = []
    matches = 0
    assoc = ae.associate("127.0.0.1", port, ae_title="CTNODE")
    if not assoc.is_established:
        raise RuntimeError("the C-FIND association was not accepted")
    # pynetdicom leaves Nagle's algorithm on: its request (command and identifier in two
    # writes) would wait for the node's delayed ACK, some 40 ms, before the node even sees it.
    assert assoc.dul.socket is not None
    assert assoc.dul.socket.socket is not None
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for _ in range(reps):
            matches, first = 0, None
            started = time.perf_counter()
            for status, _identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                now = (time.perf_counter() - started) * 1000
                code = int(status.Status) if status is not None and "Status" in status else None
                if code in (0xFF00, 0xFF01):
                    matches += 1
                    first = now if first is None else first
                elif code is not None:
                    if code != 0x0000:
                        raise RuntimeError(f"C-FIND ended with 0x{code:04X}")
                    last_ms.append(now)
                else:
                    raise RuntimeError("C-FIND: no response (association lost or timed out)")
            first_ms.append(first if first is not None else last_ms[-1])
    finally:
        assoc.release()
    return first_ms, last_ms, matches


def logged_finds(log_path: Path) -> tuple[list[float], list[float]]:
    """``first_ms`` and ``duration_ms`` of every ``scp.find.finished`` line of the node's log:
    the node's own view (from decoding the request to the first and the final response)."""
    first: list[float] = []
    total: list[float] = []
    with contextlib.suppress(OSError), log_path.open() as fh:
        for line in fh:
            if '"scp.find.finished"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event = json.loads(line)
                    first.append(float(event["first_ms"]))
                    total.append(float(event["duration_ms"]))
    return first, total


def _client_run(
    args: list[str], count: int, nbytes: int, node: CtnodeServer, check: Callable[[], int]
) -> Run:
    """Run a client command; a Run with its wall time and the node's CPU meanwhile."""
    busy, daemon, clients = system_busy_seconds(), node.cpu_seconds(), _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(
        args, env=DCMTK_ENV, capture_output=True, text=True, check=False, timeout=900
    )
    wall = time.perf_counter() - started
    used, client = node.cpu_seconds() - daemon, _children_cpu() - clients
    arrived = check()
    if proc.returncode != 0 or arrived != count:
        raise RuntimeError(
            f"{args[0]} exited {proc.returncode}, {arrived} of {count} arrived: "
            f"{(proc.stdout + proc.stderr)[-2000:]}"
        )
    run = Run(count, nbytes, wall, used)
    run.extra["client_cpu_s"] = client
    run.extra["other_cpus"] = max(0.0, system_busy_seconds() - busy - used - client) / wall
    return run


def run_move(node: CtnodeServer, series: Series, study: str, scp_port: int, work: Path) -> Run:
    """One C-MOVE of the study to a fresh storescp."""
    with run_dir("qr-move") as scratch, StorescpServer(scratch) as scp:
        scp.port = scp_port
        scp.start()
        args = ["movescu", "-S", "-aet", "MOVESCU", "-aec", "CTNODE", "-aem", DCMTK_AE]
        args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        return _client_run(
            [*args, "127.0.0.1", str(node.port)],
            len(series.files),
            series.nbytes,
            node,
            scp.stored,
        )


def run_push(node: CtnodeServer, series: Series, study: str, scp_port: int, work: Path) -> Run:
    """One ``ctnode push scp --study UID --wait`` to a fresh storescp."""
    with run_dir("qr-push") as scratch, StorescpServer(scratch) as scp:
        scp.port = scp_port
        scp.start()
        command = [sys.executable, "-m", "ctnode", "--config", str(node.config_path)]
        return _client_run(
            [*command, "push", "scp", "--study", study, "--wait", "--json"],
            len(series.files),
            series.nbytes,
            node,
            scp.stored,
        )


def run_get(node: CtnodeServer, series: Series, study: str, scp_port: int, work: Path) -> Run:
    """One C-GET of the study by getscu into a fresh directory."""
    with run_dir("qr-get") as scratch:
        args = ["getscu", "-S", "-aet", "GETSCU", "-aec", "CTNODE", "-od", str(scratch)]
        args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        return _client_run(
            [*args, "127.0.0.1", str(node.port)],
            len(series.files),
            series.nbytes,
            node,
            lambda: sum(1 for p in scratch.iterdir() if p.is_file()),
        )


def _peers(scp_port: int) -> dict[str, dict[str, Any]]:
    loopback = {"host": "127.0.0.1", "port": 104}
    return {
        "sender": {"ae_title": SENDER_AE, **loopback, "accept": ["echo", "store"]},
        "finder": {"ae_title": "FINDSCU", **loopback, "accept": ["find"]},
        "mover": {"ae_title": "MOVESCU", **loopback, "accept": ["move"]},
        "getter": {"ae_title": "GETSCU", **loopback, "accept": ["get"]},
        "scp": {"ae_title": DCMTK_AE, "host": "127.0.0.1", "port": scp_port},
    }


def find_table(
    first: list[float],
    last: list[float],
    matches: int,
    rows: int,
    logged: tuple[list[float], list[float]],
) -> str:
    """The C-FIND latency table (the client's times, and the node's from its log)."""
    title = f"C-FIND STUDY PatientName=Doe* on {rows} index rows: {matches} matches"
    return "\n".join(
        [
            title,
            "=" * len(title),
            render(
                ("response", "n", "min ms", "median ms", "p90 ms", "p99 ms", "max ms"),
                [
                    latency_row("first (target ≤ 50)", first),
                    latency_row("last (≤ 500)", last),
                    latency_row("node log: first", logged[0]),
                    latency_row("node log: last", logged[1]),
                ],
            ),
            "client: a pynetdicom SCU, from sending the C-FIND-RQ to receiving the response; "
            "node log: from reading the request to sending the response",
        ]
    )


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.qr", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--finds", type=int, default=10)
    parser.add_argument("--count", type=int, default=600, help="instances of the real study")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rows", type=int, default=100_000, help="index rows in all")
    parser.add_argument("--studies", type=int, default=1000, help="studies in all")
    parser.add_argument("--max-background", type=float, metavar="CPUS")
    parser.add_argument("--quick", action="store_true", help="smoke test: small index, 2 reps")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.reps, args.finds, args.count, args.rows, args.studies = 2, 3, 60, 2000, 20
    series = ct_series(args.count, args.size)
    start_note = load_note()
    scp_port = free_port()
    logged: tuple[list[float], list[float]] = ([], [])
    groups: dict[str, list[Run]] = {MOVE_LABEL: [], PUSH_LABEL: [], GET_LABEL: []}
    runners = {MOVE_LABEL: run_move, PUSH_LABEL: run_push, GET_LABEL: run_get}
    with run_dir("qr") as work:
        node = CtnodeServer(
            work / "node", peers=_peers(scp_port), config={"queue": {"poll_interval": 0.1}}
        )
        with node:
            node.start()
            stored = subprocess.run(
                storescu_args(node.port, "CTNODE", series.files),
                env=DCMTK_ENV,
                capture_output=True,
                check=False,
                timeout=900,
            )
            if stored.returncode != 0 or node.stored()[0] != len(series.files):
                raise RuntimeError(f"storing the study failed: {stored.stdout[-2000:]!r}")
            with contextlib.closing(sqlite3.connect(node.data_dir / "ctnode.db")) as conn:
                (study,) = conn.execute(
                    "SELECT DISTINCT study_instance_uid FROM instances"
                ).fetchone()
            fill_s = fill_index(
                node.data_dir / "ctnode.db", args.studies - 1, args.rows - len(series.files)
            )
            print(f"  index: {node.stored()[0]} rows written ({fill_s:.1f} s)", file=sys.stderr)
            first, last, matches = time_find(node.port, args.finds)
            logged = logged_finds(node.log_path)
            print(
                f"  C-FIND: first {min(first):.1f} ms, last {min(last):.1f} ms (best)",
                file=sys.stderr,
                flush=True,
            )
            for rep in range(args.reps):
                order = list(runners)
                order = order[rep % 3 :] + order[: rep % 3]
                for label in order:
                    one = partial(runners[label], node, series, study, scp_port, work)
                    run = measure_quietly(one, args.max_background)
                    groups[label].append(run)
                    print(
                        f"  rep {rep + 1}/{args.reps} {label}: {run.images_per_s:.0f} images/s",
                        file=sys.stderr,
                        flush=True,
                    )
    title = (
        f"retrieve: a study of {len(series.files)} CT instances "
        f"({series.nbytes / len(series.files) / 1e6:.2f} MB each)"
    )
    table = throughput_table(
        title,
        groups,
        ratios=[
            ("ratio C-MOVE/push images/s (paired reps)", MOVE_LABEL, PUSH_LABEL, 0.9),
            ("ratio C-GET/push images/s (paired reps)", GET_LABEL, PUSH_LABEL, 0.9),
        ],
        notes=[
            "server CPU s: the ctnode daemon's; wall time: the client command's (push: its CLI "
            "start-up included)",
            f"load at start: {start_note}; at end: {load_note()}",
        ],
    )
    text = find_table(first, last, matches, args.rows, logged) + "\n\n" + table
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
