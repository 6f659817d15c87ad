"""Run every benchmark and print all their tables at the end.

    python -m bench [--quick] [--reps N] [--no-peers]

``--quick`` is a smoke test (small counts, two repetitions): it checks the harness works, its
figures mean little. Without it the full suite takes roughly ten minutes on the 2-core machine.
"""

from __future__ import annotations

import argparse

from bench import assoc, concurrent, disk, push, receive
from bench.common import exit_cleanly_on_sigterm


def main(argv: list[str] | None = None) -> str:
    """Run receive, concurrent, assoc, push and disk; print every table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, 2 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions (default: each benchmark's own)")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="receive and concurrent also run Orthanc and a pynetdicom SCP (default: yes)",
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    common = ["--quick"] if args.quick else []
    reps = ["--reps", str(args.reps)] if args.reps else []
    peers = [] if args.peers else ["--no-peers"]
    tables = [
        receive.main([*common, *reps, *peers]),
        concurrent.main([*common, *reps, *peers]),
        assoc.main(common),
        push.main(common),
        disk.main(common),
    ]
    text = "\n\n".join(tables)
    print("\n\n######## all benchmarks ########\n")
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
