"""The node itself: ``version``, ``run``, ``echo``, ``status``, ``config check``, ``db upgrade``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ctnode import __version__
from ctnode.cli.common import JsonOpt, emit_json, fail, open_repo, settings_of, state_of
from ctnode.config import Settings, load_settings
from ctnode.errors import (
    AssociationAborted,
    AssociationRejected,
    ConfigError,
    PeerUnreachable,
    PermanentError,
)


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
    if settings.metrics.enabled:
        host = "127.0.0.1" if settings.metrics.bind in ("0.0.0.0", "") else settings.metrics.bind  # noqa: S104
        try:
            with urllib.request.urlopen(
                f"http://{host}:{settings.metrics.port}/readyz", timeout=5
            ) as rsp:
                ready = json.loads(rsp.read())
        except urllib.error.HTTPError as exc:
            ready = json.loads(exc.read() or b"{}")
        except (OSError, ValueError) as exc:
            ready = {"ready": False, "error": str(exc)}
    from ctnode.queue.commitment import CommitmentRepository

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
        typer.echo(f"failed in the last 24 h: {len(failed)}")
        for job in failed:
            typer.echo(f"  job {job.id} {job.kind.value} to {job.peer}: {job.last_error}")
    if not up:
        raise typer.Exit(1)
