"""The ``ctnode`` command line. Each command parses, calls one function, prints; exit codes:
0 ok, 1 runtime failure, 2 usage or configuration error. ``--json`` output is a contract.

This module wires the commands (one module per group: ``node``, ``data``, ``send``, ``peers``,
``jobs``, ``routes``) into the Typer app, in the order ``ctnode --help`` lists them, and holds
the entry point. The console script is ``ctnode.cli:entry``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ctnode.cli import commitments, data, jobs, node, peers, routes, send
from ctnode.cli.common import State
from ctnode.errors import ConfigError, CtnodeError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="ctnode: a durable DICOM node (C-ECHO, C-STORE, C-FIND, C-MOVE, storage commitment).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate the configuration.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema management.")
peers_app = typer.Typer(no_args_is_help=True, help="List peers and check them before use.")
jobs_app = typer.Typer(no_args_is_help=True, help="List, inspect, retry and cancel jobs.")
routes_app = typer.Typer(no_args_is_help=True, help="Routes: list, dry-run on files, replay.")
commitments_app = typer.Typer(
    invoke_without_command=True, help="Storage commitment requests peers sent us."
)

app.command()(node.version)
app.command()(node.run)
app.command()(node.echo)
app.command()(data.studies)
app.command()(data.instances)
app.command()(send.push)
app.command()(send.commit)
app.command()(node.status)
app.command()(send.query)
app.command()(send.move)
config_app.command("check")(node.config_check)
db_app.command("upgrade")(node.db_upgrade)
peers_app.command("list")(peers.peers_list)
peers_app.command("check")(peers.peers_check)
jobs_app.command("list")(jobs.jobs_list)
jobs_app.command("show")(jobs.jobs_show)
jobs_app.command("retry")(jobs.jobs_retry)
jobs_app.command("cancel")(jobs.jobs_cancel)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(peers_app, name="peers")
app.add_typer(jobs_app, name="jobs")
routes_app.command("list")(routes.routes_list)
routes_app.command("test")(routes.routes_test)
routes_app.command("replay")(routes.routes_replay)
app.add_typer(routes_app, name="routes")
commitments_app.callback()(commitments.commitments_list)
commitments_app.command("show")(commitments.commitments_show)
app.add_typer(commitments_app, name="commitments")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Configuration file (default: $CTNODE_CONFIG, else the embedded default).",
        ),
    ] = None,
) -> None:
    ctx.ensure_object(State).config = config


def entry() -> NoReturn:
    """The ``ctnode`` program: ``main``, then exit.

    A short command has nothing left to do once ``main`` returns: its output is flushed, its
    database writes are committed, logging is shut down. Tearing down the interpreter (freeing
    every module of SQLAlchemy, pydantic...) would add a good tenth of a second to every
    command, so the process ends at once — except for ``run``, which exits normally.
    """
    state = State()
    code = main(state=state)
    if state.quick_exit:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None, *, state: State | None = None) -> int:
    """Run the CLI; returns the exit code (errors are one line on stderr). *state* receives
    the options given before the command and how the process may end."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="ctnode", standalone_mode=False, obj=state or State())
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
    return int(result) if isinstance(result, int) else 0
