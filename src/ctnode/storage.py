"""The store: path rules (pure) and durable ingest of received objects.

``Store`` is the only writer of files under ``<data_dir>/store``. An object arrives into a spool
file (preamble + file meta written when the C-STORE command arrives, data set fragments appended
as they come, hashed on the way). ``Store.ingest`` then:

1. walks the data set (structure, nesting depth) and checks it against the command;
2. ``fdatasync``s the spool file;
3. hard-links it to ``store/<Study>/<Series>/<SOPInstance>.dcm`` (via a temporary name in the
   spool and an atomic rename), and ``fsync``s the directory (and any directory it had to
   create);
4. commits the index row;

and only then answers Success. The spool link is removed afterwards. A crash at any point leaves
either nothing in ``store/`` or a spool file that ``recover_spool`` (run at start-up) resolves by
comparing it with the index: committed objects keep their store file, uncommitted ones are removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import threading
import uuid
import warnings
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ctnode.config import OnDuplicate, StorageSettings
from ctnode.db.engine import is_unavailable
from ctnode.db.models import Instance
from ctnode.db.types import utcnow
from ctnode.dicom import scan as tags
from ctnode.dicom import status
from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import file_meta, read_meta_length
from ctnode.dicom.scan import DatasetError, DatasetTooDeep, ScanResult, scan_dataset
from ctnode.dicom.uids import is_valid_uid
from ctnode.logs import get_logger

log = get_logger("ctnode.storage")

SPOOL_SUFFIX = ".part"


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


# ------------------------------------------------------------------ spool file


class SpoolFile:
    """An object being received into ``spool/``: written, hashed and counted as it arrives."""

    def __init__(self, path: Path, request: StoreRequest, max_bytes: int) -> None:
        self.path = path
        self.request = request
        self.max_bytes = max_bytes
        self.size = 0
        self.too_large = False
        self._hash = hashlib.sha256()
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
        self._hash.update(data)
        self._write_all(data)

    @property
    def sha256(self) -> str:
        """SHA-256 of the data set bytes (the file meta is not included)."""
        return self._hash.hexdigest()

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

    def ingest(self, spool: SpoolFile) -> IngestResult:
        """Validate, make durable and index a fully received object (see the module docstring).

        The spool file is always consumed: linked into the store, quarantined or removed.
        """
        try:
            result = self._ingest(spool)
        except BaseException:
            spool.discard()
            raise
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
        try:
            scan = self._scan(spool)
        except DatasetTooDeep as exc:
            return _refused(status.CANNOT_UNDERSTAND, str(exc))
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
        """Walk the spooled data set through a read-only memory map (no copy)."""
        fd = os.open(spool.path, os.O_RDONLY | os.O_CLOEXEC)
        failure: DatasetError | None = None
        try:
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    result = scan_dataset(
                        view[spool.dataset_offset :],
                        explicit_vr=is_explicit_vr(spool.request.transfer_syntax_uid),
                        deflated=spool.request.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE,
                        max_inflated=int(self.settings.max_instance_bytes),
                    )
                except DatasetError as exc:
                    # Re-raised below without its traceback, whose frames still reference
                    # slices of the map (which could not be closed while they exist).
                    failure = type(exc)(str(exc))
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
            with self.sessions() as session:
                row = session.scalar(select(Instance).where(Instance.sop_instance_uid == uid))
        except SQLAlchemyError as exc:
            return self._db_failure(exc)
        if row is not None:
            return self._duplicate(spool, scan, row, target, rel)
        try:
            self._link_into_store(spool, target)
        except OSError as exc:
            return self._os_failure(exc)
        try:
            with self.sessions() as session:
                session.add(Instance(**self._row_values(spool, scan, rel)))
                session.commit()
        except IntegrityError:
            # Another node stored the same instance between our check and our insert.
            self._unlink_from_store(target)
            return _refused(status.OUT_OF_RESOURCES, "concurrent store of the same instance")
        except SQLAlchemyError as exc:
            self._unlink_from_store(target)
            return self._db_failure(exc)
        return IngestResult(status.SUCCESS, "stored", None, rel, study, series)

    def _duplicate(
        self, spool: SpoolFile, scan: ScanResult, row: Instance, target: Path, rel: str
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
