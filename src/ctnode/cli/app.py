"""The ``ctnode`` command line as a Typer app: the commands (one module per group: ``node``,
``data``, ``send``, ``peers``, ``jobs``, ``routes``, ``commitments``) wired in the order
``ctnode --help`` lists them, and the options given before the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctnode.cli import commitments, data, jobs, node, peers, routes, send
from ctnode.cli.common import State

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
