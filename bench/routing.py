"""Routing: receive throughput with five routes vs none, and a study's end-to-end forward.

1. **Receive**: storescu → ctnode with no route, and with five active routes (every instance
   matches all five, to five destinations: one arrival listing them is committed with each
   instance row, and the forwarder expands it into five ``route_matches`` rows during the run;
   ``stable_after`` is long so nothing is forwarded during the measurement). Alternated, fresh
   node each repetition; the target is a paired ratio ≥ 0.95.
2. **End to end**: a study sent by storescu (calling AE STORESCU) reaches DCMTK storescp through
   a route (``stable_after`` S); the time from the end of the send to the last instance at
   storescp, against ``ctnode push --study --wait`` of the same stored study to a fresh storescp.
   Target: end to end ≤ S + push.

    python -m bench.routing [--reps 3] [--count 600] [--study 2000] [--stable 2] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CTNODE_AE,
    SENDER_AE,
    CtnodeServer,
    Run,
    StorescpServer,
    ct_series,
    exit_cleanly_on_sigterm,
    load_note,
    render,
    run_dir,
    send_parallel,
    settle,
    spread,
    throughput_table,
)

SENDER = {"ae_title": SENDER_AE, "host": "127.0.0.1", "port": 11112, "accept": ["echo", "store"]}


def _dest(port: int, ae: str = "STORESCP") -> dict[str, Any]:
    return {"ae_title": ae, "host": "127.0.0.1", "port": port, "accept": ["echo"]}


def five_routes(workdir: Path) -> Path:
    """Five routes that all match a CT from STORESCU, each to its own (idle) destination."""
    routes = workdir / "routes"
    routes.mkdir(parents=True, exist_ok=True)
    specs = [
        "match: {modality: [CT]}",
        f"match: {{calling_ae: [{SENDER_AE}]}}",
        "match: {sop_class: [CTImageStorage]}",
        'match: {tags: {StudyDescription: "*", Manufacturer: ["*tests", "other"]}}',
        'match: {modality: [CT, MR], tags: {SeriesDescription: "Test*"}}',
    ]
    for index, spec in enumerate(specs, 1):
        (routes / f"r{index}.yaml").write_text(f"{spec}\nstable_after: 3600\nto: [dest{index}]\n")
    return routes


def receive_run(count: int, with_routes: bool) -> Run:
    """One repetition: a fresh node (with or without the five routes) receiving *count*."""
    series = ct_series(count)
    with run_dir("routing-rx") as workdir:
        peers: dict[str, Any] = {"sender": SENDER}
        config: dict[str, Any] = {"routes_dir": str(workdir / "no-routes")}
        if with_routes:
            peers |= {f"dest{i}": _dest(9, f"DEST{i}") for i in range(1, 6)}
            config["routes_dir"] = str(five_routes(workdir))
        with CtnodeServer(workdir, peers=peers, config=config).start() as server:
            settle()
            return send_parallel(server, CTNODE_AE, [list(series.files)])


def end_to_end(count: int, stable: float) -> tuple[float, float, float]:
    """(send seconds, send end → last instance at storescp, push --wait seconds)."""
    series = ct_series(count, size=64)
    with run_dir("routing-e2e") as workdir:
        routed = StorescpServer(workdir / "routed").start()
        pushed = StorescpServer(workdir / "pushed").start()
        routes = workdir / "routes"
        routes.mkdir()
        (routes / "to-pacs.yaml").write_text(f"stable_after: {stable}\nto: [pacs]\n")
        peers = {"sender": SENDER, "pacs": _dest(routed.port), "other": _dest(pushed.port, "OTHER")}
        config = {"routes_dir": str(routes), "queue": {"poll_interval": 0.2}}
        node = CtnodeServer(workdir / "node", peers=peers, config=config).start()
        try:
            started = time.perf_counter()
            send_parallel(node, CTNODE_AE, [list(series.files)])
            sent = time.perf_counter()
            while routed.stored() < count:
                time.sleep(0.05)
            forwarded = time.perf_counter()
            study = _study_of(series.files[0])
            push_started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ctnode",
                    "--config",
                    str(node.config_path),
                    "push",
                    "other",
                    "--study",
                    study,
                    "--wait",
                ],
                check=True,
                capture_output=True,
            )
            push = time.perf_counter() - push_started
            return sent - started, forwarded - sent, push
        finally:
            node.stop()
            routed.stop()
            pushed.stop()


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--count", type=int, default=600, help="instances per receive run")
    parser.add_argument("--study", type=int, default=2000, help="instances of the routed study")
    parser.add_argument("--stable", type=float, default=2.0, help="the route's stable_after")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if args.quick:
        args.reps, args.count, args.study = 1, 100, 200
    plain: list[Run] = []
    routed: list[Run] = []
    for rep in range(args.reps):
        order = [False, True] if rep % 2 == 0 else [True, False]
        for with_routes in order:
            (routed if with_routes else plain).append(receive_run(args.count, with_routes))
    print(load_note())
    print(
        throughput_table(
            f"Receive: {args.count} CT instances (~0.5 MB), one association, {args.reps} reps",
            {"no routes": plain, "five routes": routed},
            [("five routes / no routes", "five routes", "no routes", 0.95)],
        )
    )
    results = [end_to_end(args.study, args.stable) for _ in range(args.reps)]
    print(f"\nEnd to end: a {args.study}-instance study, stable_after {args.stable:g} s")
    rows = [
        ["send (storescu → ctnode)", spread([r[0] for r in results])],
        ["send end → last at storescp (route)", spread([r[1] for r in results])],
        ["ctnode push --study --wait", spread([r[2] for r in results])],
        ["route − (stable_after + push)", spread([r[1] - args.stable - r[2] for r in results])],
    ]
    print(render(["seconds", "min / median / max"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
