"""A file in ``spool/``: an object written as it arrives, then walked, hashed and synced.

The file is a Part 10 file: preamble and file meta written when it is created, data set fragments
appended after. Nothing here decides whether the object is kept (``store.Store`` does) or how many
bytes may arrive (``reception.Reception`` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ctnode.dicom.contexts import DEFLATED_EXPLICIT_VR_LE, is_explicit_vr
from ctnode.dicom.filemeta import file_meta
from ctnode.dicom.scan import INDEX_TAGS, DatasetError, ScanResult, scan_dataset
from ctnode.storage.values import StoreRequest

_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: Spool files up to this size are mapped with MAP_POPULATE and hashed in one call.
_POPULATE_LIMIT = 64 * 1024 * 1024
#: Larger ones are hashed this much at a time, each window unmapped from our page tables after
#: (the pages stay in the page cache), so that a 4 GiB object does not add 4 GiB to the RSS.
_HASH_WINDOW = 8 * 1024 * 1024


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


def fsync_dir(path: Path) -> None:
    """Make *path*'s directory entries durable (a created, renamed or removed name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class SpoolFile:
    """An object being received into ``spool/``: created with its file meta, appended to as it
    arrives (OSError, e.g. ENOSPC, propagates from every step)."""

    def __init__(self, path: Path, request: StoreRequest) -> None:
        self.path = path
        self.request = request
        #: Data set bytes written (the file meta not counted).
        self.size = 0
        #: SHA-256 of the data set bytes (not the file meta), set by ``scan``.
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

    @classmethod
    def adopt(cls, path: Path, request: StoreRequest, dataset_offset: int, size: int) -> SpoolFile:
        """A complete spool file another process wrote (an ingest worker places it): opened
        read-only, which is all walking, hashing and syncing it need."""
        spool = cls.__new__(cls)
        spool.path, spool.request = path, request
        spool.size, spool.sha256, spool.dataset_offset = size, "", dataset_offset
        spool.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return spool

    def _write_all(self, data: memoryview) -> None:
        while data:
            written = os.write(self.fd, data)
            data = data[written:]

    def write(self, data: memoryview) -> None:
        """Append a data set fragment."""
        self.size += len(data)
        self._write_all(data)

    def scan(self, max_inflated: int, wanted: frozenset[int] = INDEX_TAGS) -> ScanResult:
        """Walk the data set and hash it through a read-only memory map of the file (no copy).

        Sets ``sha256`` when the walk succeeds; raises ``DatasetError`` (or a subclass) when it
        does not, or when a deflated data set inflates beyond *max_inflated* bytes.
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        failure: DatasetError | None = None
        try:
            size = os.fstat(fd).st_size
            small = size <= _POPULATE_LIMIT
            # A small (cached) file is prefaulted in one call rather than page by page.
            flags = mmap.MAP_SHARED | (_MAP_POPULATE if small else 0)
            with mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ) as mapped:
                view = memoryview(mapped)
                data = view[self.dataset_offset :]
                try:
                    result = scan_dataset(
                        data,
                        explicit_vr=is_explicit_vr(self.request.transfer_syntax_uid),
                        deflated=self.request.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE,
                        max_inflated=max_inflated,
                        wanted=wanted,
                    )
                except DatasetError as exc:
                    # Re-raised below without its traceback, whose frames still reference
                    # slices of the map (which could not be closed while they exist).
                    failure = type(exc)(str(exc))
                else:
                    self.sha256 = _sha256_of_map(mapped, view, self.dataset_offset, small)
                data.release()
                view.release()
        finally:
            os.close(fd)
        if failure is not None:
            raise failure
        return result

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
