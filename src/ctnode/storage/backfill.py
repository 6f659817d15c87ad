"""Back-fill of index rows written before the current ``INDEX_VERSION``: their query/retrieve
keys (revision 0005 columns) read again from the stored files.

``ctnode db upgrade`` runs it after migrating. The node migrates SQLite itself at start-up but
never back-fills (a long walk of the store before it can answer): ``warn_pending`` counts the
pending rows and logs ``storage.backfill_pending`` with the command to run.

Rows are taken in ``id`` order, ``batch_size`` at a time; each batch's files are walked with the
scanner of the receive path (``dicom.scan``, the values through ``rows.query_values``) and the
batch is updated in one transaction. An interrupt loses at most the batch in progress (its
transaction never commits) and a rerun starts from the rows still pending: a row is pending
while ``index_version`` is NULL or below ``INDEX_VERSION``.

A row whose file is missing or does not hold its instance stays pending and is counted (it is
reported, never fatal). Only live rows of this node are filled (all nodes' with shared storage):
another node's files are in its own data dir, and its own ``ctnode db upgrade`` fills them.
Storage is the one writer of instance rows; the update touches only the 0005 columns and only
while the row is still pending (an object stored again meanwhile already has them).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from ctnode.db.engine import READ_ONLY
from ctnode.db.models import Instance
from ctnode.dicom import scan as tags
from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import read_meta_length
from ctnode.dicom.scan import DatasetError, ScanResult, scan_dataset
from ctnode.logs import get_logger
from ctnode.storage.paths import contained_path
from ctnode.storage.rows import INDEX_VERSION, query_values

log = get_logger("ctnode.storage")

_TABLE = Instance.__table__
assert isinstance(_TABLE, Table)
#: Rows per transaction (what an interrupt can lose at most).
BATCH_SIZE = 500
#: Problems kept for the report (the counts are always complete).
MAX_PROBLEMS = 20
#: An inflated (deflated syntax) data set larger than this is reported unreadable.
_MAX_INFLATED = 1 << 32
#: A live row without the keys of the current ``INDEX_VERSION``.
_PENDING = and_(
    _TABLE.c.deleted_at.is_(None),
    or_(_TABLE.c.index_version.is_(None), _TABLE.c.index_version < INDEX_VERSION),
)
#: The update of one row (executed for a whole batch), only while it is still pending.
_FILL = update(_TABLE).where(_TABLE.c.id == bindparam("row_id"), _PENDING)


@dataclass(slots=True)
class BackfillReport:
    """What a back-fill did so far (updated after every committed batch)."""

    #: Pending rows of this node when it started.
    pending: int = 0
    #: Rows filled (committed).
    filled: int = 0
    #: Rows whose file is not in the store.
    missing: int = 0
    #: Rows whose file is not a readable Part 10 file of their instance.
    unreadable: int = 0
    #: Pending rows of other nodes (filled by their own ``ctnode db upgrade``).
    other_nodes: int = 0
    #: ``"<path>: <reason>"`` of the first ``MAX_PROBLEMS`` missing or unreadable files.
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every pending row of this node was filled."""
        return self.filled >= self.pending

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values."""
        return {
            "pending": self.pending,
            "filled": self.filled,
            "missing": self.missing,
            "unreadable": self.unreadable,
            "other_nodes": self.other_nodes,
            "problems": list(self.problems),
        }


def warn_pending(engine: Engine, node_name: str, *, shared: bool = False) -> int:
    """Count this node's pending rows (one COUNT query) and, if any, log
    ``storage.backfill_pending`` with the command that fills them; returns the count. Best
    effort: a database error is logged and counts as 0 (start-up goes on)."""
    try:
        pending = Backfill(engine, Path(), node_name, shared=shared).count()
    except SQLAlchemyError as exc:
        log.warning(
            "storage.backfill_check_failed",
            error=(str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0],
        )
        return 0
    if pending:
        log.warning(
            "storage.backfill_pending",
            rows=pending,
            command="ctnode db upgrade",
            detail=(
                "rows stored before the current index version lack query/retrieve keys: "
                "C-FIND on those keys misses them until `ctnode db upgrade` back-fills them"
            ),
        )
    return pending


class Backfill:
    """Fills the pending rows of one node from the files under *store_dir*."""

    def __init__(
        self,
        engine: Engine,
        store_dir: Path,
        node_name: str,
        *,
        shared: bool = False,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.engine = engine
        self.store_dir = store_dir
        self.node_name = node_name
        self.shared = shared
        self.batch_size = batch_size
        self.report = BackfillReport()

    def _mine(self) -> list[ColumnElement[bool]]:
        return [] if self.shared else [_TABLE.c.node_name == self.node_name]

    def count(self) -> int:
        """Count the pending rows (this node's, and the others' into the report)."""
        c = _TABLE.c
        statement = select(c.node_name, func.count()).where(_PENDING).group_by(c.node_name)
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            by_node = {name: int(n) for name, n in conn.execute(statement)}
        mine = sum(by_node.values()) if self.shared else by_node.get(self.node_name, 0)
        self.report.pending = mine
        self.report.other_nodes = sum(by_node.values()) - mine
        return mine

    def run(
        self,
        on_batch: Callable[[BackfillReport], None] | None = None,
        max_batches: int | None = None,
    ) -> BackfillReport:
        """Fill pending rows batch by batch (all of them, or *max_batches* batches); calls
        *on_batch* after each commit. SQLAlchemyError propagates (committed batches stay)."""
        if not self.report.pending:
            self.count()
        c = _TABLE.c
        select_batch = (
            select(c.id, c.sop_instance_uid, c.transfer_syntax_uid, c.path)
            .where(_PENDING, c.id > bindparam("after"), *self._mine())
            .order_by(c.id)
            .limit(self.batch_size)
        )
        after, batches = 0, 0
        while max_batches is None or batches < max_batches:
            with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                rows = conn.execute(select_batch, {"after": after}).all()
            if not rows:
                break
            after = rows[-1].id
            values: list[dict[str, Any]] = []
            failed = {"missing": 0, "unreadable": 0}
            problems: list[str] = []
            for row in rows:
                try:
                    scan = self._scan(row.path, row.transfer_syntax_uid, row.sop_instance_uid)
                except FileNotFoundError:
                    failed["missing"] += 1
                    problems.append(f"{row.path}: missing from the store")
                except (OSError, ValueError) as exc:
                    failed["unreadable"] += 1
                    problems.append(f"{row.path}: {exc}")
                else:
                    values.append({"row_id": row.id, **query_values(scan)})
            if values:
                with self.engine.begin() as conn:
                    conn.execute(_FILL, values)
            batches += 1
            report = self.report
            report.filled += len(values)
            report.missing += failed["missing"]
            report.unreadable += failed["unreadable"]
            report.problems.extend(problems[: MAX_PROBLEMS - len(report.problems)])
            if on_batch is not None:
                on_batch(report)
        log.info(
            "storage.backfill_done",
            pending=self.report.pending,
            filled=self.report.filled,
            missing=self.report.missing,
            unreadable=self.report.unreadable,
            batches=batches,
        )
        return self.report

    def _scan(self, rel: str, transfer_syntax: str, sop_instance_uid: str) -> ScanResult:
        """Walk the stored file *rel*; ValueError if it is not this instance's Part 10 file."""
        path = contained_path(self.store_dir, rel)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        failure: str | None = None
        try:
            if os.fstat(fd).st_size < 144:
                raise ValueError("not a DICOM Part 10 file (too short)")
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                offset = read_meta_length(mapped[:144])
                view = memoryview(mapped)
                data = view[offset:]
                try:
                    scan = scan_dataset(
                        data,
                        explicit_vr=is_explicit_vr(transfer_syntax),
                        deflated=transfer_syntax == DEFLATED_EXPLICIT_VR_LE,
                        max_inflated=_MAX_INFLATED,
                    )
                except DatasetError as exc:
                    # Raised below, without the traceback whose frames hold slices of the map.
                    failure = f"undecodable data set: {exc}"
                data.release()
                view.release()
        finally:
            os.close(fd)
        if failure is not None:
            raise ValueError(failure)
        found = scan.text(tags.SOP_INSTANCE_UID)
        if found != sop_instance_uid:
            raise ValueError("the file holds another SOP Instance UID than its index row")
        return scan
