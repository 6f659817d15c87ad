"""Step the wall clock of one ``ctnode run`` process at runtime with libfaketime.

``SteppedClock(directory)`` gives the environment and the command for a ``CtnodeProcess``;
``clock.step(+2)`` moves that process's wall clock (``CLOCK_REALTIME``: ``time.time()``,
``datetime.now()``) by two hours at once; ``CLOCK_MONOTONIC`` is left alone, as the kernel does
when an administrator or NTP steps the clock.

Checked against libfaketime 0.9.10 (Debian 12) and its README
(/usr/share/doc/faketime/README.gz):

* ``FAKETIME_TIMESTAMP_FILE`` names a file holding the offset (``+2h``); with
  ``FAKETIME_NO_CACHE=1`` it is re-read on every clock call, so rewriting it steps the clock of
  the running process;
* ``FAKETIME_DONT_FAKE_MONOTONIC=1`` keeps the monotonic clock real.

A known bug of that version (wolfcw/libfaketime#426) makes ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME)`` fail with EINVAL when the monotonic clock is not faked — which is how
Python 3.11 implements ``time.sleep``. The launcher therefore replaces ``time.sleep`` with an
equivalent ``select()`` wait before importing ctnode (everything else ctnode waits on —
``threading`` locks, socket timeouts, selectors, asyncio — was checked to work unchanged).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _find_library() -> Path:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    return found[0] if found else Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


#: Debian's libfaketime (package ``faketime``; ``.ci/run`` installs it).
LIBFAKETIME = _find_library()

LAUNCHER = """
import select, time
def _sleep(seconds):  # libfaketime #426: time.sleep fails with EINVAL under it
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)
time.sleep = _sleep
import runpy, sys
sys.argv[0] = "ctnode"
runpy.run_module("ctnode", run_name="__main__", alter_sys=True)
"""


def available() -> bool:
    """True if libfaketime is installed."""
    return LIBFAKETIME.exists()


class SteppedClock:
    """The wall clock of the processes started with ``env()`` and ``command``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.file = directory / "faketime.rc"
        self.hours = 0.0
        self._write()

    def _write(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{self.hours:+g}h\n")
        os.replace(tmp, self.file)  # never a half-written offset

    def env(self) -> dict[str, str]:
        """Variables that put the process under this clock."""
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    @property
    def command(self) -> list[str]:
        """``python -c LAUNCHER``: ctnode with the ``time.sleep`` work-around."""
        return [sys.executable, "-c", LAUNCHER]

    def step(self, hours: float) -> None:
        """Step the wall clock by *hours* (relative to where it is now)."""
        self.hours += hours
        self._write()

    def set(self, hours: float) -> None:
        """Put the wall clock *hours* away from the real time."""
        self.hours = hours
        self._write()
