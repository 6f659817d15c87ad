"""What every command shares: the state given before the command, settings, error lines, JSON
and table output, and the job repository.

Imports stay light here: ``ctnode version`` loads this module, and a command imports what it
needs (SQLAlchemy, the DICOM stack) only when it runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ctnode.config import LoggingSettings, Settings, load_settings

if TYPE_CHECKING:
    from ctnode.queue.reads import JobReader
    from ctnode.queue.repository import JobRepository
    from ctnode.queue.wakeup import Address

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable contract).")]
PeerArg = Annotated[str, typer.Argument(help="Peer name (file stem in peers_dir).")]


@dataclass
class State:
    """The program's state around one command: options given before it, and how to end."""

    config: Path | None = None
    #: Whether ``entry`` may end the process without tearing the interpreter down (every
    #: command but ``run``, which shuts the node down in order and exits normally).
    quick_exit: bool = True


def state_of(ctx: typer.Context) -> State:
    """The State of the command line (a fresh one when the command runs on its own)."""
    obj = ctx.obj
    return obj if isinstance(obj, State) else State()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line and exit with *code*."""
    typer.echo(f"ctnode: error: {message}", err=True)
    raise typer.Exit(code)


def notice(line: str) -> None:
    """Print one ``ctnode: ...`` line on stderr (a warning, a skipped file)."""
    typer.echo(f"ctnode: {line}", err=True)


def settings_of(ctx: typer.Context, *, quiet_logs: bool = True) -> Settings:
    """Load settings for a command; with *quiet_logs* (short commands) logs go to stderr at
    WARNING (DEBUG with ``CTNODE_DEBUG``). ``run`` configures its own logging; ``push`` passes
    False because nothing on its path logs (structlog and rich cost a tenth of a second to
    import; a test checks that push imports neither)."""
    settings = load_settings(state_of(ctx).config)
    if quiet_logs:
        from ctnode.logs import configure_logging

        level = "DEBUG" if os.environ.get("CTNODE_DEBUG") else "WARNING"
        configure_logging(LoggingSettings(level=level, format=settings.logging.format))
    return settings


def emit_json(value: object) -> None:
    """Print *value* as JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Plain aligned columns (use --json for scripts)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def open_repo(settings: Settings) -> JobRepository:
    """A JobRepository on the configured database (migrated when it is SQLite)."""
    from ctnode.submit import open_repository

    return open_repository(settings)


def open_reader(settings: Settings) -> JobReader:
    """A JobReader on the configured database (migrated when it is SQLite): for commands that
    only look at jobs."""
    from ctnode.db.opening import open_database
    from ctnode.queue.reads import JobReader

    return JobReader(open_database(settings, migrate_sqlite=True))


def wake_address(settings: Settings) -> Address:
    """The local node's wake channel (see ``ctnode.queue.wakeup``)."""
    from ctnode.submit import wake_address as address

    return address(settings)


def wake_node(settings: Settings, job_id: int) -> None:
    """Tell the local node (if it runs) that *job_id* was just committed (silent when nobody
    listens)."""
    from ctnode.submit import wake_node as poke

    poke(settings, job_id)
