"""DIMSE status codes: names, categories and what a failure means for a retry.

Pure functions over integers; used by the SCP to answer and by the job queue to decide whether an
item is delivered, should be retried later (transient) or has failed for good (permanent).
"""

from __future__ import annotations

from enum import StrEnum

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = 0xFF00
PENDING_WARNING = 0xFF01

# Statuses ctnode's own SCP answers.
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
UNRECOGNIZED_OPERATION = 0x0211
RESOURCE_LIMITATION = 0x0213
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
SUBOPERATIONS_FAILED = 0xB000

_NAMES: dict[int, str] = {
    0x0000: "Success",
    0x0105: "No such attribute",
    0x0106: "Invalid attribute value",
    0x0107: "Attribute list error",
    0x0110: "Processing failure",
    0x0111: "Duplicate SOP instance",
    0x0112: "No such SOP instance",
    0x0113: "No such event type",
    0x0114: "No such argument",
    0x0115: "Invalid argument value",
    0x0117: "Invalid object instance",
    0x0118: "No such SOP class",
    0x0119: "Class-instance conflict",
    0x0120: "Missing attribute",
    0x0121: "Missing attribute value",
    0x0122: "Refused: SOP class not supported",
    0x0123: "No such action",
    0x0124: "Refused: not authorised",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognised operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources (unable to calculate number of matches)",
    0xA702: "Refused: out of resources (unable to perform sub-operations)",
    0xA711: "Refused: out of resources (disk)",
    0xA712: "Refused: out of resources (memory)",
    0xA801: "Refused: move destination unknown",
    0xA900: "Error: data set does not match SOP class",
    0xB000: "Warning: sub-operations complete, one or more failures (or coercion of data elements)",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0xC000: "Error: cannot understand",
    0xFE00: "Cancelled",
    0xFF00: "Pending",
    0xFF01: "Pending (optional keys not supported)",
}


class Category(StrEnum):
    """What a status means to whoever sent the request."""

    SUCCESS = "success"
    WARNING = "warning"
    PENDING = "pending"
    CANCEL = "cancel"
    FAILURE = "failure"


class StatusMeaning(StrEnum):
    """What the final status of an outbound request means for the request: delivered or not,
    and whether sending it again may help (see ``meaning``)."""

    #: Delivered.
    SUCCESS = "success"
    #: Delivered, with a warning the operator may want to read.
    WARNING = "warning"
    #: Not delivered; the same request may succeed later (out of resources, busy).
    TRANSIENT_FAILURE = "transient failure"
    #: Not delivered, and sending it again will not help (refused, does not match SOP class).
    PERMANENT_FAILURE = "permanent failure"


def category(status: int) -> Category:
    """Category of a DIMSE status code (PS3.7 Annex C)."""
    if status == SUCCESS:
        return Category.SUCCESS
    if status in (PENDING, PENDING_WARNING):
        return Category.PENDING
    if status == CANCEL:
        return Category.CANCEL
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return Category.WARNING
    return Category.FAILURE


def meaning(status: int) -> StatusMeaning:
    """Classify the final status of an outbound request for the retry policy.

    Transient: 0xA7xx (out of resources), 0x0213 (resource limitation), 0x0210 (duplicate
    invocation), 0xFE00 (cancelled by the peer). Everything else that is a failure is permanent:
    0x0122 (SOP class not supported), 0x0124 (not authorised), 0xA9xx (does not match SOP
    class), 0xCxxx (cannot understand) and statuses ctnode does not know.
    """
    cat = category(status)
    if cat is Category.SUCCESS:
        return StatusMeaning.SUCCESS
    if cat is Category.WARNING:
        return StatusMeaning.WARNING
    if (status & 0xFF00) == 0xA700 or status in (0x0213, 0x0210, CANCEL):
        return StatusMeaning.TRANSIENT_FAILURE
    return StatusMeaning.PERMANENT_FAILURE


def group(status: int) -> str:
    """A low-cardinality label for metrics: ``0xA7xx``, ``0xCxxx``, ``0x0122`` ..."""
    if status == SUCCESS:
        return "success"
    high = status & 0xFF00
    if high in (0xA700, 0xA900, 0xB000):
        return f"0x{high >> 8:02X}xx"
    if (status & 0xF000) == 0xC000:
        return "0xCxxx"
    return f"0x{status:04X}"


def hex_status(status: int | None) -> str | None:
    """``0xA700`` style; None stays None."""
    return None if status is None else f"0x{status:04X}"


def describe(status: int) -> str:
    """``0xA700 (Refused: out of resources)``."""
    name = _NAMES.get(status)
    if name is None:
        name = {
            0xA700: "Refused: out of resources",
            0xA900: "Error: data set does not match SOP class",
            0xC000: "Error: cannot understand",
            0xB000: "Warning",
        }.get(status & 0xFF00 if (status & 0xF000) != 0xC000 else 0xC000, category(status).value)
    return f"0x{status:04X} ({name})"
