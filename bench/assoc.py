"""Association latency: open + C-ECHO + release, measured in-process from a running client.

Two clients — ctnode's own ``Requestor`` (via ``ctnode.scu.echo.echo``) and pynetdicom — against
two servers — ``ctnode run`` and DCMTK ``storescp`` (which answers C-ECHO). After a warm-up, the
four client/server pairs take turns, one association each, so that a burst of load from other
users hits all of them alike. Each sample is the wall time from "connect" to "closed after
A-RELEASE-RP".

    python -m bench.assoc [--iterations 300] [--warmup 30] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

from bench.common import (
    CTNODE_AE,
    DCMTK_AE,
    LATENCY_HEADERS,
    CtnodeServer,
    Server,
    StorescpServer,
    exit_cleanly_on_sigterm,
    latency_row,
    load_note,
    render,
    run_dir,
)

CLIENT_AE = "BENCH"


def ctnode_client(port: int, called_ae: str) -> Callable[[], None]:
    """One association with ctnode's Requestor: open, C-ECHO, release."""
    from ctnode.scu.echo import ECHO_CONTEXTS, echo
    from ctnode.ul.requestor import AssociationParams

    params = AssociationParams(
        host="127.0.0.1",
        port=port,
        calling_ae=CLIENT_AE,
        called_ae=called_ae,
        contexts=ECHO_CONTEXTS,
    )

    def once() -> None:
        echo(params)  # raises unless the echo succeeded

    return once


def pynetdicom_client(port: int, called_ae: str) -> Callable[[], None]:
    """One association with pynetdicom: associate, send_c_echo, release."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=CLIENT_AE)
    ae.add_requested_context(Verification)

    def once() -> None:
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if not assoc.is_established:
            raise RuntimeError(f"pynetdicom could not associate with {called_ae}")
        status = assoc.send_c_echo()
        assoc.release()
        if status is None or status.Status != 0:
            raise RuntimeError(f"C-ECHO to {called_ae} failed: {status}")

    return once


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.assoc", description=__doc__)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="smoke test: 30 iterations")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.iterations, args.warmup = 30, 5
    start_note = load_note()
    with (
        run_dir("assoc-ctnode") as ct_dir,
        run_dir("assoc-storescp") as dc_dir,
        CtnodeServer(
            ct_dir,
            peers={
                "bench": {
                    "ae_title": CLIENT_AE,
                    "host": "127.0.0.1",
                    "port": 11112,
                    "accept": ["echo"],
                }
            },
        ) as ctnode,
        StorescpServer(dc_dir) as storescp,
    ):
        ctnode.start()
        storescp.start()
        servers: dict[str, tuple[Server, str]] = {
            "ctnode": (ctnode, CTNODE_AE),
            "DCMTK storescp": (storescp, DCMTK_AE),
        }
        pairs: dict[str, tuple[Callable[[], None], Server]] = {}
        for server_label, (server, ae_title) in servers.items():
            pairs[f"ctnode Requestor → {server_label}"] = (
                ctnode_client(server.port, ae_title),
                server,
            )
            pairs[f"pynetdicom → {server_label}"] = (
                pynetdicom_client(server.port, ae_title),
                server,
            )
        for once, _ in pairs.values():
            for _ in range(args.warmup):
                once()
        samples: dict[str, list[float]] = {label: [] for label in pairs}
        cpu_before = {label: s.cpu_seconds() for label, (s, _) in servers.items()}
        labels = list(pairs)
        for i in range(args.iterations):
            shift = i % len(labels)
            for label in labels[shift:] + labels[:shift]:
                once = pairs[label][0]
                started = time.perf_counter()
                once()
                samples[label].append((time.perf_counter() - started) * 1000)
        cpu_per_assoc = {
            label: (s.cpu_seconds() - cpu_before[label]) / (2 * args.iterations) * 1000
            for label, (s, _) in servers.items()
        }
        rss = {label: s.peak_rss_kib() / 1024 for label, (s, _) in servers.items()}
    title = "assoc: open + C-ECHO + release, in-process client already running"
    lines = [title, "=" * len(title)]
    lines.append(render(LATENCY_HEADERS, [latency_row(k, v) for k, v in samples.items()]))
    for client in ("ctnode Requestor", "pynetdicom"):
        ct = statistics.median(samples[f"{client} → ctnode"])
        dc = statistics.median(samples[f"{client} → DCMTK storescp"])
        lines.append(
            f"ratio ctnode/DCMTK median latency, {client} client: {ct / dc:.2f}  "
            f"(target: ctnode median ≤ 10 ms; it is {ct:.2f} ms)"
        )
    for label in servers:
        lines.append(
            f"server {label}: {cpu_per_assoc[label]:.2f} ms CPU per association, "
            f"peak RSS {rss[label]:.0f} MiB"
        )
    lines.append(f"note: before: {start_note}; after: {load_note()}")
    table = "\n".join(lines)
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
