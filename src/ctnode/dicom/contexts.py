"""Which SOP classes and transfer syntaxes ctnode accepts and proposes (pure data + rules).

Kept as plain frozensets of UID strings built once at import: negotiation on every association
is set membership, never a copy of context objects.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
#: Query/Retrieve information models ctnode answers as SCP, by service.
QR_FIND_CLASSES = frozenset({STUDY_ROOT_FIND, PATIENT_ROOT_FIND})
QR_MOVE_CLASSES = frozenset({STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE})
QR_GET_CLASSES = frozenset({STUDY_ROOT_GET, PATIENT_ROOT_GET})

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
GRAYSCALE_SOFTCOPY_PS = "1.2.840.10008.5.1.4.1.1.11.1"
XRAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"

#: The six classes of the scanner's image-push flow (the CT user manual's list).
SCANNER_CLASSES: dict[str, str] = {
    "CT Image Storage": CT_IMAGE,
    "MR Image Storage": MR_IMAGE,
    "Grayscale Softcopy Presentation State Storage": GRAYSCALE_SOFTCOPY_PS,
    "X-Ray Radiation Dose SR Storage": XRAY_RADIATION_DOSE_SR,
    "RT Structure Set Storage": RT_STRUCTURE_SET,
    "Positron Emission Tomography Image Storage": PET_IMAGE,
}


@functools.cache
def storage_classes() -> frozenset[str]:
    """Every standard storage SOP class pynetdicom knows (CT, MR, PET, enhanced, SC, the SR
    family...) and the scanner's. Built on first use: importing pynetdicom takes a good part of
    a second, which short CLI commands that never negotiate should not pay."""
    from pynetdicom import sop_class as _sop

    return frozenset(_sop._STORAGE_CLASSES.values()) | frozenset(SCANNER_CLASSES.values())


def __getattr__(name: str) -> frozenset[str]:
    """``STORAGE_CLASSES``: ``storage_classes()``, built on first access."""
    if name == "STORAGE_CLASSES":
        return storage_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

UNCOMPRESSED_SYNTAXES: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
COMPRESSED_SYNTAXES: tuple[str, ...] = (
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    RLE_LOSSLESS,
)

#: Transfer syntaxes accepted for storage, in order of preference when a peer offers several in
#: one presentation context (we store what we receive, so prefer what the sender offered first
#: among these; explicit before implicit for the uncompressed ones).
STORAGE_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    DEFLATED_EXPLICIT_VR_LE,
    *COMPRESSED_SYNTAXES,
)
#: Syntaxes for Verification, Storage Commitment, Q/R (no pixel data).
BASIC_SYNTAXES: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


def is_explicit_vr(transfer_syntax: str) -> bool:
    """True for every supported syntax but Implicit VR Little Endian."""
    return transfer_syntax != IMPLICIT_VR_LE


def is_compressed(transfer_syntax: str) -> bool:
    """True for the encapsulated (compressed pixel data) syntaxes."""
    return transfer_syntax in COMPRESSED_SYNTAXES


class Service(StrEnum):
    """What a peer may ask of ctnode when it calls in (the peer file's ``accept`` list)."""

    ECHO = "echo"
    STORE = "store"
    #: Storage Commitment Push Model, peer as SCP: it sends us N-EVENT-REPORTs (reports).
    COMMITMENT_REPORT = "commitment_report"
    #: Storage Commitment Push Model, peer as SCU: it sends us N-ACTIONs (ctnode commits).
    COMMIT = "commit"
    #: Query/Retrieve C-FIND (Patient and Study Root) over the local store.
    FIND = "find"
    #: Query/Retrieve C-MOVE: instances sent to a configured peer on new associations.
    MOVE = "move"
    #: Query/Retrieve C-GET: instances sent back on the same association (the storage contexts
    #: the peer proposes with the SCP role belong to this service).
    GET = "get"


def service_for(abstract_syntax: str) -> Service | None:
    """The inbound service an abstract syntax belongs to, or None if ctnode does not offer it."""
    if abstract_syntax == VERIFICATION:
        return Service.ECHO
    if abstract_syntax in storage_classes():
        return Service.STORE
    if abstract_syntax == STORAGE_COMMITMENT_PUSH:
        return Service.COMMITMENT_REPORT
    if abstract_syntax in QR_FIND_CLASSES:
        return Service.FIND
    if abstract_syntax in QR_MOVE_CLASSES:
        return Service.MOVE
    if abstract_syntax in QR_GET_CLASSES:
        return Service.GET
    return None


def storage_service(role: tuple[bool, bool] | None, allowed: frozenset[Service] | None) -> Service:
    """What a storage context is for, from the requestor's proposed (SCU, SCP) role: with the
    SCP role it receives C-GET sub-operations (``get``) unless it may also store and proposed
    the SCU role too (then ``store``; ``ul.negotiation`` still grants the SCP role if it may
    ``get``)."""
    if role is None or not role[1]:
        return Service.STORE
    if role[0] and (allowed is None or Service.STORE in allowed):
        return Service.STORE
    return Service.GET


def syntaxes_for(service: Service) -> tuple[str, ...]:
    """Transfer syntaxes ctnode accepts for a service."""
    return STORAGE_SYNTAXES if service is Service.STORE else BASIC_SYNTAXES


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A presentation context as proposed by the association requestor."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContextDecision:
    """The acceptor's answer for one proposed context (PS3.8 9.3.3.2 result values)."""

    context_id: int
    abstract_syntax: str
    result: int  # 0 acceptance, 1 user rejection, 2 no reason, 3 abstract syntax, 4 transfer syntax
    transfer_syntax: str
    service: Service | None

    @property
    def accepted(self) -> bool:
        """True when the context was accepted."""
        return self.result == 0


ACCEPTANCE, USER_REJECTION, NO_REASON, ABSTRACT_SYNTAX_NOT_SUPPORTED, TS_NOT_SUPPORTED = range(5)


def commitment_service(
    role: tuple[bool, bool] | None, allowed: frozenset[Service] | None
) -> Service:
    """What a Storage Commitment Push Model context is for, from the requestor's proposed
    (SCU, SCP) role: as SCU it sends N-ACTION (``commit``), as SCP N-EVENT-REPORT
    (``commitment_report``). Without a role item (PS3.7 D.3.3.4: the default roles) either is
    possible — many PACS send reports so — and the one the peer may use is chosen
    (``commitment_report`` when it may use both: the handler still tells them apart by command)."""
    if role is not None:
        scu, scp = role
        if scp and not scu:
            return Service.COMMITMENT_REPORT
        if scu and not scp:
            return Service.COMMIT
    if (
        allowed is not None
        and Service.COMMITMENT_REPORT not in allowed
        and Service.COMMIT in allowed
    ):
        return Service.COMMIT
    return Service.COMMITMENT_REPORT


def negotiate(
    proposed: Iterable[ProposedContext],
    allowed: frozenset[Service] | None,
    roles: Mapping[str, tuple[bool, bool]] | None = None,
) -> list[ContextDecision]:
    """Decide every proposed context.

    *allowed* is what the calling peer may do (None = anything ctnode offers). A context for a
    service the peer may not use is rejected with result 1 (user rejection); an unknown abstract
    syntax with 3; no acceptable transfer syntax with 4. *roles* are the requestor's proposed
    (SCU, SCP) roles by SOP class: they say what a storage commitment context is for
    (``commitment_service``).
    """
    decisions: list[ContextDecision] = []
    for ctx in proposed:
        service = service_for(ctx.abstract_syntax)
        if service is Service.COMMITMENT_REPORT:
            service = commitment_service((roles or {}).get(ctx.abstract_syntax), allowed)
        elif service is Service.STORE:
            service = storage_service((roles or {}).get(ctx.abstract_syntax), allowed)
        if service is None:
            decisions.append(
                ContextDecision(
                    ctx.context_id,
                    ctx.abstract_syntax,
                    ABSTRACT_SYNTAX_NOT_SUPPORTED,
                    IMPLICIT_VR_LE,
                    None,
                )
            )
            continue
        if allowed is not None and service not in allowed:
            decisions.append(
                ContextDecision(
                    ctx.context_id, ctx.abstract_syntax, USER_REJECTION, IMPLICIT_VR_LE, service
                )
            )
            continue
        # A storage context under ``get`` carries C-STORE sub-operations: storage syntaxes.
        ours = (
            STORAGE_SYNTAXES
            if service is Service.GET and ctx.abstract_syntax in storage_classes()
            else syntaxes_for(service)
        )
        chosen = next((ts for ts in ctx.transfer_syntaxes if ts in ours), None)
        if chosen is None:
            decisions.append(
                ContextDecision(
                    ctx.context_id, ctx.abstract_syntax, TS_NOT_SUPPORTED, IMPLICIT_VR_LE, service
                )
            )
        else:
            decisions.append(
                ContextDecision(ctx.context_id, ctx.abstract_syntax, ACCEPTANCE, chosen, service)
            )
    return decisions


def negotiate_role(abstract_syntax: str, scu_role: bool, scp_role: bool) -> tuple[bool, bool]:
    """Answer an SCP/SCU role selection item (PS3.7 D.3.3.4).

    ctnode, as acceptor, accepts the requestor acting as SCU for everything it offers, and as
    SCP only for Storage Commitment Push Model: that is how a PACS sends the N-EVENT-REPORT on a
    new association (as SCU there, a scanner sends the N-ACTION; which of the two a peer may use
    is its ``accept`` list's business, see ``ul.negotiation.decide_contexts``). A role can only
    be accepted if the requestor proposed it. For a storage class the SCP role is accepted too: a
    C-GET requestor receives the sub-operations so (PS3.4 C.4.3.1); whether the peer may
    ``get`` is, again, ``decide_contexts``'s business.
    """
    if abstract_syntax == STORAGE_COMMITMENT_PUSH or abstract_syntax in storage_classes():
        return scu_role, scp_role
    return scu_role, False
