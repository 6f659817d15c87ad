"""What a C-MOVE's final response means for the move job (pure): the sub-operation counts,
the final response, and the outcome and message of a final status (``classify_move``):

* 0x0000 with no failed sub-operations → done;
* 0xB000 or 0xA702 (some or all sub-operations failed), or failed sub-operations → transient;
* 0xA801 (move destination unknown) → permanent, with what to configure on the PACS;
* 0xFE00 after our C-CANCEL because pending responses went on past ``timeouts.move_total`` →
  transient; after a stop → stopped; 0xA7xx → transient; other refusals (0xA900, 0xCxxx,
  0x0122, 0x0124) → permanent.

The messages name the PACS, the destination and this node (``MovePeer``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ctnode.config import NodeSettings
from ctnode.dicom import status as st
from ctnode.queue.attempt import Outcome
from ctnode.scu.move_request import MoveRequest
from ctnode.ul.dimse import Command


@dataclass(slots=True)
class Counts:
    """Sub-operation counts of a C-MOVE response."""

    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @classmethod
    def from_command(cls, cmd: Command) -> Counts:
        """The Number of … Suboperations elements (absent ones are 0)."""

        def get(keyword: str) -> int:
            value = cmd.get(keyword)
            return value if isinstance(value, int) else 0

        return cls(
            get("NumberOfRemainingSuboperations"),
            get("NumberOfCompletedSuboperations"),
            get("NumberOfFailedSuboperations"),
            get("NumberOfWarningSuboperations"),
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.remaining + other.remaining,
            self.completed + other.completed,
            self.failed + other.failed,
            self.warning + other.warning,
        )

    @property
    def total(self) -> int:
        """Sub-operations accounted for (remaining excluded)."""
        return self.completed + self.failed + self.warning


@dataclass(frozen=True, slots=True)
class MovePeer:
    """What the outcome messages need to name: the PACS, the destination, this node."""

    peer_name: str
    peer_ae: str
    destination: str
    to_self: bool
    node_ae: str
    node_host: str
    node_port: int
    move_total: float


@dataclass(slots=True)
class MoveFinal:
    """The final response of one C-MOVE."""

    status: int
    counts: Counts
    failed_uids: list[str] = field(default_factory=list)
    #: Why we sent C-CANCEL: "move_total", "stopped", or None.
    cancelled: str | None = None
    comment: str | None = None


def destination_unknown_message(p: MovePeer) -> str:
    """The 0xA801 message: what the PACS admin must configure."""
    lists = "(Orthanc: DicomModalities; dcmqrscp: HostTable)"
    head = f"PACS {p.peer_name!r} ({p.peer_ae}) does not know move destination {p.destination!r}"
    if p.to_self:
        return (
            f"{head}: add AE {p.node_ae}, host {p.node_host}, port {p.node_port} to the PACS's "
            f"list of DICOM nodes {lists}"
        )
    return (
        f"{head}: add {p.destination} with its host and port to the PACS's list of DICOM nodes "
        f"{lists}, or check the spelling of --dest"
    )


def classify_move(
    code: int, counts: Counts, *, cancelled: str | None, p: MovePeer, comment: str | None = None
) -> tuple[Outcome, str | None]:
    """What a C-MOVE's final status (and totals) mean for the job; message for failures."""
    detail = f": {comment}" if comment else ""
    if code == st.CANCEL:
        if cancelled == "stopped":
            return Outcome.STOPPED, None
        if cancelled == "move_total":
            return Outcome.TRANSIENT, (
                f"PACS {p.peer_name!r} was still sending pending responses after "
                f"timeouts.move_total ({p.move_total:g} s); the move was cancelled "
                f"({counts.completed} completed, {counts.failed} failed, {counts.remaining} "
                "remaining)"
            )
        return Outcome.TRANSIENT, f"PACS {p.peer_name!r} cancelled the move{detail}"
    if code == st.MOVE_DESTINATION_UNKNOWN:
        return Outcome.PERMANENT, destination_unknown_message(p)
    category = st.category(code)
    if category in (st.Category.SUCCESS, st.Category.WARNING):
        if counts.failed:
            return Outcome.TRANSIENT, (
                f"PACS {p.peer_name!r} reported {counts.failed} of {counts.total} "
                f"sub-operation(s) failed ({st.describe(code)}){detail}"
            )
        return Outcome.DONE, None
    if (code & 0xFF00) == 0xA700 or code in (0x0210, 0x0213):
        if counts.failed:  # 0xA702: every sub-operation failed
            return Outcome.TRANSIENT, (
                f"PACS {p.peer_name!r} reported {counts.failed} of {counts.total} "
                f"sub-operation(s) failed ({st.describe(code)}){detail}"
            )
        return Outcome.TRANSIENT, (
            f"PACS {p.peer_name!r} answered C-MOVE with {st.describe(code)}{detail}"
        )
    hint = ""
    if code == st.NOT_AUTHORIZED:
        hint = f" (allow C-MOVE from AE {p.node_ae} on the PACS)"
    elif code == st.SOP_CLASS_NOT_SUPPORTED:
        hint = " (the PACS does not offer Study Root retrieve)"
    return Outcome.PERMANENT, (
        f"PACS {p.peer_name!r} refused the C-MOVE with {st.describe(code)}{detail}{hint}"
    )


def node_host(node: NodeSettings) -> str:
    """The address a PACS should use for this node (the bind address, or the host name)."""
    if node.bind in ("0.0.0.0", "::", ""):  # noqa: S104 - not binding, naming
        return socket.gethostname()
    return node.bind


def nothing_matched_message(p: MovePeer, request: MoveRequest) -> str:
    """Success with 0 sub-operations on the first try: the PACS has nothing matching."""
    return (
        f"PACS {p.peer_name!r} has nothing matching {request.describe()} "
        "(0 sub-operations); check the UIDs with `ctnode query`"
    )


def arrival_mismatch_note(p: MovePeer, delivered: int, arrived: int) -> str:
    """The PACS counted *delivered* sub-operations completed but *arrived* instances arrived."""
    hint = (
        f"; check that the PACS sends AE {p.node_ae} to {p.node_host}:{p.node_port}"
        if arrived < delivered
        else ""
    )
    return (
        f"PACS {p.peer_name!r} reported {delivered} sub-operation(s) completed but "
        f"{arrived} instance(s) arrived at this node{hint}"
    )
