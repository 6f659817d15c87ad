"""Work sent to a peer: ``push``, ``commit``, ``query``, ``move``.

Each command parses, calls ``ctnode.submit`` (which checks the peer and writes the job), then
prints the job id, its JSON, or — with ``--wait`` — follows it to the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctnode.cli.common import (
    JsonOpt,
    PeerArg,
    emit_json,
    fail,
    notice,
    open_repo,
    print_table,
    settings_of,
    wake_address,
)
from ctnode.cli.jobs import finish_job_command, finish_push_and_commit

if TYPE_CHECKING:
    from ctnode.config import Settings
    from ctnode.queue.repository import JobRepository
    from ctnode.submit import Submission

PathsArg = Annotated[list[Path] | None, typer.Argument(help="Files or directories (recursive).")]
StudyOpt = Annotated[str | None, typer.Option("--study", help="A study from the local store.")]
SeriesOpt = Annotated[str | None, typer.Option("--series", help="A series from the local store.")]
PriorityOpt = Annotated[int, typer.Option(help="Higher runs first.")]
IdempotencyOpt = Annotated[
    str | None, typer.Option("--idempotency-key", help="Submit at most once per key.")
]
KeysOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-k",
        "--key",
        help="Keyword=value or gggg,eeee=value (a matching key), or Keyword alone (a return "
        "key), as in DCMTK findscu. Repeatable.",
    ),
]


def _job_id(submission: Submission) -> int:
    """The submitted job's id, with a notice when its idempotency key named an existing job."""
    from ctnode.submit import EXISTING

    if not submission.created:
        notice(EXISTING.format(submission.job.id))
    return submission.job.id


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
    from ctnode.submit import submit_push

    settings = settings_of(ctx, quiet_logs=False)
    submission = submit_push(
        settings,
        peer=peer,
        paths=paths or (),
        study=study,
        series=series,
        commit=commit_after,
        priority=priority,
        idempotency_key=idempotency_key,
        wake=False,  # finishing wakes the node (following it does too)
        report=notice,
    )
    job_id = _job_id(submission)
    extra = {"skipped": [{"path": s.path, "reason": s.reason} for s in submission.skipped]}
    finish_push(
        settings,
        job_id,
        wait=wait,
        commit=commit_after,
        as_json=as_json,
        extra=extra,
        repository=submission.repository,
    )


def finish_push(
    settings: Settings,
    job_id: int,
    *,
    wait: bool,
    commit: bool,
    as_json: bool,
    extra: dict[str, Any],
    repository: JobRepository | None = None,
) -> None:
    """The end of ``push`` once its job is written: print the id or JSON, or follow it
    (``--wait``; with ``--commit``, its commit job too) and exit 0 only if all went well."""
    repo = repository or open_repo(settings)
    if commit and wait:
        finish_push_and_commit(settings, repo, job_id, as_json=as_json, extra=extra)
        return
    finish_job_command(settings, repo, job_id, wait=wait, as_json=as_json, extra=extra)


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
    from ctnode.submit import submit_commit

    settings = settings_of(ctx)
    submission = submit_commit(
        settings,
        peer=peer,
        paths=paths or (),
        study=study,
        series=series,
        push_job=job,
        priority=priority,
        idempotency_key=idempotency_key,
        wake=False,  # finishing wakes the node (following it does too)
        report=notice,
    )
    job_id = _job_id(submission)
    finish_job_command(settings, submission.repository, job_id, wait=wait, as_json=as_json)


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
    from ctnode.queue.jobs import JobState
    from ctnode.scu.query_keys import QueryKey
    from ctnode.scu.query_table import table
    from ctnode.submit import submit_query

    settings = settings_of(ctx)
    submission = submit_query(
        settings,
        peer=peer,
        keys=keys or (),
        level=level,
        limit=limit,
        priority=priority,
        wake=not wait,  # following wakes the node
    )
    if not wait:
        if as_json:
            emit_json(submission.job.to_json())
        else:
            typer.echo(submission.job.id)
        return
    job = follow(submission.repository, submission.job.id, wake=wake_address(settings))
    if job.state is not JobState.SUCCEEDED:
        fail(f"job {job.id} {job.state.value}: {job.last_error or 'no result'}")
    result = job.result or {}
    matches = result.get("matches") or []
    if as_json:
        emit_json(matches)
    else:
        query_keys = [QueryKey.from_json(key) for key in job.payload["keys"]]
        print_table(*table(str(job.payload["level"]), query_keys, matches))
    if result.get("truncated"):
        typer.echo(
            f"ctnode: showing the first {len(matches)} matches (--limit {limit}); {peer} has more",
            err=True,
        )


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
    from ctnode.follow import describe, follow
    from ctnode.queue.jobs import JobState
    from ctnode.scu.move_request import request_from_cli
    from ctnode.submit import submit_move

    request = request_from_cli(keys or [], study, series, dest)
    settings = settings_of(ctx)
    submission = submit_move(
        settings, peer=peer, request=request, priority=priority, idempotency_key=idempotency_key
    )
    _job_id(submission)
    job = submission.job
    if wait:
        job = follow(submission.repository, job.id, wake=wake_address(settings))
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
