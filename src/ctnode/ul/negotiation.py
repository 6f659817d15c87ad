"""Association negotiation, both sides, as pure functions: A-ASSOCIATE-RQ in, answer out.

As acceptor (PS3.8 7.1.1 and 9.3.2-9.3.4): ``screen`` applies the ACSE checks (protocol version,
application context, called AE title: A-ASSOCIATE-RJ 1/2/2, 1/1/2, 1/1/7), then the
application's decision, then refuses a request without presentation contexts (1/1/1, PS3.8
9.3.2 requires one or more); ``agree`` decides every presentation context (PS3.8 9.3.3.2
results, via ``dicom.contexts.negotiate``) and SCP/SCU role (PS3.7 D.3.3.4), rejects a peer that
asked only for services it may not use (1/1/3), and builds the A-ASSOCIATE-AC.

As requestor: ``associate_rq`` builds the request (odd context IDs 1, 3, ..., PS3.8 9.3.2.2),
``outcome`` reads the peer's answer per proposed context (a context it left out counts as
rejected, result 2), ``describe_rejection`` words an A-ASSOCIATE-RJ for an administrator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ctnode.dicom.contexts import (
    STORAGE_COMMITMENT_PUSH,
    USER_REJECTION,
    ContextDecision,
    ProposedContext,
    Service,
    negotiate,
    negotiate_role,
    storage_classes,
)
from ctnode.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ctnode.ul import pdu as P

# -- acceptor ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    """A-ASSOCIATE-RJ parameters, with a reason for the log."""

    result: int
    source: int
    reason: int
    why: str


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept the association; *allowed* limits the services (None = all ctnode offers)."""

    allowed: frozenset[Service] | None
    peer: Any = None


@dataclass(slots=True)
class AcceptedContext:
    """A presentation context accepted on this association."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    service: Service | None
    #: The requestor took the SCP role for this SOP class (PS3.7 D.3.3.4): ctnode may send it
    #: requests here (C-STORE sub-operations of a C-GET).
    requestor_scp: bool = False


@dataclass(frozen=True, slots=True)
class Agreement:
    """The A-ASSOCIATE-AC to send and the contexts it accepts, by context ID."""

    ac: P.AssociateAC
    contexts: dict[int, AcceptedContext]


def screen(
    rq: P.AssociateRQ,
    our_ae_title: str,
    also_ae_titles: frozenset[str],
    decide: Callable[[P.AssociateRQ], Accept | Reject],
) -> Accept | Reject:
    """The ACSE checks, then *decide* (the application: who may associate, with which
    services), then the one rule that needs its acceptance: at least one presentation context.
    *decide* is only asked about a request that passed the ACSE checks."""
    if not rq.protocol_version & 1:
        return Reject(
            P.RJ_PERMANENT,
            P.RJ_SOURCE_ACSE,
            P.RJ_PROTOCOL_VERSION_NOT_SUPPORTED,
            f"protocol version 0x{rq.protocol_version:04X} not supported",
        )
    if rq.application_context != P.APPLICATION_CONTEXT:
        return Reject(
            P.RJ_PERMANENT,
            P.RJ_SOURCE_USER,
            P.RJ_APPLICATION_CONTEXT_NOT_SUPPORTED,
            f"application context {rq.application_context!r} not supported",
        )
    if rq.called_ae != our_ae_title and rq.called_ae not in also_ae_titles:
        return Reject(
            P.RJ_PERMANENT,
            P.RJ_SOURCE_USER,
            P.RJ_CALLED_AE_NOT_RECOGNIZED,
            f"called AE title {rq.called_ae!r} is not ours ({our_ae_title!r})",
        )
    decision = decide(rq)
    if isinstance(decision, Accept) and not rq.contexts:
        return Reject(
            P.RJ_PERMANENT,
            P.RJ_SOURCE_USER,
            P.RJ_NO_REASON,
            "A-ASSOCIATE-RQ proposes no presentation context (PS3.8 9.3.2 requires one or "
            "more): fix the calling device's configuration",
        )
    return decision


def agree(
    rq: P.AssociateRQ, allowed: frozenset[Service] | None, max_pdu_length: int
) -> Agreement | Reject:
    """The A-ASSOCIATE-AC for an accepted request, offering *max_pdu_length*; or, when every
    service the request asks for is one the peer may not use, A-ASSOCIATE-RJ 1/1/3."""
    decisions, roles = decide_contexts(rq, allowed)
    if allowed is not None and not any(d.accepted for d in decisions):
        asked = {d.service for d in decisions if d.service is not None}
        if asked and not (asked & allowed):
            return Reject(
                P.RJ_PERMANENT,
                P.RJ_SOURCE_USER,
                P.RJ_CALLING_AE_NOT_RECOGNIZED,
                "peer may not use " + ", ".join(sorted(s.value for s in asked)),
            )
    ac = P.AssociateAC(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        contexts=[
            P.PresentationContextAC(d.context_id, d.result, d.transfer_syntax) for d in decisions
        ],
        user=P.UserInformation(
            max_pdu_length=max_pdu_length,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            roles=roles,
        ),
    )
    scp_classes = {r.sop_class_uid for r in roles if r.scp_role}
    accepted = {
        d.context_id: AcceptedContext(
            d.context_id,
            d.abstract_syntax,
            d.transfer_syntax,
            d.service,
            d.abstract_syntax in scp_classes,
        )
        for d in decisions
        if d.accepted
    }
    return Agreement(ac, accepted)


def decide_contexts(
    rq: P.AssociateRQ, allowed: frozenset[Service] | None
) -> tuple[list[ContextDecision], list[P.RoleSelection]]:
    """Every proposed context's result, and the role selections to answer (PS3.7 D.3.3.4: one
    per SOP class, for the first accepted context of that class). An accepted context whose
    role proposal leaves us neither SCU nor SCP becomes a user rejection."""
    proposed = [
        ProposedContext(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts
    ]
    roles_in = {r.sop_class_uid: r for r in rq.user.roles}
    decisions = negotiate(
        proposed, allowed, {uid: (r.scu_role, r.scp_role) for uid, r in roles_in.items()}
    )
    roles_out: list[P.RoleSelection] = []
    answered: set[str] = set()
    final: list[ContextDecision] = []
    for decision in decisions:
        role = roles_in.get(decision.abstract_syntax)
        answer = decision
        if role is not None and decision.accepted:
            scu, scp = negotiate_role(decision.abstract_syntax, role.scu_role, role.scp_role)
            if allowed is not None and decision.abstract_syntax == STORAGE_COMMITMENT_PUSH:
                # SCU: it sends N-ACTION (``commit``); SCP: N-EVENT-REPORT (``commitment_report``).
                scu = scu and Service.COMMIT in allowed
                scp = scp and Service.COMMITMENT_REPORT in allowed
            elif allowed is not None and decision.abstract_syntax in storage_classes():
                # SCU: it sends C-STORE (``store``); SCP: it receives C-GET sub-operations.
                scu = scu and Service.STORE in allowed
                scp = scp and Service.GET in allowed
            if not scu and not scp:
                answer = ContextDecision(
                    decision.context_id,
                    decision.abstract_syntax,
                    USER_REJECTION,
                    decision.transfer_syntax,
                    decision.service,
                )
            elif decision.abstract_syntax not in answered:
                roles_out.append(P.RoleSelection(decision.abstract_syntax, scu, scp))
                answered.add(decision.abstract_syntax)
        final.append(answer)
    return final, roles_out


# -- requestor --------------------------------------------------------------------------

RJ_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


@dataclass(frozen=True, slots=True)
class ContextRequest:
    """A presentation context to propose."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(slots=True)
class Negotiated:
    """Outcome of negotiation for one proposed context."""

    context_id: int
    abstract_syntax: str
    proposed: tuple[str, ...]
    result: int
    transfer_syntax: str | None

    @property
    def accepted(self) -> bool:
        """True if the peer accepted the context."""
        return self.result == 0


def describe_rejection(result: int, source: int, reason: int) -> str:
    """``called AE title not recognised (permanent: result 1, source 1, reason 7)``."""
    text = RJ_REASONS.get((source, reason), "reason unknown")
    kind = "permanent" if result == 1 else "transient"
    return f"{text} ({kind}: result {result}, source {source}, reason {reason})"


def associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ContextRequest],
    max_pdu_length: int,
    roles: Sequence[P.RoleSelection],
) -> P.AssociateRQ:
    """The A-ASSOCIATE-RQ proposing *contexts* with context IDs 1, 3, 5, ... in order."""
    return P.AssociateRQ(
        called_ae=called_ae,
        calling_ae=calling_ae,
        contexts=[
            P.PresentationContextRQ(2 * i + 1, c.abstract_syntax, c.transfer_syntaxes)
            for i, c in enumerate(contexts)
        ],
        user=P.UserInformation(
            max_pdu_length=max_pdu_length,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            roles=list(roles),
        ),
    )


def outcome(rq: P.AssociateRQ, ac: P.AssociateAC) -> list[Negotiated]:
    """What became of each context *rq* proposed, in proposal order, according to *ac*."""
    answers = {c.context_id: c for c in ac.contexts}
    negotiated: list[Negotiated] = []
    for ctx in rq.contexts:
        answer = answers.get(ctx.context_id)
        result = answer.result if answer is not None else 2
        syntax = answer.transfer_syntax if answer is not None and result == 0 else None
        negotiated.append(
            Negotiated(ctx.context_id, ctx.abstract_syntax, ctx.transfer_syntaxes, result, syntax)
        )
    return negotiated
