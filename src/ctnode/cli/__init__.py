"""The ``ctnode`` command line. Each command parses, calls one function, prints; exit codes:
0 ok, 1 runtime failure, 2 usage or configuration error. ``--json`` output is a contract.

This module holds the entry point (the console script is ``ctnode.cli:entry``) and imports
nothing heavy: a plain ``ctnode push`` is first offered to the running local node
(``ctnode.handoff.client``), which costs the command none of the start-up of the whole stack;
every other command, and a push no node takes, runs the Typer app (``cli/app.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ctnode.cli.common import State


def entry() -> NoReturn:
    """The ``ctnode`` program: the hand-off of a push, else ``main``; then exit.

    A short command has nothing left to do once it returns: its output is flushed, its
    database writes are committed, logging is shut down. Tearing down the interpreter (freeing
    every module of SQLAlchemy, pydantic...) would add a good tenth of a second to every
    command, so the process ends at once — except for ``run``, which exits normally.
    """
    from ctnode.handoff.client import Resume, push

    try:
        handed = push(sys.argv[1:])
        if isinstance(handed, Resume):
            args = handed.args
            handed = resume_push(
                args.config,
                handed.job_id,
                wait=args.wait,
                commit=args.commit,
                as_json=args.as_json,
                extra=handed.extra,
            )
    except KeyboardInterrupt:
        handed = 130
    if handed is not None:
        _quick_exit(handed)
    from ctnode.cli.common import State

    state = State()
    code = main(state=state)
    if state.quick_exit:
        _quick_exit(code)
    raise SystemExit(code)


def _quick_exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, *, state: State | None = None) -> int:
    """Run the CLI (the Typer app, in this process); returns the exit code (errors are one line
    on stderr). *state* receives the options given before the command and how the process may
    end."""
    import typer

    from ctnode.cli.app import app
    from ctnode.cli.common import State

    args = list(sys.argv[1:] if argv is None else argv)

    def run() -> Any:
        return app(args=args, prog_name="ctnode", standalone_mode=False, obj=state or State())

    try:
        result = guarded(run)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("ctnode: aborted", err=True)
        return 130
    except typer.TyperException as exc:
        message = exc.format_message()
        if message:
            typer.echo(f"ctnode: error: {message}", err=True)
        return 2
    return result if isinstance(result, int) else 0


def guarded(run: Callable[[], Any]) -> Any:
    """*run*'s result, or the exit code of the ctnode error it raised (printed as one line on
    stderr, a ConfigError's problems below it). Typer's own exceptions pass through."""
    import logging

    import typer

    from ctnode.errors import ConfigError, CtnodeError

    try:
        return run()
    except ConfigError as exc:
        typer.echo(f"ctnode: error: {exc}", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        return exc.exit_code
    except CtnodeError as exc:
        typer.echo(f"ctnode: error: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:
        typer.echo(f"ctnode: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        logging.shutdown()


def resume_push(
    config: str | None,
    job_id: int,
    *,
    wait: bool,
    commit: bool,
    as_json: bool,
    extra: dict[str, object],
) -> int:
    """The end of ``ctnode push`` for a job the node submitted but stopped following (it is
    shutting down): follow it through the database, as the ordinary path does; the exit code."""
    import typer

    def run() -> int:
        from pathlib import Path

        from ctnode.cli.send import finish_push
        from ctnode.config import load_settings

        settings = load_settings(Path(config) if config is not None else None)
        try:
            finish_push(settings, job_id, wait=wait, commit=commit, as_json=as_json, extra=extra)
        except typer.Exit as exc:
            return int(exc.exit_code)
        return 0

    code = guarded(run)
    return int(code)
