"""What an outbound association is opened with: the peer's address and AE titles, the
presentation contexts and SCP/SCU roles to propose (PS3.8 9.3.2, PS3.7 D.3.3.4), the maximum PDU
length to offer (PS3.8 D.1), TLS (PS3.15 B.1), the timers (PS3.8 9.1.5 ARTIM, and ctnode's own
DIMSE and network timeouts), the bound on a response's data set, and who to tell about it.

Values only: ``ul.requestor.Requestor`` reads them.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ctnode.ul import pdu as P
from ctnode.ul.limits import MAX_SMALL_DATASET
from ctnode.ul.negotiation import ContextRequest


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each phase of an outbound association."""

    connect: float = 10
    acse: float = 30
    dimse: float = 60
    network: float = 60


class AssociationObserver(Protocol):
    """Told when outbound associations open and end (metrics)."""

    def outbound_opened(self, peer: str) -> None:
        """An association to *peer* was established."""

    def outbound_ended(self, peer: str, result: str, *, was_open: bool) -> None:
        """An association to *peer* ended (or never opened) with *result*."""


@dataclass(slots=True)
class AssociationParams:
    """Everything needed to open an association."""

    host: str
    port: int
    calling_ae: str
    called_ae: str
    contexts: Sequence[ContextRequest]
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_pdu_length: int = 262144
    roles: Sequence[P.RoleSelection] = ()
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None
    #: Peer name for metrics (low cardinality), and who to tell.
    label: str = "unknown"
    observer: AssociationObserver | None = None
    #: Largest data set accepted in one message from the peer (``MAX_SMALL_DATASET``).
    max_response_dataset_bytes: int = MAX_SMALL_DATASET
