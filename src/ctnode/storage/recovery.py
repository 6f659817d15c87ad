"""Start-up recovery: resolve every file a crash or an abort left in ``spool/``.

A spool file is compared with the index: one that is not a complete Part 10 file is removed; one
also linked into ``store/`` keeps its store file if its row is committed (an overwrite interrupted
before its row was updated gets the row fixed: the file is the truth) and loses it otherwise. The
spool name always goes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ctnode.db.models import Instance
from ctnode.dicom import scan as tags
from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import read_meta_length
from ctnode.dicom.scan import scan_dataset
from ctnode.logs import get_logger
from ctnode.storage.paths import contained_path, instance_relpath
from ctnode.storage.spool import fsync_dir

log = get_logger("ctnode.storage")


def recover_spool(spool_dir: Path, store_dir: Path, sessions: sessionmaker[Session]) -> int:
    """Resolve every file in *spool_dir*; returns how many there were.

    One that cannot be resolved (I/O or database error) is logged and left for the next start.
    """
    count = 0
    for path in sorted(spool_dir.iterdir()):
        if not path.is_file():
            continue
        count += 1
        try:
            _recover_one(path, store_dir, sessions)
        except (OSError, SQLAlchemyError, ValueError) as exc:
            log.warning("storage.recovery_failed", spool_file=path.name, error=str(exc))
    return count


def recover_spool_file(path: Path, store_dir: Path, sessions: sessionmaker[Session]) -> None:
    """Resolve one spool file, and the temporary links made from it, while the node runs (an
    ingest worker died placing it); like start-up recovery, failures are logged and the file
    is left for the next start."""
    for candidate in [path, *sorted(path.parent.glob(f"{path.stem}.*.link{path.suffix}"))]:
        if not candidate.is_file():
            continue
        try:
            _recover_one(candidate, store_dir, sessions)
        except (OSError, SQLAlchemyError, ValueError) as exc:
            log.warning("storage.recovery_failed", spool_file=candidate.name, error=str(exc))


def _recover_one(path: Path, store_dir: Path, sessions: sessionmaker[Session]) -> None:
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
    target = _target_of(path, offset, transfer_syntax, store_dir)
    linked = target is not None and target.exists() and os.path.samefile(target, path)
    outcome = "not stored"
    if linked and target is not None:
        with sessions() as session:
            row = session.scalar(
                select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
            )
            if row is None:
                target.unlink()
                fsync_dir(target.parent)
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


def _target_of(path: Path, offset: int, transfer_syntax: str, store_dir: Path) -> Path | None:
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
        return contained_path(store_dir, rel)
    except (ValueError, OSError):
        return None
