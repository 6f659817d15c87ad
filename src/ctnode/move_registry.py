"""Which C-MOVE an incoming C-STORE belongs to: an in-process correlation registry.

A move job that asks a PACS to send to ctnode registers itself for the duration of its C-MOVE
(``begin``/``end``) under a message ID unique among the moves running in this process. The PACS
sends each sub-operation as a C-STORE to our SCP, and a C-STORE that is part of a C-MOVE carries
the Move Originator AE Title (our calling AE towards the PACS) and Move Originator Message ID (the
C-MOVE's Message ID). The SCP calls ``note`` after each *successful* C-STORE; the registry hands
the instance to the matching move, whose operation collects it with ``drain`` and writes it as a
job item.

Matching, in order:

1. Move Originator Message ID equals an active move's ID, and the Move Originator AE Title is the
   calling AE that move used (the standard case);
2. the Message ID matches and the storing AE is the PACS the move was sent to (some SCPs, e.g.
   pynetdicom 3.0, put their own AE title in the originator field);
3. no Move Originator Message ID at all, and exactly one active move was sent to the storing AE.

Arrivals are tracked only in the process that ran the move: with several nodes on one database,
a move to ctnode runs on the node that submitted it (the job is pinned to it), and the PACS must
send to that node's address. Instances noted after the C-MOVE ended (late sub-operations of a
cancelled move) are stored as usual but not attributed to the job; the operation waits briefly
(``scu.move.ARRIVAL_GRACE``) after the final response for instances the PACS already counted.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

from ctnode.ul import dimse


@dataclass(frozen=True, slots=True)
class Arrival:
    """An instance that reached ctnode as a sub-operation of a move."""

    sop_class_uid: str
    sop_instance_uid: str
    #: What the store did with it: stored | duplicate | quarantined | overwritten.
    outcome: str


class MoveTracker:
    """One running C-MOVE towards ctnode: its message ID and the arrivals seen so far."""

    def __init__(self, job_id: int, message_id: int, calling_ae: str, peer_ae: str) -> None:
        self.job_id = job_id
        self.message_id = message_id
        self.calling_ae = calling_ae
        self.peer_ae = peer_ae
        self._lock = threading.Lock()
        self._pending: list[Arrival] = []
        self.total = 0

    def add(self, arrival: Arrival) -> None:
        """Called from the SCP's thread."""
        with self._lock:
            self._pending.append(arrival)
            self.total += 1

    def drain(self) -> list[Arrival]:
        """Arrivals since the last drain (called from the operation's thread)."""
        with self._lock:
            out, self._pending = self._pending, []
        return out


class MoveRegistry:
    """Active moves of this process, keyed by message ID."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, MoveTracker] = {}
        # Start somewhere random so late sub-operations of a previous process's move are
        # unlikely to be attributed to a new one.
        self._next = random.Random(seed).randint(1, 65535)  # noqa: S311 - not security

    def begin(self, job_id: int, *, calling_ae: str, peer_ae: str) -> MoveTracker:
        """Register a move; its ``message_id`` must be the C-MOVE-RQ's Message ID."""
        with self._lock:
            if len(self._active) >= 65535:
                raise RuntimeError("no free C-MOVE message ID")
            while self._next in self._active:
                self._next = self._next % 65535 + 1
            tracker = MoveTracker(job_id, self._next, calling_ae, peer_ae)
            self._active[tracker.message_id] = tracker
            self._next = self._next % 65535 + 1
            return tracker

    def end(self, tracker: MoveTracker) -> None:
        """The move's final response arrived (or it failed): stop attributing to it."""
        with self._lock:
            if self._active.get(tracker.message_id) is tracker:
                del self._active[tracker.message_id]

    @property
    def active(self) -> int:
        """Number of moves registered now."""
        return len(self._active)

    def match(
        self, storing_ae: str, originator_ae: str | None, originator_id: int | None
    ) -> MoveTracker | None:
        """The move a C-STORE belongs to (see the module docstring), or None."""
        with self._lock:
            if originator_id is not None:
                tracker = self._active.get(originator_id)
                if tracker is None:
                    return None
                if originator_ae == tracker.calling_ae or storing_ae == tracker.peer_ae:
                    return tracker
                return None
            candidates = [t for t in self._active.values() if t.peer_ae == storing_ae]
            return candidates[0] if len(candidates) == 1 else None

    def owns(self, info: Any, cmd: dimse.Command) -> bool:
        """True if a C-STORE arriving on *info* belongs to one of this process's moves (the
        receive path asks before storing: routes skip retrieved instances by default)."""
        if not self._active:
            return False
        originator = cmd.get("MoveOriginatorMessageID")
        originator_ae = cmd.get("MoveOriginatorApplicationEntityTitle")
        return (
            self.match(
                str(getattr(info, "calling_ae", "")),
                originator_ae if isinstance(originator_ae, str) else None,
                originator if isinstance(originator, int) else None,
            )
            is not None
        )

    def note(self, info: Any, cmd: dimse.Command, outcome: str) -> None:
        """SCP hook: a C-STORE on association *info* was answered with success."""
        originator = cmd.get("MoveOriginatorMessageID")
        originator_ae = cmd.get("MoveOriginatorApplicationEntityTitle")
        tracker = self.match(
            str(getattr(info, "calling_ae", "")),
            originator_ae if isinstance(originator_ae, str) else None,
            originator if isinstance(originator, int) else None,
        )
        if tracker is None:
            return
        sop_class = cmd.get("AffectedSOPClassUID")
        sop_instance = cmd.get("AffectedSOPInstanceUID")
        if isinstance(sop_class, str) and isinstance(sop_instance, str):
            tracker.add(Arrival(sop_class, sop_instance, outcome))
