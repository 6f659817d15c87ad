"""The fault suite's oracle: what was promised, checked against what is there.

A test records every promise the system made while faults were injected:

* ``acknowledge(uid, source, node=...)`` — a C-STORE to a node got Success (the sender knows:
  see ``tests/helpers/senders.py``). The node promised the instance is stored and indexed.
* ``submitted(job_id, node=..., peer=...)`` — a job was accepted into the queue. The node
  promised to finish it: succeeded, or failed with a reason.
* ``fault(kind)`` — a fault was injected (kill -9, disk full, a proxy mode, a clock step...).

``verify()`` then checks, on every node involved (SQLite or PostgreSQL index alike):

* every acknowledged instance has an index row and a store file whose data set is
  byte-identical to the data set that was sent (anything else counts as *lost*);
* the node is consistent: spool empty, no temporary link left in the store, no store file
  without an index row, no index row without its file, every file matching its row's SHA-256;
* every submitted job is final; failed ones carry a reason (``last_error``); jobs required to
  succeed did; the per-kind check passes (push: every item of a succeeded job is at the peer);
* duplicates at peers (an instance received more than once) are counted;

and returns the counts. Problems are collected and raised together as one AssertionError.

Per-kind checks (``JOB_CHECKS``, a function ``(ledger, job, report, repo) -> None`` under the
job kind; it may call ``ledger.problem()`` and ``ledger.count_duplicates()``):

* **push**: every item of a succeeded job is at the peer; duplicates at the peer counted and
  bounded by ``max_duplicates``;
* **move** (to the node itself): ``uids`` is what the source holds for the moved keys; a
  succeeded move has every one of them indexed on the node (the test also calls
  ``acknowledge(..., via="move")`` for the C-STOREs the node answered, so the common checks
  compare bytes). Duplicates are receptions *at the node*: register them with
  ``add_receptions(view)`` (``Receptions`` counts the node's ``scp.store.accepted`` log lines
  over all its restarts); they are counted and bounded by ``max_duplicates``;
* **commit**: a succeeded job has every item committed, an ``instance_commitments`` row per
  item for the job's peer, and the peer view holds each instance (a commitment for an instance
  the peer does not have is a lie the ledger catches); a failed job names a reason for every
  instance not committed; a final job has no transaction left ``open`` or ``requested``.

Peers other than a directory implement ``PeerView`` (``OrthancPeer`` reads Orthanc over REST).
"""

from __future__ import annotations

import hashlib
import socket
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom
from sqlalchemy import select

from ctnode.db.engine import create_db_engine, session_factory
from ctnode.db.models import CommitTransaction, Instance, InstanceCommitment, JobItem
from ctnode.dicom.filemeta import read_meta_length
from ctnode.queue.report import job_report
from ctnode.queue.repository import JobRepository
from tests.helpers.procs import CtnodeProcess

FINAL_STATES = {"succeeded", "failed", "cancelled"}


# ------------------------------------------------------------------ reading DICOM files


def dataset_of(path: Path) -> bytes:
    """The data set part of a Part 10 file (the bytes after the file meta group)."""
    data = path.read_bytes()
    return data[read_meta_length(data[:4096]) :]


def dataset_sha256(path: Path) -> str:
    """SHA-256 of the data set part (what ctnode's index stores)."""
    return hashlib.sha256(dataset_of(path)).hexdigest()


def uid_of(path: Path) -> str:
    """SOP Instance UID of a Part 10 file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# ------------------------------------------------------------------ where things are


@dataclass(frozen=True)
class NodeView:
    """How to reach a node's index and files."""

    name: str
    data_dir: Path
    db_url: str
    #: The node's ``node.name`` (the value its index rows carry).
    node_name: str = field(default_factory=socket.gethostname)

    @classmethod
    def of(cls, node: CtnodeProcess, name: str = "node") -> NodeView:
        """The view of a ``CtnodeProcess`` (its configured URL, or SQLite in its data dir)."""
        storage = node.config.get("storage", {})
        data_dir = Path(storage.get("data_dir", node.data_dir))
        url = node.config.get("database", {}).get("url") or f"sqlite:///{data_dir / 'ctnode.db'}"
        node_name = node.config.get("node", {}).get("name") or socket.gethostname()
        return cls(name, data_dir, url, node_name)


class PeerView(Protocol):
    """What a peer holds: how many copies of each SOP Instance UID."""

    def copies(self) -> Counter[str]:
        """UID -> number of copies received."""


class DirectoryPeer:
    """A peer writing one file per received instance into a directory (storescp ``-uf``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[Path, str] = {}

    def copies(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for path in self.directory.rglob("*"):
            if not path.is_file():
                continue
            uid = self._cache.get(path)
            if uid is None:
                try:
                    uid = uid_of(path)
                except Exception:  # a file the peer is still writing, or not DICOM
                    continue
                self._cache[path] = uid
            out[uid] += 1
        return out

    def files_of(self, uid: str) -> list[Path]:
        """The files holding *uid* (after a ``copies()`` call)."""
        return [p for p, u in self._cache.items() if u == uid]


class Receptions:
    """What a node received: one copy per C-STORE it answered with Success, counted from its
    ``scp.store.accepted`` / ``scp.store.quarantined`` log lines over every process run (call
    ``add(node.log)`` after each start). A C-STORE answered just before a kill -9 may miss its
    log line (it is written after the response), so this is a lower bound per instance."""

    EVENTS = ("scp.store.accepted", "scp.store.quarantined")

    def __init__(self) -> None:
        self.logs: list[Any] = []

    def add(self, log: Any) -> None:
        """A process run's ``LogReader``."""
        self.logs.append(log)

    def accepted(self) -> list[str]:
        """SOP Instance UIDs of every C-STORE answered Success, in order, with repeats."""
        out: list[str] = []
        for log in self.logs:
            for event in self.EVENTS:
                out.extend(str(e.get("sop_instance_uid")) for e in log.named(event))
        return out

    def copies(self) -> Counter[str]:
        return Counter(self.accepted())


class OrthancPeer:
    """What an Orthanc holds (REST ``/tools/find``); each instance once (Orthanc keeps one copy
    per SOP Instance UID, so duplicates are not visible here)."""

    def __init__(self, orthanc: Any) -> None:
        self.orthanc = orthanc

    def copies(self) -> Counter[str]:
        found = self.orthanc.request(
            "POST", "/tools/find", {"Level": "Instance", "Query": {}, "Expand": True}
        )
        return Counter(str(i["MainDicomTags"]["SOPInstanceUID"]) for i in found)


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Acknowledged:
    """A C-STORE that got Success: the node promised to keep *source*'s data set."""

    sop_instance_uid: str
    source: Path
    node: str
    via: str
    round: int


@dataclass(frozen=True)
class SubmittedJob:
    """A job accepted into a node's queue."""

    job_id: int
    node: str
    kind: str
    peer: str | None
    #: "succeeded" (it must succeed), "failed" (it must fail, with a reason) or "final".
    expect: str
    #: The instances the job is about, when the test knows them (checked against its items).
    uids: frozenset[str] | None
    #: Most duplicates at the peer this job may cause (None: not bounded by this record).
    max_duplicates: int | None


@dataclass
class LedgerCounts:
    """What ``verify()`` found."""

    acknowledged: int = 0
    lost: int = 0
    duplicates: int = 0
    jobs: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    faults: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """A one-line summary for the test output."""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_by_kind.items()))
        return (
            f"acknowledged {self.acknowledged}, lost {self.lost}, duplicates at peers "
            f"{self.duplicates}; jobs {self.jobs} (succeeded {self.jobs_succeeded}, failed "
            f"{self.jobs_failed}); faults injected {self.faults}" + (f" ({kinds})" if kinds else "")
        )


class Tally(Protocol):
    """Session-wide totals (tests/faults/conftest.py)."""

    def add(self, name: str, counts: LedgerCounts) -> None:
        """Record one verified ledger."""


JobCheck = Callable[["Ledger", SubmittedJob, dict[str, Any], JobRepository], None]


def _check_push(
    ledger: Ledger, job: SubmittedJob, report: dict[str, Any], repo: JobRepository
) -> None:
    """A succeeded push: every item at the peer; duplicates counted (and bounded if asked)."""
    items = repo.items(job.job_id)
    uids = {i.sop_instance_uid for i in items if i.sop_instance_uid}
    if job.uids is not None and uids != job.uids:
        ledger.problem(f"push job {job.job_id}: its items are not the instances submitted")
    if job.peer is None or job.peer not in ledger.peers:
        return
    copies = ledger.peer_copies(job.peer)
    if report["state"] == "succeeded":
        missing = sorted(u for u in uids if copies[u] == 0)
        if missing:
            ledger.lost_at_peer += len(missing)
            ledger.problem(
                f"push job {job.job_id} succeeded but {len(missing)} instance(s) are not at "
                f"peer {job.peer!r}, e.g. {missing[0]}"
            )
    duplicates = ledger.count_duplicates(job.peer, uids)
    if job.max_duplicates is not None and duplicates > job.max_duplicates:
        ledger.problem(
            f"push job {job.job_id}: {duplicates} duplicate(s) at {job.peer!r}, more than the "
            f"bound of {job.max_duplicates}"
        )


def _indexed(repo: JobRepository, uids: Iterable[str]) -> set[str]:
    """Which of *uids* have a live index row in *repo*'s database."""
    wanted = sorted(set(uids))
    found: set[str] = set()
    with repo.sessions() as session:
        for start in range(0, len(wanted), 500):
            found.update(
                session.scalars(
                    select(Instance.sop_instance_uid).where(
                        Instance.sop_instance_uid.in_(wanted[start : start + 500]),
                        Instance.deleted_at.is_(None),
                    )
                )
            )
    return found


def _check_move(
    ledger: Ledger, job: SubmittedJob, report: dict[str, Any], repo: JobRepository
) -> None:
    """A succeeded move to the node: every instance the source holds for it is indexed;
    duplicate receptions at the node counted (and bounded if asked)."""
    if job.uids is None:
        return
    if report["state"] == "succeeded":
        missing = sorted(job.uids - _indexed(repo, job.uids))
        if missing:
            ledger.lost_at_peer += len(missing)
            ledger.problem(
                f"move job {job.job_id} succeeded but {len(missing)} instance(s) the source holds "
                f"are not indexed on {job.node!r}, e.g. {missing[0]}"
            )
    key = Ledger.receptions_key(job.node)
    if key not in ledger.peers:
        return
    duplicates = ledger.count_duplicates(key, job.uids)
    if job.max_duplicates is not None and duplicates > job.max_duplicates:
        ledger.problem(
            f"move job {job.job_id}: {duplicates} duplicate reception(s) at {job.node!r}, more "
            f"than the bound of {job.max_duplicates}"
        )


def _check_commit(
    ledger: Ledger, job: SubmittedJob, report: dict[str, Any], repo: JobRepository
) -> None:
    """Commitments are backed by the peer; no transaction of a final job is left awaiting."""
    with repo.sessions() as session:
        items = list(session.scalars(select(JobItem).where(JobItem.job_id == job.job_id)))
        committed_rows = set(
            session.scalars(
                select(InstanceCommitment.sop_instance_uid).where(
                    InstanceCommitment.peer == job.peer
                )
            )
        )
        awaiting = list(
            session.scalars(
                select(CommitTransaction.transaction_uid).where(
                    CommitTransaction.job_id == job.job_id,
                    CommitTransaction.state.in_(("open", "requested")),
                )
            )
        )
    uids = {i.sop_instance_uid for i in items if i.sop_instance_uid}
    if job.uids is not None and uids != job.uids:
        ledger.problem(f"commit job {job.job_id}: its items are not the instances submitted")
    if awaiting:
        ledger.problem(
            f"commit job {job.job_id} is {report['state']} but transaction(s) {awaiting} are "
            "still open or requested"
        )
    done = {i.sop_instance_uid for i in items if i.state in ("succeeded", "warning")}
    if report["state"] == "succeeded":
        if done != uids:
            ledger.problem(
                f"commit job {job.job_id} succeeded with {len(uids - done)} instance(s) "
                "not committed"
            )
        unrecorded = sorted(uids - committed_rows)
        if unrecorded:
            ledger.problem(
                f"commit job {job.job_id} succeeded but {len(unrecorded)} instance(s) have no "
                f"instance_commitments row for {job.peer!r}, e.g. {unrecorded[0]}"
            )
    elif report["state"] == "failed":
        silent = [i.sop_instance_uid for i in items if i.state == "failed" and not i.error]
        if silent:
            ledger.problem(f"commit job {job.job_id}: failed instance(s) without a reason")
    if job.peer is not None and job.peer in ledger.peers:
        copies = ledger.peer_copies(job.peer)
        lies = sorted(u for u in done if copies[u] == 0)
        if lies:
            ledger.lost_at_peer += len(lies)
            ledger.problem(
                f"commit job {job.job_id}: {len(lies)} instance(s) recorded as committed are "
                f"not at peer {job.peer!r}, e.g. {lies[0]}"
            )


#: Per-kind checks of a job (see the module docstring).
JOB_CHECKS: dict[str, JobCheck] = {
    "push": _check_push,
    "move": _check_move,
    "commit": _check_commit,
}


# ------------------------------------------------------------------ the ledger


class Ledger:
    """Records promises and faults; ``verify()`` checks them. See the module docstring."""

    def __init__(self, name: str = "ledger", tally: Tally | None = None) -> None:
        self.name = name
        self.tally = tally
        self.nodes: dict[str, NodeView] = {}
        self.peers: dict[str, PeerView] = {}
        self.acknowledged: dict[tuple[str, str], Acknowledged] = {}
        self.jobs: list[SubmittedJob] = []
        self.faults: Counter[str] = Counter()
        self.problems: list[str] = []
        self.lost_at_peer = 0
        self.verified: LedgerCounts | None = None
        self._copies: dict[str, Counter[str]] = {}
        self._counted: set[tuple[str, str]] = set()
        self._duplicates = 0

    # -- recording ---------------------------------------------------------------------

    def add_node(self, node: CtnodeProcess | NodeView, name: str = "node") -> NodeView:
        """Register a node (its index and data dir are checked by ``verify``)."""
        view = node if isinstance(node, NodeView) else NodeView.of(node, name)
        self.nodes[view.name] = view
        return view

    def add_peer(self, name: str, view: PeerView) -> None:
        """Register what peer *name* holds (push jobs to it are checked against it)."""
        self.peers[name] = view

    @staticmethod
    def receptions_key(node: str) -> str:
        """The ``peers`` key under which a node's receptions are registered."""
        return f"{node}:received"

    def add_receptions(self, view: PeerView, node: str = "node") -> None:
        """Register what *node* received (duplicate receptions of move jobs are counted)."""
        self.peers[self.receptions_key(node)] = view

    def acknowledge(
        self, uid: str, source: Path, *, node: str = "node", via: str = "test", round: int = 0
    ) -> None:
        """A C-STORE of *source* to *node* was answered Success."""
        self.acknowledged.setdefault((node, uid), Acknowledged(uid, source, node, via, round))

    def submitted(
        self,
        job_id: int,
        *,
        node: str = "node",
        kind: str = "push",
        peer: str | None = None,
        expect: str = "succeeded",
        uids: Iterable[str] | None = None,
        max_duplicates: int | None = None,
    ) -> None:
        """A job was accepted by *node*."""
        assert expect in ("succeeded", "failed", "final"), expect
        self.jobs.append(
            SubmittedJob(
                job_id,
                node,
                kind,
                peer,
                expect,
                frozenset(uids) if uids is not None else None,
                max_duplicates,
            )
        )

    def fault(self, kind: str, count: int = 1) -> None:
        """*count* faults of *kind* were injected."""
        self.faults[kind] += count

    def problem(self, text: str) -> None:
        """Record a broken promise (verify raises with all of them)."""
        self.problems.append(text)

    # -- peers -------------------------------------------------------------------------

    def peer_copies(self, peer: str) -> Counter[str]:
        """What *peer* holds (read once per verify)."""
        if peer not in self._copies:
            self._copies[peer] = self.peers[peer].copies()
        return self._copies[peer]

    def count_duplicates(self, peer: str, uids: Iterable[str]) -> int:
        """Extra copies of *uids* at *peer*; each (peer, uid) is counted once per ledger."""
        copies = self.peer_copies(peer)
        found = 0
        for uid in uids:
            if (peer, uid) in self._counted:
                continue
            self._counted.add((peer, uid))
            found += max(0, copies[uid] - 1)
        self._duplicates += found
        return found

    # -- verification ------------------------------------------------------------------

    def _check_database(self, db_url: str, views: list[NodeView]) -> dict[str, Instance]:
        """Consistency of the nodes sharing one index; returns its rows by SOP Instance UID.

        A row belongs to the nodes whose ``node.name`` it carries (several test nodes on one
        host may share a name); its file must be in one of their data dirs.
        """
        engine = create_db_engine(db_url, busy_timeout=30)
        try:
            with session_factory(engine)() as session:
                rows = {
                    r.sop_instance_uid: r
                    for r in session.scalars(select(Instance).where(Instance.deleted_at.is_(None)))
                }
        finally:
            engine.dispose()
        indexed: dict[str, set[str]] = {}
        for row in rows.values():
            indexed.setdefault(row.node_name, set()).add(row.path)
        for view in views:
            spool = view.data_dir / "spool"
            leftovers = sorted(p.name for p in spool.iterdir()) if spool.exists() else []
            if leftovers:
                self.problem(f"{view.name}: spool not empty: {leftovers[:5]}")
            store = view.data_dir / "store"
            files = {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
            temporary = sorted(f for f in files if not f.endswith(".dcm") or "/." in f"/{f}")
            if temporary:
                self.problem(f"{view.name}: temporary files left in the store: {temporary[:5]}")
            orphans = sorted(files - indexed.get(view.node_name, set()) - set(temporary))
            if orphans:
                self.problem(f"{view.name}: store files without an index row: {orphans[:5]}")
        for uid, row in rows.items():
            homes = [v for v in views if v.node_name == row.node_name]
            paths = [v.data_dir / "store" / row.path for v in homes]
            present = [p for p in paths if p.is_file()]
            if homes and not present:
                self.problem(f"index row {uid} ({row.node_name}) has no store file {row.path}")
            for path in present:
                if dataset_sha256(path) != row.sha256:
                    self.problem(f"store file {path} does not match its row's SHA-256")
        return rows

    def _check_jobs(self, counts: LedgerCounts) -> None:
        by_node: dict[str, list[SubmittedJob]] = {}
        for job in self.jobs:
            by_node.setdefault(job.node, []).append(job)
        for node_name, jobs in by_node.items():
            view = self.nodes[node_name]
            repo = JobRepository(create_db_engine(view.db_url, busy_timeout=30))
            try:
                for job in jobs:
                    report = job_report(repo, job.job_id)
                    counts.jobs += 1
                    state = report["state"]
                    if state not in FINAL_STATES:
                        self.problem(f"job {job.job_id} on {node_name} is {state}, not final")
                        continue
                    if state == "succeeded":
                        counts.jobs_succeeded += 1
                    elif state == "failed":
                        counts.jobs_failed += 1
                        if not report.get("last_error"):
                            self.problem(f"job {job.job_id} failed without a reason")
                    if job.expect != "final" and state != job.expect:
                        self.problem(
                            f"job {job.job_id} is {state}, expected {job.expect}: "
                            f"{report.get('last_error')}"
                        )
                    check = JOB_CHECKS.get(job.kind)
                    if check is not None:
                        check(self, job, report, repo)
            finally:
                repo.engine.dispose()

    def verify(self) -> LedgerCounts:
        """Check every promise (see the module docstring); raises AssertionError on any
        problem, else returns the counts."""
        self._copies.clear()
        self._counted.clear()
        self._duplicates = 0
        self.lost_at_peer = 0
        self.problems = []
        counts = LedgerCounts(faults=sum(self.faults.values()), faults_by_kind=dict(self.faults))
        databases: dict[str, list[NodeView]] = {}
        for view in self.nodes.values():
            databases.setdefault(view.db_url, []).append(view)
        indexes = {url: self._check_database(url, views) for url, views in databases.items()}
        for ack in self.acknowledged.values():
            counts.acknowledged += 1
            if ack.node not in self.nodes:
                self.problem(f"acknowledged by unknown node {ack.node!r}")
                counts.lost += 1
                continue
            row = indexes[self.nodes[ack.node].db_url].get(ack.sop_instance_uid)
            stored = self.nodes[ack.node].data_dir / "store" / row.path if row else None
            if row is None or stored is None or not stored.is_file():
                counts.lost += 1
                self.problem(
                    f"LOST: {ack.sop_instance_uid} ({ack.source.name}, round {ack.round}, via "
                    f"{ack.via}) was acknowledged by {ack.node} but is not stored and indexed"
                )
            elif dataset_of(stored) != dataset_of(ack.source):
                counts.lost += 1
                self.problem(
                    f"LOST: {ack.sop_instance_uid} is stored on {ack.node} with a data set that "
                    f"differs from what was sent ({ack.source})"
                )
        self._check_jobs(counts)
        counts.lost += self.lost_at_peer
        counts.duplicates = self._duplicates
        print(f"[ledger {self.name}] {counts.line()}")
        if self.problems:
            raise AssertionError(
                f"ledger {self.name}: {len(self.problems)} problem(s):\n  "
                + "\n  ".join(self.problems[:40])
            )
        self.verified = counts
        if self.tally is not None:
            self.tally.add(self.name, counts)
        return counts


def uids_of(paths: Iterable[Path]) -> dict[str, Path]:
    """SOP Instance UID -> file, for the files a test is about to send or push."""
    return {uid_of(p): p for p in paths}


def merge_counts(parts: Mapping[str, LedgerCounts]) -> LedgerCounts:
    """Sum of several ledgers' counts."""
    total = LedgerCounts()
    for counts in parts.values():
        total.acknowledged += counts.acknowledged
        total.lost += counts.lost
        total.duplicates += counts.duplicates
        total.jobs += counts.jobs
        total.jobs_succeeded += counts.jobs_succeeded
        total.jobs_failed += counts.jobs_failed
        total.faults += counts.faults
        for kind, n in counts.faults_by_kind.items():
            total.faults_by_kind[kind] = total.faults_by_kind.get(kind, 0) + n
    return total
