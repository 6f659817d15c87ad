"""Presentation context negotiation and role selection (pure)."""

from __future__ import annotations

from ctnode.dicom.contexts import (
    CT_IMAGE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000_LOSSLESS,
    SCANNER_CLASSES,
    STORAGE_CLASSES,
    STORAGE_COMMITMENT_PUSH,
    VERIFICATION,
    ProposedContext,
    Service,
    negotiate,
    negotiate_role,
)


def test_the_six_scanner_classes_are_storage_classes() -> None:
    """CT, MR, GSPS, dose SR, RT structure set and PET are all accepted for storage."""
    assert set(SCANNER_CLASSES.values()) <= STORAGE_CLASSES
    assert len(STORAGE_CLASSES) > 100


def test_negotiation_results() -> None:
    """Each proposed context gets the right result code and transfer syntax."""
    decisions = negotiate(
        [
            ProposedContext(1, VERIFICATION, (IMPLICIT_VR_LE,)),
            ProposedContext(3, CT_IMAGE, (JPEG_2000_LOSSLESS, EXPLICIT_VR_LE)),
            ProposedContext(5, CT_IMAGE, (EXPLICIT_VR_BE,)),
            ProposedContext(7, "1.2.3.4.5", (IMPLICIT_VR_LE,)),
        ],
        None,
    )
    by_id = {d.context_id: d for d in decisions}
    assert by_id[1].result == 0 and by_id[1].service is Service.ECHO
    assert by_id[3].result == 0 and by_id[3].transfer_syntax == JPEG_2000_LOSSLESS
    assert by_id[5].result == 4  # transfer syntax not supported
    assert by_id[7].result == 3  # abstract syntax not supported


def test_services_outside_the_peer_accept_list_are_user_rejected() -> None:
    """A peer allowed only to echo gets its storage contexts rejected (result 1)."""
    decisions = negotiate(
        [
            ProposedContext(1, VERIFICATION, (IMPLICIT_VR_LE,)),
            ProposedContext(3, CT_IMAGE, (EXPLICIT_VR_LE,)),
        ],
        frozenset({Service.ECHO}),
    )
    assert [d.result for d in decisions] == [0, 1]


def test_commitment_roles_are_accepted_as_proposed() -> None:
    """A PACS proposing the SCP role for Storage Commitment (to send the report) gets it, and
    a scanner proposing the SCU role (to send the N-ACTION) too; the peer's ``accept`` list
    narrows them in ``ul.negotiation``."""
    assert negotiate_role(STORAGE_COMMITMENT_PUSH, False, True) == (False, True)
    assert negotiate_role(STORAGE_COMMITMENT_PUSH, True, True) == (True, True)
    assert negotiate_role(STORAGE_COMMITMENT_PUSH, True, False) == (True, False)


def test_commitment_context_service_follows_the_proposed_role() -> None:
    """Requestor as SCP sends reports (commitment_report); as SCU it sends N-ACTION (commit);
    without a role item the service the peer may use is chosen; a peer allowed neither gets
    the context rejected (result 1)."""
    ctx = [ProposedContext(1, STORAGE_COMMITMENT_PUSH, (IMPLICIT_VR_LE,))]
    both = frozenset({Service.COMMIT, Service.COMMITMENT_REPORT})
    scp = negotiate(ctx, both, {STORAGE_COMMITMENT_PUSH: (False, True)})[0]
    assert scp.result == 0 and scp.service is Service.COMMITMENT_REPORT
    scu = negotiate(ctx, both, {STORAGE_COMMITMENT_PUSH: (True, False)})[0]
    assert scu.result == 0 and scu.service is Service.COMMIT
    default = negotiate(ctx, frozenset({Service.COMMIT}))[0]
    assert default.result == 0 and default.service is Service.COMMIT
    reports = negotiate(ctx, frozenset({Service.COMMITMENT_REPORT}))[0]
    assert reports.result == 0 and reports.service is Service.COMMITMENT_REPORT
    refused = negotiate(ctx, frozenset({Service.COMMIT}), {STORAGE_COMMITMENT_PUSH: (False, True)})
    assert refused[0].result == 1
    assert negotiate(ctx, frozenset({Service.STORE}))[0].result == 1


def test_other_classes_keep_the_default_roles() -> None:
    """For storage, the requestor may be SCU, or SCP (it receives C-GET sub-operations; the
    peer's ``accept`` list narrows it); for the other classes ctnode never accepts being its
    SCU."""
    assert negotiate_role(CT_IMAGE, True, True) == (True, True)
    assert negotiate_role(VERIFICATION, True, True) == (True, False)
