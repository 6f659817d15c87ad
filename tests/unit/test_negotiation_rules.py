"""Association negotiation rules (``ul.negotiation``), without sockets: A-ASSOCIATE-RQ in,
A-ASSOCIATE-AC or A-ASSOCIATE-RJ out, and the requestor's reading of the answer."""

from __future__ import annotations

import pytest

from ctnode.dicom.contexts import (
    CT_IMAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STORAGE_COMMITMENT_PUSH,
    VERIFICATION,
    Service,
)
from ctnode.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ctnode.ul import pdu as P
from ctnode.ul.negotiation import (
    Accept,
    Agreement,
    ContextRequest,
    Reject,
    agree,
    associate_rq,
    describe_rejection,
    outcome,
    screen,
)

UNKNOWN_CLASS = "1.2.3.4.5.6"


def _rq(
    *contexts: tuple[int, str, tuple[str, ...]],
    called_ae: str = "CTNODE",
    roles: tuple[P.RoleSelection, ...] = (),
    protocol_version: int = 1,
    application_context: str = P.APPLICATION_CONTEXT,
) -> P.AssociateRQ:
    return P.AssociateRQ(
        called_ae=called_ae,
        calling_ae="MODALITY",
        contexts=[P.PresentationContextRQ(*c) for c in contexts],
        protocol_version=protocol_version,
        application_context=application_context,
        user=P.UserInformation(max_pdu_length=16384, roles=list(roles)),
    )


def _accept_all(_rq: P.AssociateRQ) -> Accept | Reject:
    return Accept(allowed=None, peer="modality")


def _screen(rq: P.AssociateRQ) -> Accept | Reject:
    return screen(rq, "CTNODE", frozenset({"ALIAS"}), _accept_all)


def _agree(rq: P.AssociateRQ, allowed: frozenset[Service] | None = None) -> Agreement:
    answer = agree(rq, allowed, 262144)
    assert isinstance(answer, Agreement), answer
    return answer


ECHO = (1, VERIFICATION, (IMPLICIT_VR_LE,))


@pytest.mark.parametrize(
    ("version", "application_context", "called_ae", "expected"),
    [
        (2, P.APPLICATION_CONTEXT, "CTNODE", (1, 2, 2)),
        (1, "1.2.3", "CTNODE", (1, 1, 2)),
        (1, P.APPLICATION_CONTEXT, "SOMEONE", (1, 1, 7)),
    ],
    ids=["protocol-version", "application-context", "called-ae"],
)
def test_acse_checks_reject_before_the_application_is_asked(
    version: int, application_context: str, called_ae: str, expected: tuple[int, int, int]
) -> None:
    """PS3.8 9.3.4: a protocol version without bit 0 (1/2/2), a foreign application context
    (1/1/2) or a called AE title that is not ours (1/1/7) is rejected, and the application's
    decision is never asked for."""
    asked: list[P.AssociateRQ] = []

    def decide(rq: P.AssociateRQ) -> Accept | Reject:
        asked.append(rq)
        return Accept(None)

    rq = _rq(
        ECHO,
        called_ae=called_ae,
        protocol_version=version,
        application_context=application_context,
    )
    answer = screen(rq, "CTNODE", frozenset(), decide)
    assert isinstance(answer, Reject)
    assert (answer.result, answer.source, answer.reason) == expected
    assert not asked


def test_a_further_ae_title_is_ours_too() -> None:
    """A called AE title among the further titles (a peer's ``local_ae_title``) is accepted."""
    assert isinstance(_screen(_rq(ECHO, called_ae="ALIAS")), Accept)


def test_the_applications_rejection_is_returned_as_is() -> None:
    """The application's A-ASSOCIATE-RJ (e.g. an unknown calling AE title) is the answer."""
    no = Reject(1, 1, 3, "unknown caller")
    assert screen(_rq(ECHO), "CTNODE", frozenset(), lambda _rq: no) is no


def test_no_presentation_context_is_rejected_1_1_1() -> None:
    """PS3.8 9.3.2: an accepted request must propose one or more presentation contexts;
    without any it is rejected permanent, service user, no reason given."""
    answer = _screen(_rq())
    assert isinstance(answer, Reject)
    assert (answer.result, answer.source, answer.reason) == (1, 1, 1)


def test_contexts_are_decided_and_the_ac_carries_our_identity() -> None:
    """Each proposed context gets its PS3.8 9.3.3.2 result (0 accepted with the first syntax we
    take, 3 abstract syntax not supported, 4 no transfer syntax we take); the A-ASSOCIATE-AC
    offers our maximum PDU length and names ctnode's implementation."""
    rq = _rq(
        (1, CT_IMAGE, ("9.9.9", EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
        (3, UNKNOWN_CLASS, (IMPLICIT_VR_LE,)),
        (5, VERIFICATION, ("9.9.9",)),
    )
    answer = _agree(rq)
    results = [(c.context_id, c.result) for c in answer.ac.contexts]
    assert results == [(1, 0), (3, 3), (5, 4)]
    assert answer.ac.contexts[0].transfer_syntax == EXPLICIT_VR_LE
    assert set(answer.contexts) == {1}
    assert answer.contexts[1].service is Service.STORE
    user = answer.ac.user
    assert user.max_pdu_length == 262144
    assert user.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert user.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert (answer.ac.called_ae, answer.ac.calling_ae) == ("CTNODE", "MODALITY")


def test_a_service_the_peer_may_not_use_is_a_user_rejection() -> None:
    """A context for a service outside the peer's ``accept`` list is rejected (result 1) while
    the others are accepted."""
    rq = _rq(ECHO, (3, CT_IMAGE, (IMPLICIT_VR_LE,)))
    answer = _agree(rq, frozenset({Service.ECHO}))
    assert [(c.context_id, c.result) for c in answer.ac.contexts] == [(1, 0), (3, 1)]


def test_asking_only_for_forbidden_services_rejects_the_association() -> None:
    """A peer asking only for services it may not use is rejected 1/1/3, naming them."""
    answer = agree(_rq((1, CT_IMAGE, (IMPLICIT_VR_LE,))), frozenset({Service.ECHO}), 262144)
    assert isinstance(answer, Reject)
    assert (answer.result, answer.source, answer.reason) == (1, 1, 3)
    assert "store" in answer.why


def test_role_selection_answers_once_per_sop_class() -> None:
    """PS3.7 D.3.3.4: the requestor may be SCP of Storage Commitment (the N-EVENT-REPORT comes
    on its association) when it may send reports, SCU (it sends the N-ACTION) when it may ask
    for commitment; one role item answers each SOP class even with two contexts for it."""
    role = P.RoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
    rq = _rq(
        (1, STORAGE_COMMITMENT_PUSH, (IMPLICIT_VR_LE,)),
        (3, STORAGE_COMMITMENT_PUSH, (IMPLICIT_VR_LE,)),
        roles=(role,),
    )
    answer = _agree(rq, frozenset({Service.COMMITMENT_REPORT}))
    assert answer.ac.user.roles == [P.RoleSelection(STORAGE_COMMITMENT_PUSH, False, True)]
    assert set(answer.contexts) == {1, 3}
    both = _agree(rq, frozenset({Service.COMMITMENT_REPORT, Service.COMMIT}))
    assert both.ac.user.roles == [P.RoleSelection(STORAGE_COMMITMENT_PUSH, True, True)]
    scu = _agree(rq, frozenset({Service.COMMIT}))
    assert scu.ac.user.roles == [P.RoleSelection(STORAGE_COMMITMENT_PUSH, True, False)]


def test_a_role_proposal_leaving_no_role_rejects_the_context() -> None:
    """A requestor proposing only the SCP role for Verification leaves it neither SCU nor SCP
    (ctnode accepts it only as SCU there): the context becomes a user rejection (result 1)."""
    rq = _rq(ECHO, roles=(P.RoleSelection(VERIFICATION, scu_role=False, scp_role=True),))
    answer = _agree(rq)
    assert [(c.context_id, c.result) for c in answer.ac.contexts] == [(1, 1)]
    assert answer.contexts == {}
    assert answer.ac.user.roles == []


def test_the_requestor_proposes_odd_context_ids_in_order() -> None:
    """PS3.8 9.3.2.2: context IDs are odd; ctnode numbers its proposals 1, 3, 5, ..."""
    contexts = [ContextRequest(VERIFICATION, (IMPLICIT_VR_LE,))] * 3
    rq = associate_rq("CTNODE", "PACS", contexts, 65536, ())
    assert [c.context_id for c in rq.contexts] == [1, 3, 5]
    assert (rq.calling_ae, rq.called_ae, rq.user.max_pdu_length) == ("CTNODE", "PACS", 65536)
    assert rq.user.implementation_class_uid == IMPLEMENTATION_CLASS_UID


def test_a_context_left_out_of_the_answer_counts_as_rejected() -> None:
    """The outcome lists every proposed context in proposal order; one the A-ASSOCIATE-AC does
    not mention is rejected (result 2) with no transfer syntax, as is one the peer rejected."""
    rq = associate_rq(
        "CTNODE",
        "PACS",
        [ContextRequest(CT_IMAGE, (EXPLICIT_VR_LE,)), ContextRequest(VERIFICATION, ("1.2",))],
        65536,
        (),
    )
    ac = P.AssociateAC("PACS", "CTNODE", contexts=[P.PresentationContextAC(1, 0, EXPLICIT_VR_LE)])
    negotiated = outcome(rq, ac)
    assert [(n.context_id, n.result, n.transfer_syntax) for n in negotiated] == [
        (1, 0, EXPLICIT_VR_LE),
        (3, 2, None),
    ]
    assert [n.accepted for n in negotiated] == [True, False]


def test_describe_rejection_names_the_reason() -> None:
    """An A-ASSOCIATE-RJ is worded for an administrator, with its three numbers."""
    assert describe_rejection(1, 1, 7) == (
        "called AE title not recognised (permanent: result 1, source 1, reason 7)"
    )
    assert describe_rejection(2, 3, 9).startswith("reason unknown (transient")
