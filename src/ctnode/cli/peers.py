"""Peers: ``peers list`` and ``peers check``."""

from __future__ import annotations

from typing import Annotated

import typer

from ctnode.cli.common import JsonOpt, emit_json, fail, print_table, settings_of


def peers_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the configured peers."""
    from ctnode.peers import load_peers

    settings = settings_of(ctx)
    registry = load_peers(settings.peers_dir)
    rows = [
        {
            "name": p.name,
            "ae_title": p.ae_title,
            "host": p.host,
            "port": p.port,
            "accept": [a.value for a in p.config.accept],
            "services": list(p.config.services),
            "max_associations": p.config.max_associations,
            "tls": p.config.tls.enabled,
            "addresses": sorted(p.addresses),
            "file": str(p.path),
        }
        for p in registry
    ]
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["NAME", "AE TITLE", "HOST", "PORT", "ACCEPT", "SERVICES"],
        [
            [
                r["name"],
                r["ae_title"],
                r["host"],
                r["port"],
                ",".join(r["accept"]),
                ",".join(r["services"]),
            ]
            for r in rows
        ],
    )


def peers_check(
    ctx: typer.Context,
    peer: Annotated[str | None, typer.Argument(help="One peer (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """C-ECHO each peer, propose every context ctnode would use, report what it refuses.

    Exits 1 when something the configuration relies on would fail.
    """
    from ctnode.peers import load_peers
    from ctnode.preflight import Preflight

    settings = settings_of(ctx)
    registry = load_peers(settings.peers_dir)
    targets = [registry.get(peer)] if peer else list(registry)
    if not targets:
        fail(f"no peers configured in {settings.peers_dir}", 2)
    preflight = Preflight(settings.node)
    reports = [preflight.check(p) for p in targets]
    if as_json:
        emit_json([r.to_json() for r in reports])
    else:
        width = max((len(c.name) for r in reports for c in r.checks), default=10)
        for report in reports:
            verdict = "OK" if report.ok else "PROBLEMS"
            typer.echo(f"{report.peer} ({report.ae_title}@{report.address}): {verdict}")
            for check in report.checks:
                mark = "ok  " if check.ok else ("FAIL" if check.required else "note")
                typer.echo(f"  {mark} {check.name:<{width}}  {check.detail}")
    if not all(r.ok for r in reports):
        raise typer.Exit(1)
