"""Choosing the files of a push: walk the paths, probe each file's meta group.

Light on imports on purpose: ``ctnode push`` runs this in the CLI before the job is written, so
it reads the meta group itself (``ctnode.dicom.filemeta``) and calls pydicom only for the rare
file whose meta group is not in the plain form (no group length, implicit VR...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ctnode.dicom.filemeta import IrregularMeta, NotPart10, read_file_meta
from ctnode.dicom.uids import is_valid_uid
from ctnode.queue.jobs import NewItem

NOT_PART10 = "not a DICOM Part 10 file"
NO_UIDS = "file meta lacks valid SOP Class/Instance or Transfer Syntax UID"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path that is not pushed, and why."""

    path: str
    reason: str


def _lenient_meta(path: Path) -> tuple[str, str, str]:
    """(SOP class, SOP instance, transfer syntax) read by pydicom (raises as it does)."""
    import warnings

    from pydicom.filereader import read_file_meta_info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = read_file_meta_info(path)
    return (
        str(meta.get("MediaStorageSOPClassUID", "") or ""),
        str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
        str(meta.get("TransferSyntaxUID", "") or ""),
    )


def probe_file(path: Path) -> NewItem | Skipped:
    """Read a file's meta information: an item to push, or why it is skipped."""
    try:
        with open(path, "rb") as fh:
            meta = read_file_meta(fh)
        uids = (meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid)
    except NotPart10:
        return Skipped(str(path), NOT_PART10)
    except IrregularMeta:
        from pydicom.errors import InvalidDicomError

        try:
            uids = _lenient_meta(path)
        except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, AttributeError):
            return Skipped(str(path), NOT_PART10)
        except OSError as exc:
            return Skipped(str(path), f"unreadable: {exc.strerror or exc}")
    except OSError as exc:
        return Skipped(str(path), f"unreadable: {exc.strerror or exc}")
    if not all(is_valid_uid(uid) for uid in uids):
        return Skipped(str(path), NO_UIDS)
    return NewItem(*uids, str(path.absolute()))


def collect_files(
    paths: Iterable[Path], cwd: Path | None = None
) -> tuple[list[NewItem], list[Skipped]]:
    """Every DICOM file under *paths* (directories recursively, sorted); the rest skipped.

    Relative *paths* are taken from *cwd* when given (another process's working directory),
    and a skipped file is named as it would be from there: as given, under the path given.
    """
    items: list[NewItem] = []
    skipped: list[Skipped] = []

    def walk(path: Path) -> Iterator[Path]:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path

    for top in paths:
        real = top if cwd is None else cwd / top
        if not real.exists():
            skipped.append(Skipped(str(top), "does not exist"))
            continue
        for path in walk(real):
            probed = probe_file(path)
            if isinstance(probed, NewItem):
                items.append(probed)
            elif cwd is None:
                skipped.append(probed)
            else:
                skipped.append(Skipped(str(top / path.relative_to(real)), probed.reason))
    return items, skipped
