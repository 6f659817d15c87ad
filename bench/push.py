"""Push throughput: ``ctnode push --wait`` vs DCMTK storescu, both into DCMTK storescp.

Not measurable yet: ``ctnode push`` does not exist. This placeholder keeps ``python -m bench``
complete and says so in its output; the benchmark belongs here once the command lands (same
shape as bench/receive.py: cached data, fresh storescp per run, alternate the two senders).
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def push_available() -> bool:
    """True once ``ctnode push`` is a command."""
    result = subprocess.run(
        [sys.executable, "-m", "ctnode", "push", "--help"], capture_output=True, check=False
    )
    return result.returncode == 0


def main(argv: list[str] | None = None) -> str:
    """Print (and return) why there is no table."""
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.parse_args(argv)
    title = "push: ctnode push --wait vs DCMTK storescu into DCMTK storescp"
    if push_available():
        why = "skipped: `ctnode push` exists now but this benchmark is not written yet"
    else:
        why = "skipped: `ctnode push` does not exist yet"
    text = f"{title}\n{'=' * len(title)}\n{why}"
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
