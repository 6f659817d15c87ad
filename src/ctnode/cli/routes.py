"""Routes: ``routes list``, ``routes test`` (a dry run on files) and ``routes replay``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ctnode.cli.common import JsonOpt, emit_json, fail, print_table, settings_of
from ctnode.config import Settings


def _routes(settings: Settings) -> Any:
    """The validated route set (ConfigError lists every problem: exit 2)."""
    from ctnode.peers import load_peers
    from ctnode.routing.rules import load_routes

    return load_routes(settings.routes_dir, load_peers(settings.peers_dir, resolve=False))


def _describe_match(route: Any) -> str:
    match = route.config.match
    parts = []
    if match.calling_ae:
        parts.append("calling_ae=" + ",".join(match.calling_ae))
    if match.modality:
        parts.append("modality=" + ",".join(match.modality))
    if match.sop_class:
        parts.append("sop_class=" + ",".join(match.sop_class))
    for cond in route.tags:
        parts.append(f"{cond.key}=" + "|".join(cond.patterns))
    return " ".join(parts) or "(anything)"


def routes_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the routes: match, trigger, destinations and counters (matched, forwarded, failed)."""
    from ctnode.cli.data import _with_session
    from ctnode.routing.state import RouteCounters, route_counters

    settings = settings_of(ctx)
    routes = _routes(settings)
    counters = _with_session(settings, route_counters)

    rows = []
    for route in sorted(routes, key=lambda r: r.name):
        count = counters.get(route.name, RouteCounters())
        rows.append(
            {
                "name": route.name,
                "file": str(route.path),
                "enabled": route.config.enabled,
                "match": route.config.match.model_dump(mode="json"),
                "trigger": route.trigger,
                "stable_after": route.config.stable_after,
                "to": list(route.destinations),
                "commit": route.config.commit,
                "include_retrieved": route.config.include_retrieved,
                "counters": count.to_json(),
            }
        )
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["ROUTE", "ENABLED", "MATCH", "TRIGGER", "TO", "MATCHED", "FORWARDED", "FAILED"],
        [
            [
                r.name,
                "yes" if r.config.enabled else "no",
                _describe_match(r),
                r.trigger
                + ("" if r.trigger == "instance" else f" (stable {r.config.stable_after:g} s)"),
                ",".join(r.destinations) + (" +commit" if r.config.commit else ""),
                row["counters"]["matched"],
                row["counters"]["forwarded"],
                row["counters"]["failed"],
            ]
            for r, row in zip(sorted(routes, key=lambda r: r.name), rows, strict=True)
        ],
    )


def routes_test(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="DICOM files to evaluate.")],
    calling_ae: Annotated[
        str | None, typer.Option("--calling-ae", help="As if sent by this AE title.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: which routes each file matches, and for the others the first condition that
    failed and why. Exit 1 if a file cannot be read."""
    from ctnode.routing.replay import test_files

    settings = settings_of(ctx)
    results = test_files(files, _routes(settings), calling_ae)
    if as_json:
        emit_json([r.to_json() for r in results])
    else:
        for result in results:
            typer.echo(str(result.path))
            if result.error:
                typer.echo(f"  unreadable: {result.error}")
                continue
            if not result.verdicts:
                typer.echo("  no routes configured")
            for v in result.verdicts:
                if v.matched:
                    line = f"  {v.route}: matches -> {', '.join(v.destinations) or '(nobody)'}"
                    if v.skipped_senders:
                        line += f" (not back to its sender {', '.join(v.skipped_senders)})"
                else:
                    line = f"  {v.route}: no match: {v.reason}"
                typer.echo(line)
    if any(r.error for r in results):
        raise typer.Exit(1)


def routes_replay(
    ctx: typer.Context,
    route: Annotated[str, typer.Argument(help="Route name (file stem in routes_dir).")],
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Instances received since YYYYMMDD.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate stored instances with ROUTE again (e.g. after adding it): new matches and
    failed ones are forwarded by the running node once stable; what was delivered is skipped."""
    from ctnode.db.opening import open_database
    from ctnode.routing.replay import replay

    if (study is None) == (since is None):
        fail("give --study UID or --since YYYYMMDD (one of them)", 2)
    when = None
    if since is not None:
        try:
            when = datetime.strptime(since, "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            fail(f"--since {since!r} is not a date as YYYYMMDD", 2)
    settings = settings_of(ctx)
    routes = _routes(settings)
    target = routes.get(route)
    if not target.config.enabled:
        fail(f"route {route!r} is disabled (enabled: false in {target.path})", 2)
    engine = open_database(settings, migrate_sqlite=True)
    try:
        outcome = replay(
            engine,
            target,
            routes,
            settings.storage.store_dir,
            settings.node.name,
            study=study,
            since=when,
        )
    finally:
        engine.dispose()
    if as_json:
        emit_json(
            {
                "route": route,
                "examined": outcome.examined,
                "added": outcome.added,
                "retried": outcome.retried,
                "skipped": outcome.skipped,
                "unreadable": outcome.unreadable,
            }
        )
        return
    typer.echo(
        f"route {route}: {outcome.examined} instance(s) examined; {outcome.added} new and "
        f"{outcome.retried} failed match(es) to forward once stable; {outcome.skipped} already "
        f"delivered or waiting; {outcome.unreadable} unreadable"
    )
