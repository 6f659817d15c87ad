"""The store: durable ingest of received objects, and their removal.

``Store`` is the only writer of files under ``<data_dir>/store``. An object arrives into a spool
file through a ``Reception`` (``Store.receive``); once complete, ``Store`` ingests it:

1. asks the kernel to start writing the spool file to disk (``sync_file_range``, a hint: nothing
   relies on it), walks and hashes the data set meanwhile (from the page cache) and checks it
   against the command;
2. ``fdatasync``\\ s the spool file (which now mostly waits for the journal commit);
3. hard-links it to ``store/<Study>/<Series>/<SOPInstance>.dcm`` (via a temporary name in the
   spool and an atomic rename), and ``fsync``\\ s the directory (and any directory it had to
   create);
4. commits the index row (rows of concurrent associations share a transaction: ``GroupCommit``)
   with the routing decisions made for it (``Decisions``: one ``route_arrivals`` row);

and only then answers Success. Steps 1–3 (``Store.place``) may run in an ingest worker process
(``storage.ingest_pool``, ``storage.ingest_processes``) when another ingest is in flight; the
per-UID lock and step 4 always run in the node's process. The spool link is removed
afterwards. A crash at any point leaves either nothing in ``store/`` or a spool file that
``recovery.recover_spool`` (run at start-up) resolves by comparing it with the index: committed
objects keep their store file, uncommitted ones are removed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import OnDuplicate, StorageSettings
from ctnode.db.engine import is_unavailable
from ctnode.db.models import Instance
from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom import status
from ctnode.dicom.scan import DatasetError, DatasetTooDeep, DatasetTooLarge, ScanResult
from ctnode.dicom.uids import is_valid_uid
from ctnode.logs import get_logger
from ctnode.storage.paths import SPOOL_SUFFIX, contained_path, instance_relpath, quarantine_name
from ctnode.storage.reception import Reception
from ctnode.storage.recovery import recover_spool
from ctnode.storage.rows import (
    Decisions,
    ExistingLookup,
    ExistingRow,
    GroupCommit,
    row_values,
)
from ctnode.storage.spool import SpoolFile, fsync_dir, start_writeback
from ctnode.storage.values import (
    IngestResult,
    Placed,
    StoreRequest,
    refused,
    refused_for_os_error,
)

log = get_logger("ctnode.storage")


class Store:
    """Durable object storage under ``data_dir`` with its index rows."""

    def __init__(
        self,
        settings: StorageSettings,
        sessions: sessionmaker[Session],
        node_name: str,
        *,
        decisions: Decisions | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self.index = GroupCommit(self.engine)
        self._lookup = ExistingLookup(self.engine)
        self.node_name = node_name
        self.root = settings.store_dir
        self.spool = settings.spool_dir
        self.quarantine = settings.quarantine_dir
        self._known_dirs: set[Path] = set()
        self._root_resolved: Path | None = None
        self._dirs_lock = threading.Lock()
        self._uid_locks = [threading.Lock() for _ in range(64)]
        #: Rows decided at ingest with each new instance (routing): committed with its row.
        self.decisions = decisions
        #: Places a spool file in an ingest worker process (``ingest_pool.IngestPool``) or with
        #: the given function (``place``) in this thread.
        self.offload: (
            Callable[
                [SpoolFile, Callable[[SpoolFile], IngestResult | Placed]], IngestResult | Placed
            ]
            | None
        ) = None

    def _resolved_root(self) -> Path:
        """``store/`` with its symbolic links resolved, once (it exists after ``prepare``)."""
        resolved = self._root_resolved
        if resolved is None:
            resolved = self._root_resolved = self.root.resolve(strict=False)
        return resolved

    # -- start-up -------------------------------------------------------------------

    def prepare(self) -> int:
        """Create the directories and resolve spool leftovers; returns how many were found."""
        for directory in (self.settings.data_dir, self.root, self.spool, self.quarantine):
            directory.mkdir(parents=True, exist_ok=True)
        self._root_resolved = None  # resolved again now that it exists
        return recover_spool(self.spool, self.root, self.sessions)

    # -- receive --------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes available to ctnode in the data dir's filesystem."""
        st = os.statvfs(self.settings.data_dir)
        return st.f_bavail * st.f_frsize

    def has_room(self) -> bool:
        """True while free space is at least ``min_free_bytes``."""
        try:
            return self.free_bytes() >= int(self.settings.min_free_bytes)
        except OSError:
            return False

    def receive(self, request: StoreRequest) -> Reception:
        """Start receiving an object into a new spool file (OSError if it cannot be created).

        The ``Reception`` refuses a data set beyond ``storage.max_instance_bytes`` and hands a
        complete one back to this store to ingest (see the module docstring).
        """
        path = self.spool / f"{uuid.uuid4().hex}{SPOOL_SUFFIX}"
        return Reception(path, request, int(self.settings.max_instance_bytes), self._ingest)

    def _ingest(self, spool: SpoolFile) -> IngestResult:
        """Validate, make durable and index a complete, non-empty spool file.

        Same-UID ingests are serialised here (this process runs every association). The work
        up to the link into ``store/`` runs in an ingest worker process when ``offload`` takes
        it (concurrent associations use both cores), else in this thread; the index row is
        always committed here, so that concurrent rows share one transaction.
        """
        request = spool.request
        lock = self._uid_locks[zlib.crc32(request.sop_instance_uid.encode()) % 64]
        with lock:
            offload = self.offload
            placed = self.place(spool) if offload is None else offload(spool, self.place)
            if isinstance(placed, IngestResult):
                return placed
            return self._commit(placed)

    def place(self, spool: SpoolFile) -> IngestResult | Placed:
        """Everything before the index row: walk, hash and check the data set, make the file
        durable and link it into ``store/`` (or answer a duplicate, or refuse). The caller
        holds the SOP Instance UID's lock and commits the returned ``Placed`` row."""
        request = spool.request
        # The data goes to the disk while this thread walks and hashes it (from the page cache).
        start_writeback(spool.fd)
        decisions = self.decisions
        try:
            scan = spool.scan(
                int(self.settings.max_instance_bytes),
                tags.INDEX_TAGS if decisions is None else decisions.wanted,
            )
        except DatasetTooDeep as exc:
            return refused(status.CANNOT_UNDERSTAND, str(exc))
        except DatasetTooLarge as exc:
            return refused(status.OUT_OF_RESOURCES, f"{exc} (storage.max_instance_bytes)")
        except DatasetError as exc:
            return refused(status.CANNOT_UNDERSTAND, f"undecodable data set: {exc}")
        checked = self._check(request, scan)
        if isinstance(checked, IngestResult):
            return checked
        rel = checked
        try:
            spool.sync()
            spool.close()
        except OSError as exc:
            return refused_for_os_error(exc)
        return self._place(spool, scan, rel)

    @staticmethod
    def _check(request: StoreRequest, scan: ScanResult) -> IngestResult | PurePosixPath:
        """The object's path under ``store/``, or the refusal if the data set does not match
        its command or has no valid Study/Series Instance UID."""
        if scan.has_file_meta:
            return refused(status.CANNOT_UNDERSTAND, "data set contains file meta elements")
        ds_class = scan.text(tags.SOP_CLASS_UID)
        ds_instance = scan.text(tags.SOP_INSTANCE_UID)
        for label, uid in (("SOPClassUID", ds_class), ("SOPInstanceUID", ds_instance)):
            if uid is not None and not is_valid_uid(uid):
                return refused(status.CANNOT_UNDERSTAND, f"data set {label} is not a valid UID")
        if ds_class != request.sop_class_uid:
            return refused(
                status.DATASET_MISMATCH,
                "SOPClassUID in the data set does not match AffectedSOPClassUID",
            )
        if ds_instance != request.sop_instance_uid:
            return refused(
                status.DATASET_MISMATCH,
                "SOPInstanceUID in the data set does not match AffectedSOPInstanceUID",
            )
        study = scan.text(tags.STUDY_INSTANCE_UID)
        series = scan.text(tags.SERIES_INSTANCE_UID)
        if study is None or series is None:
            missing = "StudyInstanceUID" if study is None else "SeriesInstanceUID"
            return refused(status.DATASET_MISMATCH, f"data set has no {missing}")
        try:
            return instance_relpath(study, series, request.sop_instance_uid)
        except ValueError as exc:
            return refused(status.CANNOT_UNDERSTAND, str(exc))

    def _ensure_dir(self, directory: Path) -> None:
        """Create *directory* (and parents) durably; cached after the first call."""
        if directory in self._known_dirs:
            return
        with self._dirs_lock:
            missing: list[Path] = []
            probe = directory
            while not probe.exists():
                missing.append(probe)
                probe = probe.parent
            for path in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    path.mkdir()
                fsync_dir(path.parent)
            self._known_dirs.add(directory)

    def _link_into_store(self, spool: SpoolFile, target: Path) -> None:
        self._ensure_dir(target.parent)
        # The temporary name lives in the spool, not next to the target: a crash between the
        # link and the rename leaves a spool file, which recover_spool resolves, instead of a
        # stray link in the store that nothing would ever remove.
        tmp = self.spool / f"{spool.path.stem}.{uuid.uuid4().hex[:8]}.link{SPOOL_SUFFIX}"
        os.link(spool.path, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(target.parent)

    def _unlink_from_store(self, target: Path) -> None:
        with contextlib.suppress(OSError):
            os.unlink(target)
            fsync_dir(target.parent)

    def _place(
        self, spool: SpoolFile, scan: ScanResult, relpath: PurePosixPath
    ) -> IngestResult | Placed:
        rel = relpath.as_posix()
        target = contained_path(self.root, relpath, self._resolved_root())
        study = scan.text(tags.STUDY_INSTANCE_UID)
        series = scan.text(tags.SERIES_INSTANCE_UID)
        try:
            existing = self._lookup(spool.request.sop_instance_uid)
        except SQLAlchemyError as exc:
            return self._db_failure(exc)
        if existing is not None:
            return self._duplicate(spool, scan, existing, target, rel)
        try:
            self._link_into_store(spool, target)
        except OSError as exc:
            return refused_for_os_error(exc)
        decisions = self.decisions
        decided = None if decisions is None else decisions.decide(spool.request, scan)
        return Placed(
            row_values(spool, scan, rel, self.node_name),
            decided,
            IngestResult(status.SUCCESS, "stored", None, rel, study, series),
        )

    def _commit(self, placed: Placed) -> IngestResult:
        """Commit a placed object's index row (and its routing decisions); its store file goes
        again if that fails."""
        try:
            self.index.insert(placed.values, placed.decided)
        except IntegrityError:
            # Another node stored the same instance between our check and our insert.
            self._unlink_from_store(contained_path(self.root, placed.values["path"]))
            return refused(status.OUT_OF_RESOURCES, "concurrent store of the same instance")
        except SQLAlchemyError as exc:
            self._unlink_from_store(contained_path(self.root, placed.values["path"]))
            return self._db_failure(exc)
        return placed.result

    def _duplicate(
        self, spool: SpoolFile, scan: ScanResult, row: ExistingRow, target: Path, rel: str
    ) -> IngestResult:
        study, series = row.study_instance_uid, row.series_instance_uid
        file_present = row.deleted_at is None and contained_path(self.root, row.path).exists()
        if row.sha256 == spool.sha256 and file_present:
            return IngestResult(status.SUCCESS, "duplicate", None, row.path, study, series)
        mode = self.settings.on_duplicate
        if row.sha256 == spool.sha256 or mode is OnDuplicate.OVERWRITE or not file_present:
            try:
                self._link_into_store(spool, target)
                with self.sessions() as session:
                    values = row_values(spool, scan, rel, self.node_name)
                    session.merge(Instance(id=row.id, **values))
                    session.commit()
            except OSError as exc:
                return refused_for_os_error(exc)
            except SQLAlchemyError as exc:
                return self._db_failure(exc)
            outcome = "stored" if row.sha256 == spool.sha256 else "overwritten"
            return IngestResult(status.SUCCESS, outcome, None, rel, study, series)
        if mode is OnDuplicate.REJECT:
            return IngestResult(
                status.DATASET_MISMATCH,
                "refused",
                "an instance with this SOPInstanceUID and different content is already stored "
                "(storage.on_duplicate: reject)",
            )
        name = quarantine_name(spool.request.sop_instance_uid, spool.sha256, datetime.now(UTC))
        try:
            os.link(spool.path, self.quarantine / name)
            fsync_dir(self.quarantine)
        except OSError as exc:
            return refused_for_os_error(exc)
        return IngestResult(
            status.SUCCESS, "quarantined", f"quarantine/{name}", row.path, study, series
        )

    @staticmethod
    def _db_failure(exc: SQLAlchemyError) -> IngestResult:
        """0xA700 while the index database is unavailable; any other database error raises."""
        if is_unavailable(exc):
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            return refused(status.OUT_OF_RESOURCES, f"index database unavailable: {reason}")
        raise exc

    # -- retention (storage commitment) --------------------------------------------------

    def remove(self, sop_instance_uid: str, reason: str) -> bool:
        """Remove a stored instance: unlink its file, fsync the directory, set ``deleted_at``.

        Returns False when there is nothing to remove here: not indexed, already removed, or
        its file is on another node's disk (``storage.shared`` false). The file goes first: a
        crash in between leaves an index row whose file is missing, which the next removal
        (or a new copy received) resolves; never a file the index has forgotten.
        """
        lock = self._uid_locks[zlib.crc32(sop_instance_uid.encode()) % 64]
        with lock:
            with self.sessions() as session:
                row = session.scalar(
                    select(Instance).where(
                        Instance.sop_instance_uid == sop_instance_uid,
                        Instance.deleted_at.is_(None),
                    )
                )
            if row is None or (row.node_name != self.node_name and not self.settings.shared):
                return False
            target = contained_path(self.root, row.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(target.parent)
            with self.sessions() as session:
                session.execute(
                    update(Instance)
                    .where(Instance.id == row.id, Instance.deleted_at.is_(None))
                    .values(deleted_at=utcnow())
                )
                session.commit()
        log.info("storage.removed", sop_instance_uid=sop_instance_uid, path=row.path, reason=reason)
        return True
