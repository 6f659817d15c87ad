"""The ``ctnode`` command line. Each command parses, calls one function, prints; exit codes:
0 ok, 1 runtime failure, 2 usage or configuration error. ``--json`` output is a contract.
"""

from __future__ import annotations

import contextlib
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
from ctnode import config as config_module
from ctnode.config import LoggingSettings, Settings, load_settings
from ctnode.errors import (
    AssociationAborted,
    AssociationRejected,
    ConfigError,
    CtnodeError,
    PeerUnreachable,
    PermanentError,
)

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
PeerArg = Annotated[str, typer.Argument(help="Peer name (file stem in peers_dir).")]
PathsArg = Annotated[list[Path] | None, typer.Argument(help="Files or directories (recursive).")]
StudyOpt = Annotated[str | None, typer.Option("--study", help="A study from the local store.")]
SeriesOpt = Annotated[str | None, typer.Option("--series", help="A series from the local store.")]
PriorityOpt = Annotated[int, typer.Option(help="Higher runs first.")]
IdempotencyOpt = Annotated[
    str | None, typer.Option("--idempotency-key", help="Submit at most once per key.")
]


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
        quiet = LoggingSettings(level=level, format=settings.logging.format)
        if "ctnode.logs" in sys.modules:
            from ctnode.logs import configure_logging

            configure_logging(quiet)
        else:
            # structlog (with rich) takes a tenth of a second to import, and most commands
            # never log: ctnode.logs applies this when (if) a module that logs is imported.
            config_module.deferred_logging = quiet
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
    global _quick_exit
    _quick_exit = False  # the node shuts down in order; let the interpreter finish normally
    from ctnode import daemon
    from ctnode.logs import configure_logging

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
    from ctnode.db.engine import session_factory
    from ctnode.db.opening import open_database

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
    deleted: Annotated[
        bool,
        typer.Option("--deleted", help="Also list instances removed after storage commitment."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the instances of a study (or series) in the local store, with the peers that
    committed each one (storage commitment)."""
    from ctnode.index import commitments_of, instance_json, list_instances

    if study is None and series is None:
        fail("give --study UID or --series UID", 2)
    settings = settings_of(ctx)

    def work(session: Any) -> list[dict[str, Any]]:
        found = list_instances(session, study=study, series=series, include_deleted=deleted)
        commits = commitments_of(session, [r.sop_instance_uid for r in found])
        return [instance_json(r, commits.get(r.sop_instance_uid)) for r in found]

    rows = _with_session(settings, work)
    if as_json:
        emit_json(rows)
        return
    headers = ["SOP INSTANCE UID", "MODALITY", "SERIES", "NUMBER", "BYTES", "RECEIVED"]
    print_table(
        [*headers, "COMMITTED BY", *(["DELETED"] if deleted else [])],
        [
            [
                r["sop_instance_uid"],
                r["modality"],
                r["series_number"],
                r["instance_number"],
                r["size_bytes"],
                r["received_at"],
                ",".join(c["peer"] for c in r["committed_by"]),
                *([r["deleted_at"] or ""] if deleted else []),
            ]
            for r in rows
        ],
    )


# ---------------------------------------------------------------- peers

peers_app = typer.Typer(no_args_is_help=True, help="List peers and check them before use.")
app.add_typer(peers_app, name="peers")


@peers_app.command("list")
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


@peers_app.command("check")
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


# ---------------------------------------------------------------- jobs

jobs_app = typer.Typer(no_args_is_help=True, help="List, inspect, retry and cancel jobs.")
app.add_typer(jobs_app, name="jobs")


def open_repo(settings: Settings) -> Any:
    """A JobRepository on the configured database (migrated when it is SQLite)."""
    from ctnode.db.opening import open_database
    from ctnode.queue.repository import JobRepository

    engine = open_database(settings, migrate_sqlite=True)
    return JobRepository(engine, lease_seconds=settings.queue.lease_seconds)


def wake_address(settings: Settings) -> Any:
    """The local node's wake channel (see ``ctnode.queue.wakeup``)."""
    from ctnode.queue.wakeup import wake_address as address

    return address(settings.storage.run_dir)


def wake_node(settings: Settings, job_id: int) -> None:
    """Tell the local node (if it runs) that *job_id* was just committed: it starts now
    instead of at its next poll. Silent when nobody listens."""
    from ctnode.queue.wakeup import poke

    poke(wake_address(settings), job_id)


def finish_job_command(
    settings: Settings,
    repo: Any,
    job_id: int,
    *,
    wait: bool,
    as_json: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print the job id (or JSON); with *wait*, follow it and exit 0 only if it succeeded.
    The node is woken either way (following wakes it too)."""
    from ctnode.follow import describe, follow
    from ctnode.queue.jobs import JobState

    if wait:
        job = follow(repo, job_id, wake=wake_address(settings))
    else:
        wake_node(settings, job_id)
        job = repo.get(job_id)
    if as_json:
        emit_json({**job.to_json(), **(extra or {})})
    elif wait:
        typer.echo(describe(job))
    else:
        typer.echo(job.id)
    if wait and job.state is not JobState.SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def push(
    ctx: typer.Context,
    peer: PeerArg,
    paths: PathsArg = None,
    study: StudyOpt = None,
    series: SeriesOpt = None,
    priority: PriorityOpt = 0,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job; exit 0 only if all delivered.")
    ] = False,
    idempotency_key: IdempotencyOpt = None,
    commit_after: Annotated[
        bool,
        typer.Option(
            "--commit",
            help="Once delivered, request storage commitment of exactly those instances "
            "(with --wait, also wait until they are committed).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue a C-STORE of files, directories or a local study/series to PEER; prints the job id."""
    from ctnode.peers import load_peers
    from ctnode.queue.jobs import JobKind, NewItem
    from ctnode.queue.retry import RetryPolicy
    from ctnode.scu.files import collect_files

    settings = settings_of(ctx)
    target = load_peers(settings.peers_dir).get(peer)
    if "store" not in target.config.services:
        fail(f"peer {peer!r} does not allow store (services in {target.path})", 2)
    if commit_after:
        check_commit_peer(target)
    if bool(paths) == bool(study or series):
        fail("give PATH... or --study/--series (not both)", 2)
    repo = open_repo(settings)
    skipped: list[dict[str, str]] = []
    node_name: str | None = settings.node.name
    if paths:
        items, skips = collect_files(paths)
        for skip in skips:
            typer.echo(f"ctnode: skipped {skip.path}: {skip.reason}", err=True)
        skipped = [{"path": s.path, "reason": s.reason} for s in skips]
        source: dict[str, Any] = {"source": "files", "paths": [str(p) for p in paths][:100]}
    else:
        from ctnode.index import list_instances

        with repo.sessions() as session:
            rows = list_instances(session, study=study, series=series)
        root = settings.storage.store_dir.absolute()
        items = [
            NewItem(r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid, str(root / r.path))
            for r in rows
        ]
        source = {"source": "store", "study": study, "series": series}
        if settings.storage.shared:
            node_name = None
    if not items:
        fail(
            "nothing to push: no DICOM files found"
            if paths
            else "nothing to push: no such study/series in the local store (see `ctnode studies`)",
            2,
        )
    policy = RetryPolicy.from_settings(target.config.retry or settings.queue.retry)
    if commit_after:
        source = {**source, "commit": True}
    job, created = repo.submit(
        JobKind.PUSH,
        peer,
        source,
        items,
        policy=policy,
        priority=priority,
        node_name=node_name,
        idempotency_key=idempotency_key,
    )
    if not created:
        typer.echo(f"ctnode: job {job.id} already exists for this idempotency key", err=True)
    if commit_after and wait:
        finish_push_and_commit(settings, repo, job.id, as_json=as_json, extra={"skipped": skipped})
        return
    finish_job_command(
        settings, repo, job.id, wait=wait, as_json=as_json, extra={"skipped": skipped}
    )


# ---------------------------------------------------------------- storage commitment


def check_commit_peer(target: Any) -> None:
    """Usage error unless ctnode may ask *target* for commitment; warn if its reports on a new
    association would be refused."""
    if "commit" not in target.config.services:
        fail(f"peer {target.name!r} does not allow commit (services in {target.path})", 2)
    if "commitment_report" not in target.config.accept:
        typer.echo(
            f"ctnode: warning: peer {target.name!r} may not send commitment reports to us: add "
            f"commitment_report to accept in {target.path} (only reports on the N-ACTION's own "
            "association can arrive)",
            err=True,
        )


def finish_push_and_commit(
    settings: Settings, repo: Any, push_id: int, *, as_json: bool, extra: dict[str, Any]
) -> None:
    """``push --commit --wait``: follow the push, then its commit job; exit 0 only if every
    instance was delivered and committed."""
    from ctnode.follow import describe, follow
    from ctnode.queue.jobs import JobState

    wake = wake_address(settings)
    pushed = follow(repo, push_id, wake=wake)
    commit_id = (pushed.result or {}).get("commit_job")
    committed = follow(repo, int(commit_id), wake=wake) if commit_id is not None else None
    if as_json:
        emit_json(
            {**pushed.to_json(), **extra, "commit": committed.to_json() if committed else None}
        )
    else:
        typer.echo(describe(pushed))
        if committed is not None:
            typer.echo(describe(committed))
    if committed is None or committed.state is not JobState.SUCCEEDED:
        raise typer.Exit(1)


def print_commitment(section: dict[str, Any]) -> None:
    """The per-instance commitment states of ``jobs show`` (text)."""
    instances = section["instances"]
    counts: dict[str, int] = {}
    for item in instances:
        counts[item["state"]] = counts.get(item["state"], 0) + 1
    typer.echo(
        f"{'commitment:':<14}"
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("committed", "failed", "pending"))
        + f" ({len(section['transactions'])} transaction(s))"
    )
    for tx in section["transactions"]:
        typer.echo(f"  transaction {tx['transaction_uid']}  {tx['state']}")
    for item in instances[:50]:
        reason = " ".join(x for x in (item["status"], item["error"]) if x and x != "0x0000")
        typer.echo(f"  {item['sop_instance_uid']}  {item['state']}  {reason}".rstrip())
    if len(instances) > 50:
        typer.echo(f"  ... and {len(instances) - 50} more (use --json)")


@app.command()
def commit(
    ctx: typer.Context,
    peer: PeerArg,
    paths: PathsArg = None,
    study: StudyOpt = None,
    series: SeriesOpt = None,
    job: Annotated[
        int | None,
        typer.Option("--job", help="Exactly the instances this push job delivered."),
    ] = None,
    priority: PriorityOpt = 0,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job; exit 0 only if all are committed.")
    ] = False,
    idempotency_key: IdempotencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a storage commitment request to PEER (N-ACTION, then wait for the report);
    prints the job id."""
    from ctnode.peers import load_peers
    from ctnode.queue.jobs import JobKind
    from ctnode.scu.commit import commit_policy, items_from_push_job, items_from_store
    from ctnode.scu.files import collect_files

    settings = settings_of(ctx)
    target = load_peers(settings.peers_dir).get(peer)
    check_commit_peer(target)
    if sum(1 for given in (bool(paths), bool(study or series), job is not None) if given) != 1:
        fail("give one of PATH..., --study/--series, or --job PUSH_JOB_ID", 2)
    repo = open_repo(settings)
    node_name: str | None = settings.node.name
    if paths:
        items, skips = collect_files(paths)
        for skip in skips:
            typer.echo(f"ctnode: skipped {skip.path}: {skip.reason}", err=True)
        source: dict[str, Any] = {"source": "files", "paths": [str(p) for p in paths][:100]}
    elif job is not None:
        push_job, items = items_from_push_job(repo, job, peer)
        node_name = push_job.node_name
        source = {"source": "push", "push_job": job}
    else:
        with repo.sessions() as session:
            items = items_from_store(
                session, settings.storage.store_dir, study=study, series=series
            )
        source = {"source": "store", "study": study, "series": series}
        if settings.storage.shared:
            node_name = None
    if not items:
        fail(
            "nothing to commit: "
            + (
                "no DICOM files found"
                if paths
                else f"job {job} delivered no instance"
                if job is not None
                else "no such study/series in the local store (see `ctnode studies`)"
            ),
            2,
        )
    created_job, created = repo.submit(
        JobKind.COMMIT,
        peer,
        source,
        items,
        policy=commit_policy(settings, target),
        priority=priority,
        node_name=node_name,
        idempotency_key=idempotency_key,
    )
    if not created:
        typer.echo(
            f"ctnode: job {created_job.id} already exists for this idempotency key", err=True
        )
    finish_job_command(settings, repo, created_job.id, wait=wait, as_json=as_json)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="queued, running, waiting, succeeded, failed, cancelled")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="push, query, move, commit")] = None,
    peer: Annotated[str | None, typer.Option(help="Peer name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    from ctnode.queue.jobs import JobKind, JobState

    try:
        states = [JobState(state)] if state else None
        kinds = JobKind(kind) if kind else None
    except ValueError as exc:
        fail(str(exc), 2)
    settings = settings_of(ctx)
    jobs = open_repo(settings).list_jobs(states=states, kind=kinds, peer=peer, limit=limit)
    if as_json:
        emit_json([j.to_json() for j in jobs])
        return
    print_table(
        ["ID", "KIND", "PEER", "STATE", "ATTEMPTS", "ITEMS", "CREATED", "LAST ERROR"],
        [
            [
                j.id,
                j.kind.value,
                j.peer,
                j.state.value,
                f"{j.attempts}/{j.max_attempts}",
                f"{j.items.delivered}/{j.items.total}" if j.items.total else "",
                j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                (j.last_error or "")[:60],
            ]
            for j in jobs
        ],
    )


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a job: state, counts, failed items with reasons, and its event trail."""
    from ctnode.queue.report import job_report

    settings = settings_of(ctx)
    report = job_report(open_repo(settings), job_id)
    if as_json:
        emit_json(report)
        return
    for key in (
        "id",
        "kind",
        "peer",
        "state",
        "priority",
        "attempts",
        "max_attempts",
        "created_at",
        "started_at",
        "finished_at",
        "not_before",
        "last_status",
        "last_error",
    ):
        typer.echo(f"{key + ':':<14}{'' if report[key] is None else report[key]}")
    if report["items"]["total"]:
        typer.echo(f"{'items:':<14}" + ", ".join(f"{k} {v}" for k, v in report["items"].items()))
    if report["progress"]:
        typer.echo(
            f"{'progress:':<14}" + ", ".join(f"{k} {v}" for k, v in report["progress"].items())
        )
    if "commitment" in report:
        print_commitment(report["commitment"])
    failed = report["failed_items"]
    if failed:
        typer.echo("failed items:")
        for item in failed[:50]:
            typer.echo(f"  {item['sop_instance_uid']}  {item['status'] or ''}  {item['error']}")
        if len(failed) > 50:
            typer.echo(f"  ... and {len(failed) - 50} more (use --json)")
    typer.echo("events:")
    for e in report["events"]:
        extra = " ".join(
            x
            for x in (
                f"attempt {e['attempt']}" if e["attempt"] else "",
                e["status"] or "",
                e["message"] or "",
            )
            if x
        )
        typer.echo(f"  {e['at']}  {e['event']:<16} {extra}")


@jobs_app.command("retry")
def jobs_retry(ctx: typer.Context, job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Run a failed or cancelled job again (failed items only)."""
    settings = settings_of(ctx)
    repo = open_repo(settings)
    job = repo.retry(job_id)
    wake_node(settings, job.id)
    typer.echo(f"job {job.id} queued again ({job.items.pending} item(s) pending)")


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job (a running one stops at the next instance)."""
    from ctnode.queue.jobs import JobState

    repo = open_repo(settings_of(ctx))
    job = repo.cancel(job_id)
    if job.state is JobState.CANCELLED:
        typer.echo(f"job {job.id} cancelled")
    elif job.cancel_requested:
        typer.echo(f"job {job.id} is running; it stops at the next instance")
    else:
        fail(f"job {job.id} is already {job.state.value}")


@app.command()
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


# ---------------------------------------------------------------- query / retrieve (C-FIND, C-MOVE)

KeysOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-k",
        "--key",
        help="Keyword=value or gggg,eeee=value (a matching key), or Keyword alone (a return "
        "key), as in DCMTK findscu. Repeatable.",
    ),
]


@app.command()
def query(
    ctx: typer.Context,
    peer: PeerArg,
    keys: KeysOpt = None,
    level: Annotated[
        str | None, typer.Option("--level", help="STUDY (default), SERIES or IMAGE.")
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", min=1, max=100000, help="At most this many matches (then C-CANCEL)."
        ),
    ] = 1000,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Wait for the matches (default) or print the job id."
        ),
    ] = True,
    priority: PriorityOpt = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the matches as an array of DICOM JSON objects.")
    ] = False,
) -> None:
    """Find studies, series or instances on PEER (Study Root C-FIND), run as a job."""
    from ctnode.follow import follow
    from ctnode.peers import load_peers
    from ctnode.queue.jobs import JobKind, JobState
    from ctnode.queue.retry import RetryPolicy
    from ctnode.scu.query import build_keys, query_payload, table

    settings = settings_of(ctx)
    target = load_peers(settings.peers_dir).get(peer)
    if "find" not in target.config.services:
        fail(f"peer {peer!r} does not allow find (services in {target.path})", 2)
    final_level, query_keys = build_keys(level, keys or [])
    repo = open_repo(settings)
    policy = RetryPolicy.from_settings(target.config.retry or settings.queue.retry)
    job, _ = repo.submit(
        JobKind.QUERY,
        peer,
        query_payload(final_level, query_keys, limit),
        policy=policy,
        priority=priority,
    )
    if not wait:
        wake_node(settings, job.id)
        if as_json:
            emit_json(job.to_json())
        else:
            typer.echo(job.id)
        return
    job = follow(repo, job.id, wake=wake_address(settings))
    if job.state is not JobState.SUCCEEDED:
        fail(f"job {job.id} {job.state.value}: {job.last_error or 'no result'}")
    result = job.result or {}
    matches = result.get("matches") or []
    if as_json:
        emit_json(matches)
    else:
        headers, rows = table(final_level, query_keys, matches)
        print_table(headers, rows)
    if result.get("truncated"):
        typer.echo(
            f"ctnode: showing the first {len(matches)} matches (--limit {limit}); {peer} has more",
            err=True,
        )


@app.command()
def move(
    ctx: typer.Context,
    peer: PeerArg,
    keys: KeysOpt = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Series Instance UID.")] = None,
    dest: Annotated[
        str | None,
        typer.Option("--dest", help="Move destination AE title (default: this node)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job; exit 0 only if it succeeded.")
    ] = False,
    priority: PriorityOpt = 0,
    idempotency_key: IdempotencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve a study or series from PEER (Study Root C-MOVE) to this node or to --dest."""
    from ctnode.dicom.contexts import Service
    from ctnode.follow import describe, follow
    from ctnode.peers import load_peers
    from ctnode.queue.jobs import JobKind, JobState
    from ctnode.queue.retry import RetryPolicy
    from ctnode.scu.move import request_from_cli

    request = request_from_cli(keys or [], study, series, dest)
    settings = settings_of(ctx)
    target = load_peers(settings.peers_dir).get(peer)
    if "move" not in target.config.services:
        fail(f"peer {peer!r} does not allow move (services in {target.path})", 2)
    to_self = request.destination in (None, settings.node.ae_title)
    if (
        to_self
        and not settings.node.accept_unknown_callers
        and Service.STORE not in target.config.accept
    ):
        fail(
            f"peer {peer!r} may not store to this node, so it cannot deliver a move here: "
            f"add store to accept in {target.path}",
            2,
        )
    repo = open_repo(settings)
    policy = RetryPolicy.from_settings(target.config.retry or settings.queue.retry)
    job, created = repo.submit(
        JobKind.MOVE,
        peer,
        request.to_payload(),
        policy=policy,
        priority=priority,
        # Arrivals are tracked by the process that runs the move: keep it on this node.
        node_name=settings.node.name if to_self else None,
        idempotency_key=idempotency_key,
    )
    if not created:
        typer.echo(f"ctnode: job {job.id} already exists for this idempotency key", err=True)
    else:
        wake_node(settings, job.id)
    if wait:
        job = follow(repo, job.id, wake=wake_address(settings))
        mismatch = (job.result or {}).get("arrival_mismatch")
        if isinstance(mismatch, dict) and mismatch.get("message"):
            typer.echo(f"ctnode: warning: {mismatch['message']}", err=True)
    if as_json:
        emit_json(job.to_json())
    elif wait:
        typer.echo(describe(job))
    else:
        typer.echo(job.id)
    if wait and job.state is not JobState.SUCCEEDED:
        raise typer.Exit(1)


# ---------------------------------------------------------------- entry point

#: Whether ``entry`` may end the process without tearing the interpreter down (every command
#: but ``run``).
_quick_exit = True


def entry() -> NoReturn:
    """The ``ctnode`` program: ``main``, then exit.

    A short command has nothing left to do once ``main`` returns: its output is flushed, its
    database writes are committed, logging is shut down. Tearing down the interpreter (freeing
    every module of SQLAlchemy, pydantic...) would add a good tenth of a second to every
    command, so the process ends at once — except for ``run``, which exits normally.
    """
    code = main()
    if _quick_exit:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    raise SystemExit(code)


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
