"""How a followed job is shown on the terminal (``--wait``): a progress bar on a terminal, plain
lines otherwise.

``ctnode.follow`` reads the job and hands each reading to a ``Display`` as a ``Snapshot``; the
display here draws it on the command's own stderr. A ``push`` handed to the running node
(``ctnode.handoff``) is followed in the node, which sends the same snapshots over its socket to
the command, which draws them with this same display: both paths print the same thing.

Light on imports on purpose (the command that draws may have imported nothing else: not even
dataclasses): rich is loaded only for a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, NamedTuple, Protocol, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Snapshot(NamedTuple):
    """One reading of a followed job, as shown."""

    #: The line printed when not on a terminal (``follow.describe``).
    line: str
    #: The bar's total (0: unknown) and how many are done.
    total: int
    done: int
    #: The bar's label: ``job 12 running``.
    label: str

    def to_json(self) -> dict[str, object]:
        """As sent over the hand-off socket."""
        return {"line": self.line, "total": self.total, "done": self.done, "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Snapshot:
        """Back from ``to_json`` (ValueError if it is not one)."""
        line, total, done, label = (data.get(k) for k in ("line", "total", "done", "label"))
        if not (
            isinstance(line, str)
            and isinstance(label, str)
            and type(total) is int
            and type(done) is int
        ):
            raise ValueError("not a snapshot")
        return cls(line, total, done, label)


class Display(Protocol):
    """Where a followed job's readings go."""

    def show(self, snapshot: Snapshot) -> None:
        """The job as it is now."""

    def warn(self, text: str) -> None:
        """A line to tell the user while following (no node seems to run the job)."""


#: Opens the display of one followed job on an output stream: ``terminal``, or the hand-off's
#: display that sends the readings to the command.
DisplayFactory = Callable[[int, TextIO], AbstractContextManager[Display]]


class _Lines:
    """Plain lines: one each time the job's line changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last = ""

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.line != self.last:
            print(snapshot.line, file=self.out, flush=True)
            self.last = snapshot.line

    def warn(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class _Bar:
    """A transient rich progress bar."""

    def __init__(self, bar: Progress, task: TaskID, out: TextIO) -> None:
        self.bar, self.task, self.out = bar, task, out

    def show(self, snapshot: Snapshot) -> None:
        self.bar.update(
            self.task,
            total=snapshot.total or None,
            completed=snapshot.done,
            description=snapshot.label,
        )

    def warn(self, text: str) -> None:
        print(text, file=self.out, flush=True)


@contextmanager
def terminal(job_id: int, out: TextIO) -> Iterator[Display]:
    """The display on *out*: a transient progress bar on a terminal, plain lines otherwise."""
    if not out.isatty():
        yield _Lines(out)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(file=out)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as bar:
        yield _Bar(bar, bar.add_task(f"job {job_id}", total=None), out)
