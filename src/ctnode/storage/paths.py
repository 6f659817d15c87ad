"""Where stored objects go: file names from UIDs and the containment check (pure, no I/O).

A stored object's path is ``<Study>/<Series>/<SOPInstance>.dcm`` under ``store/``, built only
from valid UIDs; a path read back from the index is joined only if it stays under its root.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path, PurePosixPath

from ctnode.dicom.uids import is_valid_uid

#: Every file in ``spool/`` ends with this (``recover_spool`` resolves them all at start-up).
SPOOL_SUFFIX = ".part"


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


def contained_path(
    root: Path, relative: PurePosixPath | str, resolved_root: Path | None = None
) -> Path:
    """``root / relative``; ValueError if the result would leave *root* (symbolic links
    followed). *resolved_root*: ``root.resolve()``, when the caller keeps it (the store's root
    is resolved once, not for every object)."""
    parts = str(relative).split("/")
    if any(part in ("", ".", "..") or "\x00" in part for part in parts):
        raise ValueError(f"path {str(relative)!r} is not a plain relative path")
    path = root.joinpath(*parts)
    base = resolved_root if resolved_root is not None else root.resolve(strict=False)
    if not path.resolve(strict=False).is_relative_to(base):
        raise ValueError(f"path {str(relative)!r} leaves {root}")
    return path


def quarantine_name(sop_instance_uid: str, sha256: str, now: datetime) -> str:
    """File name for a conflicting duplicate kept aside."""
    return f"{sop_instance_uid}.{now.strftime('%Y%m%dT%H%M%S%fZ')}.{sha256[:12]}.dcm"
