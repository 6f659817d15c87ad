"""The ``ctnode`` command line. Each command parses, calls one function, prints; exit codes:
0 ok, 1 runtime failure, 2 usage or configuration error. ``--json`` output is a contract.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ctnode import __version__
from ctnode.config import LoggingSettings, Settings, load_settings
from ctnode.errors import (
    AssociationAborted,
    AssociationRejected,
    ConfigError,
    CtnodeError,
    PeerUnreachable,
    PermanentError,
)
from ctnode.logs import configure_logging

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="ctnode: a durable DICOM node (C-ECHO, C-STORE, C-FIND, C-MOVE, storage commitment).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate the configuration.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema management.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable contract).")]


@dataclass
class State:
    """Options given before the command."""

    config: Path | None = None


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
    ctx.obj = State(config)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line and exit with *code*."""
    typer.echo(f"ctnode: error: {message}", err=True)
    raise typer.Exit(code)


def settings_of(ctx: typer.Context, *, quiet_logs: bool = True) -> Settings:
    """Load settings for a command (logs go to stderr at WARNING for short commands)."""
    state: State = ctx.obj or State()
    settings = load_settings(state.config)
    if quiet_logs:
        level = "DEBUG" if os.environ.get("CTNODE_DEBUG") else "WARNING"
        configure_logging(LoggingSettings(level=level, format=settings.logging.format))
    return settings


def emit_json(value: Any) -> None:
    """Print *value* as JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain aligned columns (use --json for scripts)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# ---------------------------------------------------------------- commands


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"ctnode {__version__}")


@app.command()
def run(ctx: typer.Context) -> None:
    """Run the node (SCP on node.port, job workers) until SIGTERM or SIGINT."""
    from ctnode import daemon

    settings = settings_of(ctx, quiet_logs=False)
    configure_logging(settings.logging)
    code = daemon.run(settings)
    raise typer.Exit(code)


@app.command()
def echo(
    ctx: typer.Context,
    peer: Annotated[str | None, typer.Argument(help="Peer name (file stem in peers_dir).")] = None,
    self_: Annotated[
        bool, typer.Option("--self", help="C-ECHO this node itself (health check).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a C-ECHO to a configured peer, or to this node with --self."""
    from ctnode.peers import load_peers
    from ctnode.scu.association import params_for
    from ctnode.scu.echo import ECHO_CONTEXTS, echo
    from ctnode.ul.requestor import AssociationParams, Timeouts

    settings = settings_of(ctx)
    if (peer is None) == (not self_):
        fail("give a PEER name or --self (not both)", 2)
    if self_:
        node = settings.node
        host = "::1" if ":" in node.bind and node.bind not in ("::", "0.0.0.0") else "127.0.0.1"  # noqa: S104
        params = AssociationParams(
            host=host,
            port=node.port,
            calling_ae=node.ae_title,
            called_ae=node.ae_title,
            contexts=ECHO_CONTEXTS,
            timeouts=Timeouts(connect=5, acse=10, dimse=10, network=10),
        )
        label = f"self ({node.ae_title}@{host}:{node.port})"
    else:
        assert peer is not None
        target = load_peers(settings.peers_dir).get(peer)
        params = params_for(target, settings.node, ECHO_CONTEXTS)
        label = f"{peer} ({target.ae_title}@{target.host}:{target.port})"
    try:
        ms = echo(params)
    except (PeerUnreachable, AssociationRejected, AssociationAborted, PermanentError) as exc:
        if as_json:
            emit_json({"peer": peer or "self", "ok": False, "error": str(exc)})
            raise typer.Exit(1) from None
        fail(str(exc))
    if as_json:
        emit_json({"peer": peer or "self", "ok": True, "round_trip_ms": round(ms, 1)})
    else:
        typer.echo(f"C-ECHO {label}: success in {ms:.1f} ms")


@config_app.command("check")
def config_check(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Validate the configuration and every peer file; list every problem (exit 2 if any)."""
    from ctnode.peers import load_peers

    state: State = ctx.obj or State()
    problems: list[str] = []
    warnings: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(state.config)
    except ConfigError as exc:
        problems.extend(exc.problems or [str(exc)])
    peers = 0
    if settings is not None:
        try:
            registry = load_peers(settings.peers_dir, required=not settings.is_embedded_default)
            peers = len(registry)
            warnings.extend(registry.warnings)
        except ConfigError as exc:
            problems.extend(exc.problems or [str(exc)])
        else:
            from ctnode.tls import configuration_problems

            problems.extend(configuration_problems(settings.node.tls, registry))
    source = str(settings.source_file) if settings and settings.source_file else "embedded default"
    if as_json:
        emit_json(
            {
                "ok": not problems,
                "source": source,
                "peers": peers,
                "problems": problems,
                "warnings": warnings,
            }
        )
    else:
        for line in warnings:
            typer.echo(f"warning: {line}", err=True)
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        if not problems:
            assert settings is not None
            typer.echo(
                f"configuration OK ({source}): AE {settings.node.ae_title} on "
                f"{settings.node.bind}:{settings.node.port}, {peers} peer(s) from "
                f"{settings.peers_dir}"
            )
    if problems:
        raise typer.Exit(2)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply database migrations up to the current version."""
    from ctnode.db import migrate
    from ctnode.db.engine import create_db_engine

    settings = settings_of(ctx)
    engine = create_db_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
    try:
        before = migrate.current_revision(engine)
        migrate.upgrade(engine)
        after = migrate.current_revision(engine)
    except Exception as exc:
        fail(
            f"migration failed on {engine.url.render_as_string(hide_password=True)}: "
            f"{str(exc).splitlines()[0]}"
        )
    finally:
        engine.dispose()
    typer.echo(f"database at revision {after} (was {before})")


def _with_session(settings: Settings, work: Callable[[Any], T]) -> T:
    from ctnode.daemon import open_database
    from ctnode.db.engine import session_factory

    engine = open_database(settings, migrate_sqlite=True)
    try:
        with session_factory(engine)() as session:
            return work(session)
    finally:
        engine.dispose()


@app.command()
def studies(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the studies in the local store."""
    from ctnode.index import list_studies

    settings = settings_of(ctx)
    found = _with_session(settings, list_studies)
    if as_json:
        emit_json([s.to_json() for s in found])
        return
    print_table(
        ["STUDY INSTANCE UID", "PATIENT ID", "DATE", "MODALITIES", "SERIES", "INSTANCES"],
        [
            [
                s.study_instance_uid,
                s.patient_id,
                s.study_date,
                ",".join(s.modalities),
                s.series,
                s.instances,
            ]
            for s in found
        ],
    )


@app.command()
def instances(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Series Instance UID.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the instances of a study (or series) in the local store."""
    from ctnode.index import instance_json, list_instances

    if study is None and series is None:
        fail("give --study UID or --series UID", 2)
    settings = settings_of(ctx)
    rows = _with_session(
        settings,
        lambda s: [instance_json(r) for r in list_instances(s, study=study, series=series)],
    )
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["SOP INSTANCE UID", "MODALITY", "SERIES", "NUMBER", "BYTES", "RECEIVED"],
        [
            [
                r["sop_instance_uid"],
                r["modality"],
                r["series_number"],
                r["instance_number"],
                r["size_bytes"],
                r["received_at"],
            ]
            for r in rows
        ],
    )


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (errors are one line on stderr)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="ctnode", standalone_mode=False)
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
