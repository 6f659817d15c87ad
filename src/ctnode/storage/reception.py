"""One object being received: the spool file's whole life, from the C-STORE command to its answer.

``Store.receive`` hands out a ``Reception``; the caller feeds it the data set fragments, asks it
to ``complete()`` (which returns the store's answer, an ``IngestResult``) and, once that answer is
on its way to the peer, ``close()``\\ s it; ``abort()`` if the data set never completes. It is
the acceptor's ``DatasetSink`` in all but the return value of ``complete()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ctnode.dicom import status
from ctnode.storage.spool import SpoolFile
from ctnode.storage.values import IngestResult, StoreRequest, refused


class Reception:
    """An object arriving into a spool file, then ingested by the store.

    Creating it creates the spool file and writes the file meta (OSError if that fails, and then
    nothing is left behind). *ingest* is the store's: it validates, makes durable and indexes a
    complete spool file, and always leaves it closed (linked into ``store/``, quarantined, or
    just left for ``close()`` to remove).
    """

    def __init__(
        self,
        path: Path,
        request: StoreRequest,
        max_bytes: int,
        ingest: Callable[[SpoolFile], IngestResult],
    ) -> None:
        self.request = request
        #: Data set bytes received so far (all of them, also those not written).
        self.size = 0
        self._max_bytes = max_bytes
        self._ingest = ingest
        self._write_error: OSError | None = None
        self._spool = SpoolFile(path, request)

    def write(self, fragment: memoryview) -> None:
        """Take the next data set fragment (the view is only valid during the call).

        Beyond ``max_bytes`` nothing more is written: the object will be refused. A failed write
        (e.g. ENOSPC) removes the spool file at once; the rest is only counted.
        """
        self.size += len(fragment)
        if self.size > self._max_bytes or self._write_error is not None:
            return
        try:
            self._spool.write(fragment)
        except OSError as exc:
            self._write_error = exc
            self._spool.discard()

    def complete(self) -> IngestResult:
        """All fragments arrived: ingest the object and return the store's answer.

        Refused before any ingest work: 0xA700 after a failed write or beyond ``max_bytes``,
        0xC000 for an empty data set. When this returns the object is durable (or refused) and
        the spool file closed; its name in ``spool/`` stays until ``close()``, so that removing it
        need not delay the answer (durability does not depend on it: recovery removes such a
        name after a crash). If ingesting raises, the spool file is removed and the error
        propagates.
        """
        if self._write_error is not None:
            return refused(
                status.OUT_OF_RESOURCES,
                f"cannot write to the spool: {self._write_error.strerror}",
            )
        spool = self._spool
        try:
            if self.size > self._max_bytes:
                result = refused(
                    status.OUT_OF_RESOURCES,
                    f"data set of {self.size} bytes exceeds storage.max_instance_bytes",
                )
            elif self.size == 0:
                result = refused(status.CANNOT_UNDERSTAND, "empty data set")
            else:
                result = self._ingest(spool)
        except BaseException:
            spool.discard()
            raise
        spool.close()
        return result

    def close(self) -> None:
        """The answer is on its way: remove the spool file's name (idempotent)."""
        self._spool.discard()

    def abort(self) -> None:
        """The data set will not complete (association ended): remove the spool file
        (idempotent)."""
        self._spool.discard()
