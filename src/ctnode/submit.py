"""Submitting jobs: what ``ctnode push``, ``commit``, ``query`` and ``move`` do before they print.

Each ``submit_*`` function checks that the peer exists and offers the service, builds the job's
items or payload, picks the retry policy (the peer's ``retry``, else ``queue.retry``), creates
the job through ``JobRepository.submit`` and pokes the local node so the job starts at once. A
script can call them with the settings ``ctnode`` would load::

    from pathlib import Path
    from ctnode.config import load_settings
    from ctnode.submit import submit_push

    settings = load_settings(Path("/etc/ctnode/ctnode.yaml"))
    submission = submit_push(settings, peer="pacs", paths=[Path("/data/in")],
                             idempotency_key="in-to-pacs")
    print(submission.job.id, submission.created)

Follow a job with ``ctnode.follow.follow(submission.repository, submission.job.id,
wake=wake_address(settings))``. Pass ``repository=`` to reuse one JobRepository across many
submissions; without it each call opens one on ``database.url`` (dispose of its engine,
``submission.repository.engine.dispose()``, when done).

Idempotency: a job submitted with an ``idempotency_key`` already used by any job is not created
again; that job is returned unchanged (``created`` False) and the node is not poked.

Errors are ctnode exceptions whose messages are the lines ``ctnode`` prints: ``NotFound`` (no
such peer), ``UsageError`` (the peer does not offer the service, inconsistent arguments,
nothing to submit), ``ConfigError`` (invalid peer files), ``DatabaseError``. The database is
opened only once the request is valid, so a refused request writes nothing.

Imports of the peer registry, the file probe and the DICOM operations are deferred to the
function that needs them: ``ctnode push`` runs this module in a short-lived process whose
start-up cost is part of every push (no pydicom, pynetdicom, structlog or daemon on that path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctnode.config import Settings
from ctnode.db.opening import open_database
from ctnode.errors import UsageError
from ctnode.index import IndexReader
from ctnode.queue import wakeup
from ctnode.queue.jobs import Job, JobKind, NewItem
from ctnode.queue.repository import JobRepository
from ctnode.queue.retry import RetryPolicy

if TYPE_CHECKING:
    from ctnode.peers import OutboundService, Peer
    from ctnode.scu.files import Skipped
    from ctnode.scu.move_request import MoveRequest

#: The notice of a submission whose idempotency key named an existing job (``ctnode: ...``).
EXISTING = "job {} already exists for this idempotency key"

#: Receives each line worth telling a user before the job is written, in order (a skipped
#: file, a peer that may not send commitment reports); ``ctnode`` prints them on stderr.
Report = Callable[[str], None]


def _discard(line: str) -> None:
    """The default ``report``: say nothing."""


@dataclass(frozen=True, slots=True)
class Submission:
    """The outcome of a ``submit_*`` call."""

    #: The job as written (or the existing one, for a repeated idempotency key).
    job: Job
    #: False when the idempotency key named an existing job, returned unchanged.
    created: bool
    #: The repository the job was written through (follow the job with it).
    repository: JobRepository
    #: Files under the given paths that are not part of the job, and why.
    skipped: tuple[Skipped, ...] = ()


# ------------------------------------------------------------------ shared steps


def open_repository(settings: Settings) -> JobRepository:
    """A JobRepository on the configured database (migrated when it is SQLite)."""
    engine = open_database(settings, migrate_sqlite=True)
    return JobRepository(engine, lease_seconds=settings.queue.lease_seconds)


def wake_address(settings: Settings) -> wakeup.Address:
    """The local node's wake channel (see ``ctnode.queue.wakeup``)."""
    return wakeup.wake_address(settings.storage.run_dir)


def wake_node(settings: Settings, job_id: int) -> None:
    """Tell the local node (if it runs) that *job_id* was just committed: it starts now
    instead of at its next poll. Silent when nobody listens."""
    wakeup.poke(wake_address(settings), job_id)


def outbound_peer(settings: Settings, name: str, *services: OutboundService) -> Peer:
    """The peer called *name*, if ctnode may ask it for each of *services* (its ``services``).

    NotFound names the peers directory; UsageError names the peer file to edit.
    """
    from ctnode.peers import load_peers

    peer = load_peers(settings.peers_dir).get(name)
    for service in services:
        if service not in peer.config.services:
            raise UsageError(f"peer {name!r} does not allow {service} (services in {peer.path})")
    return peer


def warn_without_reports(peer: Peer, report: Report) -> None:
    """Report a warning when *peer* may not send commitment reports on a new association
    (then only reports on the N-ACTION's own association can arrive)."""
    if "commitment_report" not in peer.config.accept:
        report(
            f"warning: peer {peer.name!r} may not send commitment reports to us: add "
            f"commitment_report to accept in {peer.path} (only reports on the N-ACTION's own "
            "association can arrive)"
        )


def file_items(
    paths: Sequence[Path], report: Report, cwd: Path | None = None
) -> tuple[list[NewItem], tuple[Skipped, ...], dict[str, Any]]:
    """Every DICOM file under *paths* (relative ones from *cwd*, default this process's
    working directory) as an item, the files skipped (each reported) and the job's ``source``
    payload (the first 100 paths, as given)."""
    from ctnode.scu.files import collect_files

    items, skips = collect_files(paths, cwd)
    for skip in skips:
        report(f"skipped {skip.path}: {skip.reason}")
    return items, tuple(skips), {"source": "files", "paths": [str(p) for p in paths][:100]}


def stored_items(
    index: IndexReader, store_dir: Path, *, study: str | None, series: str | None
) -> list[NewItem]:
    """The stored instances of a study/series, each with the absolute path of its file."""
    root = store_dir.absolute()
    return [
        NewItem(r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid, str(root / r.path))
        for r in index.instances(study=study, series=series)
    ]


def _store_selection(
    settings: Settings, repository: JobRepository, study: str | None, series: str | None
) -> tuple[list[NewItem], dict[str, Any], str | None]:
    """The items, ``source`` payload and node of a job over a study/series of the local store:
    any node may run it when the store is shared (``storage.shared``), else this one."""
    index = IndexReader(repository.sessions)
    items = stored_items(index, settings.storage.store_dir, study=study, series=series)
    source = {"source": "store", "study": study, "series": series}
    return items, source, None if settings.storage.shared else settings.node.name


def _submit(
    settings: Settings,
    repository: JobRepository,
    kind: JobKind,
    target: Peer,
    payload: dict[str, Any],
    items: Sequence[NewItem] = (),
    skipped: tuple[Skipped, ...] = (),
    *,
    priority: int,
    node_name: str | None,
    idempotency_key: str | None = None,
    wake: bool,
) -> Submission:
    """Write the job (the retry policy of *target*) and poke the node when it was just created
    (if asked to)."""
    job, created = repository.submit(
        kind,
        target.name,
        payload,
        items,
        policy=RetryPolicy.for_peer(settings, target),
        priority=priority,
        node_name=node_name,
        idempotency_key=idempotency_key,
    )
    if wake and created:
        wake_node(settings, job.id)
    return Submission(job, created, repository, skipped)


# ------------------------------------------------------------------ the four kinds


def submit_push(
    settings: Settings,
    *,
    peer: str,
    paths: Sequence[Path] = (),
    study: str | None = None,
    series: str | None = None,
    commit: bool = False,
    priority: int = 0,
    idempotency_key: str | None = None,
    repository: JobRepository | None = None,
    wake: bool = True,
    report: Report = _discard,
    cwd: Path | None = None,
) -> Submission:
    """Queue a C-STORE to *peer* of the DICOM files under *paths* (directories recursively;
    other files are skipped and reported) or of a study/series of the local store.

    Give *paths* or *study*/*series*, not both. The peer must offer ``store`` (and ``commit``
    with *commit*, which requests storage commitment of exactly the delivered instances once
    the push succeeds). A push of files runs on this node; a push from a shared store
    (``storage.shared``) may run on any node. *priority*: higher runs first. Relative *paths*
    are taken from *cwd* (default: this process's working directory).
    """
    target = outbound_peer(settings, peer, "store", *(("commit",) if commit else ()))
    if commit:
        warn_without_reports(target, report)
    if bool(paths) == bool(study or series):
        raise UsageError("give PATH... or --study/--series (not both)")
    repository = repository or open_repository(settings)
    skipped: tuple[Skipped, ...] = ()
    node_name: str | None = settings.node.name
    if paths:
        items, skipped, source = file_items(paths, report, cwd)
    else:
        items, source, node_name = _store_selection(settings, repository, study, series)
    if not items:
        raise UsageError(
            "nothing to push: no DICOM files found"
            if paths
            else "nothing to push: no such study/series in the local store (see `ctnode studies`)"
        )
    if commit:
        source = {**source, "commit": True}
    return _submit(
        settings,
        repository,
        JobKind.PUSH,
        target,
        source,
        items,
        skipped,
        priority=priority,
        node_name=node_name,
        idempotency_key=idempotency_key,
        wake=wake,
    )


def submit_commit(
    settings: Settings,
    *,
    peer: str,
    paths: Sequence[Path] = (),
    study: str | None = None,
    series: str | None = None,
    push_job: int | None = None,
    priority: int = 0,
    idempotency_key: str | None = None,
    repository: JobRepository | None = None,
    wake: bool = True,
    report: Report = _discard,
) -> Submission:
    """Queue a storage commitment request to *peer* (N-ACTION, then wait for its report) for
    the DICOM files under *paths*, a study/series of the local store, or exactly the instances
    push job *push_job* delivered to *peer* — one of the three.

    The peer must offer ``commit``; a warning is reported when it may not send reports on a new
    association. A commit of a push job runs where the push ran.
    """
    target = outbound_peer(settings, peer, "commit")
    warn_without_reports(target, report)
    given = (bool(paths), bool(study or series), push_job is not None)
    if sum(1 for one in given if one) != 1:
        raise UsageError("give one of PATH..., --study/--series, or --job PUSH_JOB_ID")
    repository = repository or open_repository(settings)
    skipped: tuple[Skipped, ...] = ()
    node_name: str | None = settings.node.name
    if paths:
        items, skipped, source = file_items(paths, report)
    elif push_job is not None:
        from ctnode.scu.commit_submit import items_from_push_job

        pushed, items = items_from_push_job(repository, push_job, peer)
        node_name = pushed.node_name
        source = {"source": "push", "push_job": push_job}
    else:
        items, source, node_name = _store_selection(settings, repository, study, series)
    if not items:
        raise UsageError(
            "nothing to commit: "
            + (
                "no DICOM files found"
                if paths
                else f"job {push_job} delivered no instance"
                if push_job is not None
                else "no such study/series in the local store (see `ctnode studies`)"
            )
        )
    return _submit(
        settings,
        repository,
        JobKind.COMMIT,
        target,
        source,
        items,
        skipped,
        priority=priority,
        node_name=node_name,
        idempotency_key=idempotency_key,
        wake=wake,
    )


def submit_query(
    settings: Settings,
    *,
    peer: str,
    keys: Sequence[str] = (),
    level: str | None = None,
    limit: int = 1000,
    priority: int = 0,
    repository: JobRepository | None = None,
    wake: bool = True,
) -> Submission:
    """Queue a Study Root C-FIND on *peer*; the matches become the job's ``result.matches``.

    *keys* are written as for ``ctnode query -k`` (``PatientName=DOE*``, ``0010,0020=123``, or
    a keyword alone as a return key); *level* is STUDY (default), SERIES or IMAGE; at most
    *limit* matches are kept (then C-CANCEL). The peer must offer ``find``. The job's payload
    holds the level and the full key list (the level's default return keys added).
    """
    from ctnode.scu.query_keys import build_keys, query_payload

    target = outbound_peer(settings, peer, "find")
    final_level, query_keys = build_keys(level, keys)
    repository = repository or open_repository(settings)
    return _submit(
        settings,
        repository,
        JobKind.QUERY,
        target,
        query_payload(final_level, query_keys, limit),
        priority=priority,
        node_name=None,
        wake=wake,
    )


def submit_move(
    settings: Settings,
    *,
    peer: str,
    request: MoveRequest,
    priority: int = 0,
    idempotency_key: str | None = None,
    repository: JobRepository | None = None,
    wake: bool = True,
) -> Submission:
    """Queue a Study Root C-MOVE of *request* (``scu.move_request.make_request``) from *peer*.

    The peer must offer ``move``. A move to this node (no destination, or node.ae_title) needs
    the peer to be allowed to store here (``store`` in its ``accept``, or
    ``node.accept_unknown_callers``), and runs on this node, which tracks the arrivals.
    """
    from ctnode.dicom.contexts import Service

    target = outbound_peer(settings, peer, "move")
    to_self = request.destination in (None, settings.node.ae_title)
    if (
        to_self
        and not settings.node.accept_unknown_callers
        and Service.STORE not in target.config.accept
    ):
        raise UsageError(
            f"peer {peer!r} may not store to this node, so it cannot deliver a move here: "
            f"add store to accept in {target.path}"
        )
    repository = repository or open_repository(settings)
    return _submit(
        settings,
        repository,
        JobKind.MOVE,
        target,
        request.to_payload(),
        priority=priority,
        node_name=settings.node.name if to_self else None,
        idempotency_key=idempotency_key,
        wake=wake,
    )
