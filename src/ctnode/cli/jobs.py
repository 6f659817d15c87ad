"""Jobs: ``jobs list/show/retry/cancel``, and following a submitted job to its end (``--wait``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctnode.cli.common import (
    JsonOpt,
    emit_json,
    fail,
    open_reader,
    open_repo,
    print_table,
    settings_of,
    wake_address,
    wake_node,
)
from ctnode.config import Settings

if TYPE_CHECKING:
    from ctnode.follow import Finished
    from ctnode.queue.repository import JobRepository


def finish_job_command(
    settings: Settings,
    repo: JobRepository,
    job_id: int,
    *,
    wait: bool,
    as_json: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print the job id (or JSON); with *wait*, follow it and exit 0 only if it succeeded.
    The node is woken either way (following wakes it too)."""
    from ctnode.follow import finish_job, watch

    _print(
        finish_job(
            watch(repo.engine),
            job_id,
            wait=wait,
            as_json=as_json,
            wake=wake_address(settings),
            extra=extra,
        )
    )


def finish_push_and_commit(
    settings: Settings, repo: JobRepository, push_id: int, *, as_json: bool, extra: dict[str, Any]
) -> None:
    """``push --commit --wait``: follow the push, then its commit job; exit 0 only if every
    instance was delivered and committed."""
    from ctnode.follow import finish_push_and_commit as finish
    from ctnode.follow import watch

    wake = wake_address(settings)
    _print(finish(watch(repo.engine), push_id, as_json=as_json, wake=wake, extra=extra))


def _print(finished: Finished) -> None:
    """Print what a submitting command ends with; exit with its code."""
    for line in finished.lines:
        typer.echo(line)
    if finished.code:
        raise typer.Exit(finished.code)


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
    jobs = open_reader(settings).list_jobs(states=states, kind=kinds, peer=peer, limit=limit)
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


def jobs_retry(ctx: typer.Context, job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Run a failed or cancelled job again (failed items only)."""
    settings = settings_of(ctx)
    repo = open_repo(settings)
    job = repo.retry(job_id)
    wake_node(settings, job.id)
    typer.echo(f"job {job.id} queued again ({job.items.pending} item(s) pending)")


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
