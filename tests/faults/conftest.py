"""Fixtures of the fault suite: the ledger (verified by every test), a seeded RNG, small
filesystems, and the session's totals printed at the end of the run."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.ledger import Ledger, LedgerCounts, merge_counts


class FaultTally:
    """Totals over the session: cases, faults injected, acknowledged, lost, duplicates."""

    def __init__(self) -> None:
        self.cases: dict[str, LedgerCounts] = {}
        self.seeds: dict[str, int] = {}

    def add(self, name: str, counts: LedgerCounts) -> None:
        self.cases[name] = counts


_TALLY = FaultTally()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """The test's ledger; the test must end with ``ledger.verify()`` (checked here)."""
    book = Ledger(request.node.name, tally=_TALLY)
    yield book
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed and book.verified is None:
        pytest.fail("a fault test must end with ledger.verify()")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded RNG; the seed is printed (and listed in the summary) for reproduction.
    Set CTNODE_FAULT_SEED to replay a run."""
    seed = int(os.environ.get("CTNODE_FAULT_SEED") or secrets.randbits(32))
    _TALLY.seeds[request.node.name] = seed
    print(f"fault RNG seed: {seed} (replay with CTNODE_FAULT_SEED={seed})")
    return random.Random(seed)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs filesystems (tests run as root): ``small_fs("4m")`` -> mount point."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True
        )
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY.cases:
        return
    total = merge_counts(_TALLY.cases)
    write = terminalreporter.write_line
    terminalreporter.section("fault suite ledger")
    for name, counts in _TALLY.cases.items():
        seed = _TALLY.seeds.get(name)
        write(f"{name}: {counts.line()}" + (f" [seed {seed}]" if seed is not None else ""))
    write(
        f"TOTAL: {len(_TALLY.cases)} case(s) verified; faults injected {total.faults}; "
        f"acknowledged instances {total.acknowledged}, lost {total.lost}; "
        f"duplicates observed at peers {total.duplicates}; jobs {total.jobs} "
        f"(succeeded {total.jobs_succeeded}, failed {total.jobs_failed})"
    )
