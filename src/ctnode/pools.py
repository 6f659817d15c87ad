"""Thread pools that exist in full from start-up.

``ThreadPoolExecutor`` starts its threads lazily, so a node's thread count would creep up over
its first minutes and a leak would be hard to tell from warm-up. Pre-starting every pool at
start-up makes the count constant once the node is ready: anything above it is a leak.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait


def prewarm(executors: Iterable[ThreadPoolExecutor], timeout: float = 10.0) -> None:
    """Start every thread of each executor (call from outside those executors)."""
    for executor in executors:
        size = executor._max_workers
        barrier = threading.Barrier(size)

        def hold(barrier: threading.Barrier = barrier) -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout)

        wait([executor.submit(hold) for _ in range(size)], timeout=timeout)
