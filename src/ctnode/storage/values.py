"""What a C-STORE asks of the store (``StoreRequest``) and what it answers (``IngestResult``)."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from ctnode.dicom import status


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """What the C-STORE command and the association say about an incoming object."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str | None = None
    source_address: str | None = None
    #: A sub-operation of one of this node's own move jobs (routes skip it by default).
    retrieved: bool = False


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer to one C-STORE: DIMSE status and what happened."""

    status: int
    outcome: str  # stored | duplicate | quarantined | overwritten | refused
    reason: str | None = None
    relpath: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Placed:
    """An object durable in ``store/`` whose index row is still to be committed: the row's
    values, the routing decisions committed with it, and the answer once committed."""

    values: dict[str, Any]
    decided: Any
    result: IngestResult


def refused(code: int, reason: str) -> IngestResult:
    """The object was not stored: *code* is the DIMSE status, *reason* says why."""
    return IngestResult(code, "refused", reason)


def refused_for_os_error(exc: OSError) -> IngestResult:
    """0xA700 for a failed write to the data dir (disk full, quota, I/O error)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return refused(status.OUT_OF_RESOURCES, "no space left in the data dir")
    return refused(status.OUT_OF_RESOURCES, f"cannot write to the data dir: {exc.strerror}")
