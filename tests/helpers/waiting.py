"""One polling helper for the tests: ``wait_until(predicate, timeout)``.

Tests wait for things that happen in other threads and processes (a port opens, a job reaches
a state, a log line appears). Each wait used to be its own ``deadline`` loop; this is that loop
once, with a failure that says what was awaited and what was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """A wait ran out of time. Both a ``TimeoutError`` (what the helpers used to raise) and an
    ``AssertionError`` (what the tests' own loops used to raise), so callers of either kind keep
    working."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call *predicate* every *interval* seconds until it returns something truthy; return that.

    Fails with :class:`WaitTimeout` after *timeout* seconds. *message* says what was awaited
    (a callable is evaluated only on failure, so it may show the current state); the failure
    also shows the predicate's last value. Exceptions of the *ignore* types raised by the
    predicate count as "not yet" (the last one is shown on failure); others propagate.
    The predicate is called at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval, left))
    if message is None:
        what = getattr(predicate, "__qualname__", repr(predicate))
    else:
        what = message() if callable(message) else message
    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
