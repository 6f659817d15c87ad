"""The store: path rules (pure) and durable ingest of received objects.

``Store`` is the only writer of files under ``<data_dir>/store``. An object arrives into a spool
file (preamble + file meta written when the C-STORE command arrives, data set fragments appended
as they come). ``Store.ingest`` then:

1. asks the kernel to start writing the spool file to disk (``sync_file_range``, a hint: nothing
   relies on it), walks and hashes the data set meanwhile (from the page cache) and checks it
   against the command;
2. ``fdatasync``s the spool file (which now mostly waits for the journal commit);
3. hard-links it to ``store/<Study>/<Series>/<SOPInstance>.dcm`` (via a temporary name in the
   spool and an atomic rename), and ``fsync``s the directory (and any directory it had to
   create);
4. commits the index row (rows of concurrent associations share a transaction: ``GroupCommit``);

and only then answers Success. The spool link is removed afterwards. A crash at any point leaves
either nothing in ``store/`` or a spool file that ``recover_spool`` (run at start-up) resolves by
comparing it with the index: committed objects keep their store file, uncommitted ones are removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import sys
import threading
import uuid
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from sqlalchemy import Engine, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import OnDuplicate, StorageSettings
from ctnode.db.engine import READ_ONLY, is_unavailable
from ctnode.db.models import Instance
from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom import status
from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import file_meta, read_meta_length
from ctnode.dicom.scan import (
    DatasetError,
    DatasetTooDeep,
    DatasetTooLarge,
    ScanResult,
    scan_dataset,
)
from ctnode.dicom.uids import is_valid_uid
from ctnode.logs import get_logger

log = get_logger("ctnode.storage")

SPOOL_SUFFIX = ".part"
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _writeback_starter() -> Callable[[int], None]:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` where Linux has it, else a no-op.

    It starts writing a file's dirty pages without waiting for them: the ``fdatasync`` that follows
    (and that durability relies on) then has less left to wait for.
    """
    if not sys.platform.startswith("linux"):
        return lambda fd: None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd: None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start(fd: int) -> None:
        func(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; a failure only loses the head start

    return start


start_writeback = _writeback_starter()

#: Spool files up to this size are mapped with MAP_POPULATE and hashed in one call.
_POPULATE_LIMIT = 64 * 1024 * 1024
#: Larger ones are hashed this much at a time, each window unmapped from our page tables after
#: (the pages stay in the page cache), so that a 4 GiB object does not add 4 GiB to the RSS.
_HASH_WINDOW = 8 * 1024 * 1024


def _sha256_of_map(mapped: mmap.mmap, view: memoryview, start: int, small: bool) -> str:
    """SHA-256 of ``view[start:]`` (hashlib releases the GIL while it hashes)."""
    if small:
        return hashlib.sha256(view[start:]).hexdigest()
    digest = hashlib.sha256()
    end = len(view)
    pos = start
    while pos < end:
        stop = min(end, (pos // _HASH_WINDOW + 1) * _HASH_WINDOW)
        digest.update(view[pos:stop])
        page = pos - pos % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, page, stop - page)
        pos = stop
    return digest.hexdigest()


# The receive path's two statements, in Core: built once, compiled once (the ORM's unit of work
# cost more than the SQLite commit itself per object).
_INSTANCES = Instance.__table__
assert isinstance(_INSTANCES, Table)
_SELECT_EXISTING = select(
    _INSTANCES.c.id,
    _INSTANCES.c.sha256,
    _INSTANCES.c.path,
    _INSTANCES.c.deleted_at,
    _INSTANCES.c.study_instance_uid,
    _INSTANCES.c.series_instance_uid,
).where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(_INSTANCES)


# ------------------------------------------------------------------ pure path rules


def instance_relpath(study_uid: str, series_uid: str, sop_instance_uid: str) -> PurePosixPath:
    """``<Study>/<Series>/<SOPInstance>.dcm``; ValueError unless all three are valid UIDs."""
    for label, uid in (
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
        ("SOPInstanceUID", sop_instance_uid),
    ):
        if not is_valid_uid(uid):
            raise ValueError(f"{label} {uid!r} is not a valid UID")
    return PurePosixPath(study_uid, series_uid, f"{sop_instance_uid}.dcm")


def contained_path(root: Path, relative: PurePosixPath | str) -> Path:
    """``root / relative``; ValueError if the result would leave *root*."""
    parts = str(relative).split("/")
    if any(part in ("", ".", "..") or "\x00" in part for part in parts):
        raise ValueError(f"path {str(relative)!r} is not a plain relative path")
    rel = PurePosixPath(*parts)
    path = root.joinpath(*rel.parts)
    if not path.resolve(strict=False).is_relative_to(root.resolve(strict=False)):
        raise ValueError(f"path {str(relative)!r} leaves {root}")
    return path


def quarantine_name(sop_instance_uid: str, sha256: str, now: datetime) -> str:
    """File name for a conflicting duplicate kept aside."""
    return f"{sop_instance_uid}.{now.strftime('%Y%m%dT%H%M%S%fZ')}.{sha256[:12]}.dcm"


# ------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """What the C-STORE command and the association say about an incoming object."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str | None = None
    source_address: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer to one C-STORE: DIMSE status and what happened."""

    status: int
    outcome: str  # stored | duplicate | quarantined | overwritten | refused
    reason: str | None = None
    relpath: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


def _refused(code: int, reason: str) -> IngestResult:
    return IngestResult(code, "refused", reason)


@dataclass(frozen=True, slots=True)
class _Existing:
    """The index row already holding an incoming SOP Instance UID."""

    id: int
    sha256: str
    path: str
    deleted_at: datetime | None
    study_instance_uid: str
    series_instance_uid: str


# ------------------------------------------------------------------ spool file


class SpoolFile:
    """An object being received into ``spool/``: written, hashed and counted as it arrives."""

    def __init__(self, path: Path, request: StoreRequest, max_bytes: int) -> None:
        self.path = path
        self.request = request
        self.max_bytes = max_bytes
        self.size = 0
        self.too_large = False
        #: SHA-256 of the data set bytes (not the file meta), set by ``Store.ingest``.
        self.sha256 = ""
        header = file_meta(
            request.sop_class_uid,
            request.sop_instance_uid,
            request.transfer_syntax_uid,
            request.calling_ae,
        )
        self.dataset_offset = len(header)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            self._write_all(memoryview(header))
        except OSError:
            self.discard()
            raise

    def _write_all(self, data: memoryview) -> None:
        while data:
            written = os.write(self.fd, data)
            data = data[written:]

    def write(self, data: memoryview) -> None:
        """Append a data set fragment. OSError (e.g. ENOSPC) propagates."""
        self.size += len(data)
        if self.size > self.max_bytes:
            self.too_large = True
            return
        self._write_all(data)

    def sync(self) -> None:
        """Make the written bytes durable."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and remove the spool file (idempotent)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# ------------------------------------------------------------------ index rows


@dataclass(slots=True)
class _PendingRow:
    values: dict[str, Any]
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Inserts index rows; rows of concurrent callers share one transaction (one log flush).

    A caller that finds no commit in progress commits its row at once (a lone association pays
    nothing for this). Callers arriving while a commit is in progress queue their rows; when it
    ends, one of them commits the whole queue in one transaction. Each caller returns only once
    *its* row is committed, or raises what committing it raised: an IntegrityError fails only
    the row that caused it (the batch is retried row by row); any other error fails the batch.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._queue: list[_PendingRow] = []
        self._busy = False

    def insert(self, values: dict[str, Any]) -> None:
        """Insert one row and commit it (durably, as the engine commits)."""
        mine = _PendingRow(values)
        with self._cond:
            self._queue.append(mine)
            while self._busy and not mine.done:
                self._cond.wait()
            if not mine.done:
                batch, self._queue = self._queue, []
                self._busy = True
        if not mine.done:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error

    def _commit(self, batch: list[_PendingRow]) -> None:
        try:
            self._transaction(batch)
        except IntegrityError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for row in batch:
                    try:
                        self._transaction([row])
                    except Exception as row_exc:  # handed to that row's caller
                        row.error = row_exc
        except BaseException as exc:
            for row in batch:
                row.error = exc
        for row in batch:
            row.done = True

    def _transaction(self, rows: list[_PendingRow]) -> None:
        with self.engine.begin() as conn:
            conn.execute(_INSERT_INSTANCE, [row.values for row in rows])


# ------------------------------------------------------------------ the store


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode_text(raw: bytes | None, charset: bytes | None) -> str | None:
    if not raw:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        terms = (
            charset.decode("ascii", errors="replace").strip("\x00 ").split("\\") if charset else []
        )
        try:
            encodings = convert_encodings(terms or ["ISO_IR 6"])
            text = decode_bytes(raw, encodings, {0x5E, 0x3D})
        except Exception:  # a broken charset must not refuse the object
            text = raw.decode("latin-1")
    return text.strip("\x00 ") or None


def _int_or_none(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


class Store:
    """Durable object storage under ``data_dir`` with its index rows."""

    def __init__(
        self,
        settings: StorageSettings,
        sessions: sessionmaker[Session],
        node_name: str,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self.index = GroupCommit(self.engine)
        self.node_name = node_name
        self.root = settings.store_dir
        self.spool = settings.spool_dir
        self.quarantine = settings.quarantine_dir
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._uid_locks = [threading.Lock() for _ in range(64)]

    # -- start-up -------------------------------------------------------------------

    def prepare(self) -> int:
        """Create the directories and resolve spool leftovers; returns how many were found."""
        for directory in (self.settings.data_dir, self.root, self.spool, self.quarantine):
            directory.mkdir(parents=True, exist_ok=True)
        return self.recover_spool()

    def recover_spool(self) -> int:
        """Resolve every spool file left by a crash or an abort (see the module docstring)."""
        count = 0
        for path in sorted(self.spool.iterdir()):
            if not path.is_file():
                continue
            count += 1
            try:
                self._recover_one(path)
            except (OSError, SQLAlchemyError, ValueError) as exc:
                log.warning("storage.recovery_failed", spool_file=path.name, error=str(exc))
        return count

    def _recover_one(self, path: Path) -> None:
        try:
            meta = read_file_meta_info(path)
            sop_instance_uid = str(meta.MediaStorageSOPInstanceUID)
            transfer_syntax = str(meta.TransferSyntaxUID)
            with path.open("rb") as fh:
                offset = read_meta_length(fh.read(4096))
                fh.seek(offset)
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except (ValueError, OSError, AttributeError, InvalidDicomError):
            path.unlink()
            log.info("storage.spool_removed", spool_file=path.name, reason="incomplete")
            return
        target = self._target_of(path, offset, transfer_syntax)
        linked = target is not None and target.exists() and os.path.samefile(target, path)
        outcome = "not stored"
        if linked and target is not None:
            with self.sessions() as session:
                row = session.scalar(
                    select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
                )
                if row is None:
                    target.unlink()
                    _fsync_dir(target.parent)
                    outcome = "uncommitted, removed from store"
                elif row.sha256 != digest:
                    # An overwrite interrupted before its row was updated: the file is the truth.
                    row.sha256 = digest
                    row.size_bytes = target.stat().st_size - offset
                    session.commit()
                    outcome = "overwrite completed"
                else:
                    outcome = "committed"
        path.unlink()
        log.info("storage.spool_removed", spool_file=path.name, reason=outcome)

    def _target_of(self, path: Path, offset: int, transfer_syntax: str) -> Path | None:
        """Where the spooled object would be stored, or None if that cannot be told."""
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
            scan = scan_dataset(
                data,
                explicit_vr=is_explicit_vr(transfer_syntax),
                deflated=transfer_syntax == DEFLATED_EXPLICIT_VR_LE,
                wanted={tags.STUDY_INSTANCE_UID, tags.SERIES_INSTANCE_UID, tags.SOP_INSTANCE_UID},
            )
            rel = instance_relpath(
                scan.text(tags.STUDY_INSTANCE_UID) or "",
                scan.text(tags.SERIES_INSTANCE_UID) or "",
                scan.text(tags.SOP_INSTANCE_UID) or "",
            )
            return contained_path(self.root, rel)
        except (ValueError, OSError):
            return None

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

    def open_spool(self, request: StoreRequest) -> SpoolFile:
        """A new spool file for an incoming object (OSError if it cannot be created)."""
        path = self.spool / f"{uuid.uuid4().hex}{SPOOL_SUFFIX}"
        return SpoolFile(path, request, int(self.settings.max_instance_bytes))

    def ingest(self, spool: SpoolFile, *, keep_spool_link: bool = False) -> IngestResult:
        """Validate, make durable and index a fully received object (see the module docstring).

        The spool file is always consumed: linked into the store, quarantined or removed. With
        *keep_spool_link* its name in ``spool/`` is left for the caller to ``discard()`` once it
        has answered (the object's durability does not depend on it: ``recover_spool`` removes
        such a link after a crash).
        """
        try:
            result = self._ingest(spool)
        except BaseException:
            spool.discard()
            raise
        if keep_spool_link:
            spool.close()
        else:
            spool.discard()
        return result

    def _ingest(self, spool: SpoolFile) -> IngestResult:
        request = spool.request
        if spool.too_large:
            return _refused(
                status.OUT_OF_RESOURCES,
                f"data set of {spool.size} bytes exceeds storage.max_instance_bytes",
            )
        if spool.size == 0:
            return _refused(status.CANNOT_UNDERSTAND, "empty data set")
        # The data goes to the disk while this thread walks and hashes it (from the page cache).
        start_writeback(spool.fd)
        try:
            scan = self._scan(spool)
        except DatasetTooDeep as exc:
            return _refused(status.CANNOT_UNDERSTAND, str(exc))
        except DatasetTooLarge as exc:
            return _refused(status.OUT_OF_RESOURCES, f"{exc} (storage.max_instance_bytes)")
        except DatasetError as exc:
            return _refused(status.CANNOT_UNDERSTAND, f"undecodable data set: {exc}")
        checked = self._check(request, scan)
        if isinstance(checked, IngestResult):
            return checked
        rel = checked
        try:
            spool.sync()
            spool.close()
        except OSError as exc:
            return self._os_failure(exc)
        lock = self._uid_locks[zlib.crc32(request.sop_instance_uid.encode()) % 64]
        with lock:
            return self._place(spool, scan, rel)

    def _scan(self, spool: SpoolFile) -> ScanResult:
        """Walk and hash the spooled data set through a read-only memory map (no copy).

        Sets ``spool.sha256`` when the walk succeeds.
        """
        fd = os.open(spool.path, os.O_RDONLY | os.O_CLOEXEC)
        failure: DatasetError | None = None
        try:
            size = os.fstat(fd).st_size
            small = size <= _POPULATE_LIMIT
            # A small (cached) file is prefaulted in one call rather than page by page.
            flags = mmap.MAP_SHARED | (_MAP_POPULATE if small else 0)
            with mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ) as mapped:
                view = memoryview(mapped)
                data = view[spool.dataset_offset :]
                try:
                    result = scan_dataset(
                        data,
                        explicit_vr=is_explicit_vr(spool.request.transfer_syntax_uid),
                        deflated=spool.request.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE,
                        max_inflated=int(self.settings.max_instance_bytes),
                    )
                except DatasetError as exc:
                    # Re-raised below without its traceback, whose frames still reference
                    # slices of the map (which could not be closed while they exist).
                    failure = type(exc)(str(exc))
                else:
                    spool.sha256 = _sha256_of_map(mapped, view, spool.dataset_offset, small)
                data.release()
                view.release()
        finally:
            os.close(fd)
        if failure is not None:
            raise failure
        return result

    @staticmethod
    def _check(request: StoreRequest, scan: ScanResult) -> IngestResult | PurePosixPath:
        if scan.has_file_meta:
            return _refused(status.CANNOT_UNDERSTAND, "data set contains file meta elements")
        ds_class = scan.text(tags.SOP_CLASS_UID)
        ds_instance = scan.text(tags.SOP_INSTANCE_UID)
        for label, uid in (("SOPClassUID", ds_class), ("SOPInstanceUID", ds_instance)):
            if uid is not None and not is_valid_uid(uid):
                return _refused(status.CANNOT_UNDERSTAND, f"data set {label} is not a valid UID")
        if ds_class != request.sop_class_uid:
            return _refused(
                status.DATASET_MISMATCH,
                "SOPClassUID in the data set does not match AffectedSOPClassUID",
            )
        if ds_instance != request.sop_instance_uid:
            return _refused(
                status.DATASET_MISMATCH,
                "SOPInstanceUID in the data set does not match AffectedSOPInstanceUID",
            )
        study = scan.text(tags.STUDY_INSTANCE_UID)
        series = scan.text(tags.SERIES_INSTANCE_UID)
        if study is None or series is None:
            missing = "StudyInstanceUID" if study is None else "SeriesInstanceUID"
            return _refused(status.DATASET_MISMATCH, f"data set has no {missing}")
        try:
            return instance_relpath(study, series, request.sop_instance_uid)
        except ValueError as exc:
            return _refused(status.CANNOT_UNDERSTAND, str(exc))

    @staticmethod
    def _os_failure(exc: OSError) -> IngestResult:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _refused(status.OUT_OF_RESOURCES, "no space left in the data dir")
        return _refused(status.OUT_OF_RESOURCES, f"cannot write to the data dir: {exc.strerror}")

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
                _fsync_dir(path.parent)
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
        _fsync_dir(target.parent)

    def _unlink_from_store(self, target: Path) -> None:
        with contextlib.suppress(OSError):
            os.unlink(target)
            _fsync_dir(target.parent)

    def _row_values(self, spool: SpoolFile, scan: ScanResult, rel: str) -> dict[str, Any]:
        request = spool.request
        charset = scan.values.get(tags.SPECIFIC_CHARACTER_SET)
        return {
            "sop_instance_uid": request.sop_instance_uid,
            "sop_class_uid": request.sop_class_uid,
            "study_instance_uid": scan.text(tags.STUDY_INSTANCE_UID),
            "series_instance_uid": scan.text(tags.SERIES_INSTANCE_UID),
            "patient_id": _decode_text(scan.values.get(tags.PATIENT_ID), charset),
            "patient_name": _decode_text(scan.values.get(tags.PATIENT_NAME), charset),
            "study_date": (scan.text(tags.STUDY_DATE) or "")[:8] or None,
            "study_time": (scan.text(tags.STUDY_TIME) or "")[:16] or None,
            "accession_number": (
                _decode_text(scan.values.get(tags.ACCESSION_NUMBER), charset) or ""
            )[:16]
            or None,
            "study_description": (
                _decode_text(scan.values.get(tags.STUDY_DESCRIPTION), charset) or ""
            )[:64]
            or None,
            "series_description": (
                _decode_text(scan.values.get(tags.SERIES_DESCRIPTION), charset) or ""
            )[:64]
            or None,
            "modality": (scan.text(tags.MODALITY) or "")[:16] or None,
            "series_number": _int_or_none(scan.text(tags.SERIES_NUMBER)),
            "instance_number": _int_or_none(scan.text(tags.INSTANCE_NUMBER)),
            "transfer_syntax_uid": request.transfer_syntax_uid,
            "size_bytes": spool.size,
            "sha256": spool.sha256,
            "calling_ae": request.calling_ae,
            "source_address": request.source_address,
            "received_at": utcnow(),
            "path": rel,
            "node_name": self.node_name,
            "deleted_at": None,
        }

    def _place(self, spool: SpoolFile, scan: ScanResult, relpath: PurePosixPath) -> IngestResult:
        rel = relpath.as_posix()
        target = contained_path(self.root, relpath)
        uid = spool.request.sop_instance_uid
        study = scan.text(tags.STUDY_INSTANCE_UID)
        series = scan.text(tags.SERIES_INSTANCE_UID)
        try:
            # A read-only transaction: on SQLite it neither takes nor waits for the write lock.
            with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                row = conn.execute(_SELECT_EXISTING, {"uid": uid}).first()
        except SQLAlchemyError as exc:
            return self._db_failure(exc)
        if row is not None:
            existing = _Existing(
                row.id,
                row.sha256,
                row.path,
                row.deleted_at,
                row.study_instance_uid,
                row.series_instance_uid,
            )
            return self._duplicate(spool, scan, existing, target, rel)
        try:
            self._link_into_store(spool, target)
        except OSError as exc:
            return self._os_failure(exc)
        try:
            self.index.insert(self._row_values(spool, scan, rel))
        except IntegrityError:
            # Another node stored the same instance between our check and our insert.
            self._unlink_from_store(target)
            return _refused(status.OUT_OF_RESOURCES, "concurrent store of the same instance")
        except SQLAlchemyError as exc:
            self._unlink_from_store(target)
            return self._db_failure(exc)
        return IngestResult(status.SUCCESS, "stored", None, rel, study, series)

    def _duplicate(
        self, spool: SpoolFile, scan: ScanResult, row: _Existing, target: Path, rel: str
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
                    session.merge(Instance(id=row.id, **self._row_values(spool, scan, rel)))
                    session.commit()
            except OSError as exc:
                return self._os_failure(exc)
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
            _fsync_dir(self.quarantine)
        except OSError as exc:
            return self._os_failure(exc)
        return IngestResult(
            status.SUCCESS, "quarantined", f"quarantine/{name}", row.path, study, series
        )

    @staticmethod
    def _db_failure(exc: SQLAlchemyError) -> IngestResult:
        if is_unavailable(exc):
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            return _refused(status.OUT_OF_RESOURCES, f"index database unavailable: {reason}")
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
                _fsync_dir(target.parent)
            with self.sessions() as session:
                session.execute(
                    update(Instance)
                    .where(Instance.id == row.id, Instance.deleted_at.is_(None))
                    .values(deleted_at=utcnow())
                )
                session.commit()
        log.info("storage.removed", sop_instance_uid=sop_instance_uid, path=row.path, reason=reason)
        return True
