"""The node itself: ``version``, ``run``, ``echo``, ``status``, ``config check``, ``db upgrade``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctnode import __version__
from ctnode.cli.common import (
    JsonOpt,
    emit_json,
    fail,
    notice,
    open_repo,
    settings_of,
    state_of,
)
from ctnode.config import Settings, load_settings
from ctnode.errors import (
    AssociationAborted,
    AssociationRejected,
    ConfigError,
    PeerUnreachable,
    PermanentError,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ctnode.storage.backfill import BackfillReport


def version() -> None:
    """Print the version."""
    typer.echo(f"ctnode {__version__}")


def run(ctx: typer.Context) -> None:
    """Run the node (SCP on node.port, job workers) until SIGTERM or SIGINT."""
    state_of(ctx).quick_exit = False  # the node shuts down in order; let the interpreter finish
    from ctnode import daemon
    from ctnode.logs import configure_logging

    settings = settings_of(ctx, quiet_logs=False)
    configure_logging(settings.logging)
    code = daemon.run(settings)
    raise typer.Exit(code)


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


def config_check(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Validate the configuration, every peer file and every route file; list every problem
    (exit 2 if any)."""
    from ctnode.peers import load_peers

    problems: list[str] = []
    warnings: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(state_of(ctx).config)
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
            from ctnode.routing.rules import load_routes
            from ctnode.tls import configuration_problems

            problems.extend(configuration_problems(settings.node.tls, registry))
            try:
                load_routes(settings.routes_dir, registry)
            except ConfigError as exc:
                problems.extend(exc.problems or [str(exc)])
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


def db_upgrade(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Apply database migrations up to the current version, then fill the index columns of
    instances stored before them from their files (Ctrl-C stops it; run again to continue)."""
    from ctnode.db import migrate
    from ctnode.db.engine import create_db_engine

    settings = settings_of(ctx)
    engine = create_db_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
    try:
        try:
            before = migrate.current_revision(engine)
            migrate.upgrade(engine)
            after = migrate.current_revision(engine)
        except Exception as exc:
            fail(
                f"migration failed on {engine.url.render_as_string(hide_password=True)}: "
                f"{str(exc).splitlines()[0]}"
            )
        if not as_json:
            typer.echo(f"database at revision {after} (was {before})")
        report = _backfill_index(settings, engine, quiet=as_json)
    finally:
        engine.dispose()
    if as_json:
        emit_json({"revision": after, "was": before, "backfill": report})


def _backfill_index(settings: Settings, engine: Engine, *, quiet: bool) -> dict[str, Any]:
    """Fill the rows stored before the current index version (``storage.backfill``), with a
    progress bar on a terminal; exit 130 with what is left on Ctrl-C."""
    import sys

    from ctnode.storage.backfill import Backfill

    backfill = Backfill(
        engine,
        settings.storage.store_dir,
        settings.node.name,
        shared=settings.storage.shared,
    )
    report = backfill.report
    try:
        pending = backfill.count()
        if pending and not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            with Progress(
                TextColumn("back-filling the index"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as bar:
                task = bar.add_task("backfill", total=pending)

                def advance(done: BackfillReport) -> None:
                    bar.update(task, completed=done.filled + done.missing + done.unreadable)

                backfill.run(on_batch=advance)
        elif pending:
            backfill.run()
    except KeyboardInterrupt:
        notice(
            f"index back-fill interrupted: {report.filled} of {report.pending} rows "
            "back-filled; run `ctnode db upgrade` again to continue"
        )
        raise typer.Exit(130) from None
    if not quiet:
        _print_backfill(report)
    return report.to_json()


def _print_backfill(report: BackfillReport) -> None:
    if report.pending:
        typer.echo(f"index back-filled: {report.filled} of {report.pending} rows from their files")
    for problem in report.problems:
        notice(f"warning: {problem}")
    if report.missing or report.unreadable:
        notice(
            f"warning: {report.missing} file(s) missing and {report.unreadable} unreadable: "
            "those rows keep their old index values (run again once the files are back)"
        )
    if report.other_nodes:
        typer.echo(
            f"{report.other_nodes} row(s) of other nodes left to them: run "
            "`ctnode db upgrade` on each node"
        )


def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Is the node up? Queue by state, jobs failed in the last 24 h and why.

    Exits 1 when no running node is seen (or its /readyz says not ready).
    """
    import urllib.error
    import urllib.request

    settings = settings_of(ctx)
    repo = open_repo(settings)
    nodes = repo.nodes()
    alive = [n for n in nodes if n["alive"]]
    ready: dict[str, Any] | None = None
    query_retrieve: dict[str, Any] | None = None
    if settings.metrics.enabled:
        host = "127.0.0.1" if settings.metrics.bind in ("0.0.0.0", "") else settings.metrics.bind  # noqa: S104
        port = settings.metrics.port
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as rsp:
                ready = json.loads(rsp.read())
        except urllib.error.HTTPError as exc:
            ready = json.loads(exc.read() or b"{}")
        except (OSError, ValueError) as exc:
            ready = {"ready": False, "error": str(exc)}
        query_retrieve = _qr_figures(host, port)
    from ctnode.queue.commit_rounds import CommitmentRepository

    summary = repo.summary()
    failed = repo.failed_since(24)
    commitments = CommitmentRepository(repo).counts()
    up = bool(alive) and (ready is None or bool(ready.get("ready")))
    report = {
        "up": up,
        "nodes": nodes,
        "ready": ready,
        "queue": summary.by_state,
        "oldest_queued_age_seconds": summary.oldest_queued_age,
        "commitments": commitments,
        "query_retrieve": query_retrieve,
        "failed_last_24h": [
            {
                "id": j.id,
                "kind": j.kind.value,
                "peer": j.peer,
                "finished_at": j.to_json()["finished_at"],
                "last_error": j.last_error,
            }
            for j in failed
        ],
    }
    if as_json:
        emit_json(report)
    else:
        if alive:
            names = ", ".join(f"{n['name']} (pid {n['pid']})" for n in alive)
            typer.echo(f"node: up — {names}")
        else:
            typer.echo("node: DOWN — no `ctnode run` heartbeat in the last 30 s")
        if ready is not None:
            state = "ready" if ready.get("ready") else "NOT READY"
            typer.echo(f"readiness: {state}")
            for name, check in (ready.get("checks") or {}).items():
                typer.echo(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {check['detail']}")
        queue = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_state.items())) or "empty"
        typer.echo(f"queue: {queue}")
        if summary.oldest_queued_age is not None:
            typer.echo(f"oldest queued job: {summary.oldest_queued_age:.0f} s")
        typer.echo(
            "storage commitment: "
            + ", ".join(
                f"{count} {state.replace('_', ' ')}" for state, count in commitments.items()
            )
        )
        for line in _qr_lines(query_retrieve, metrics_enabled=settings.metrics.enabled):
            typer.echo(line)
        typer.echo(f"failed in the last 24 h: {len(failed)}")
        for job in failed:
            typer.echo(f"  job {job.id} {job.kind.value} to {job.peer}: {job.last_error}")
    if not up:
        raise typer.Exit(1)


def _qr_figures(host: str, port: int) -> dict[str, Any] | None:
    """The Q/R SCP's figures since the node started, from its ``/metrics`` (None if that
    does not answer)."""
    import urllib.request

    from ctnode.metrics import qr_figures

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as rsp:
            return dict(qr_figures(rsp.read().decode("utf-8", "replace")))
    except (OSError, ValueError):
        return None


_SERVICES = (("find", "C-FIND"), ("move", "C-MOVE"), ("get", "C-GET"))


def _qr_lines(figures: dict[str, Any] | None, *, metrics_enabled: bool) -> list[str]:
    """``ctnode status`` lines of the Q/R SCP: requests by service (those not answered
    0x0000 or 0xFE00 counted apart), sub-operations by status group, requests by peer."""
    if figures is None:
        why = "/metrics did not answer" if metrics_enabled else "needs metrics.enabled"
        return [f"query/retrieve: figures unavailable ({why})"]
    parts = []
    for service, name in _SERVICES:
        statuses: dict[str, int] = figures["requests"].get(service, {})
        total = sum(statuses.values())
        unsuccessful = total - statuses.get("0x0000", 0) - statuses.get("0xFE00", 0)
        apart = f" ({unsuccessful} not successful)" if unsuccessful else ""
        parts.append(f"{total} {name}{apart}")
    lines = ["query/retrieve since start: " + ", ".join(parts)]
    for service, name in _SERVICES[1:]:
        groups: dict[str, int] = figures["suboperations"].get(service, {})
        if groups:
            counts = ", ".join(f"{count} {group}" for group, count in sorted(groups.items()))
            lines.append(f"  {name} sub-operations: {counts}")
    for peer, services in sorted(figures["by_peer"].items()):
        counts = ", ".join(
            f"{services[service]} {name}" for service, name in _SERVICES if service in services
        )
        lines.append(f"  {peer}: {counts}")
    return lines
