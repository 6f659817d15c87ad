"""Differential tests of ctnode's PDU codec against pynetdicom's (PS3.8 section 9.3).

For every PDU type, generated valid values go both ways: encoded by pynetdicom and decoded by
ctnode, and encoded by ctnode and decoded by pynetdicom; the decoded values must be the ones
generated. Sub-items ctnode does not model (extended negotiation, user identity) must come
through as raw ``other`` sub-items while everything around them decodes as usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom import pdu as pn
from pynetdicom import pdu_items as pi

from ctnode.ul import pdu as P
from tests.conformance import strategies as S

# ------------------------------------------------------- pynetdicom builders


def _uid_sub_items(neg: S.Negotiation) -> list[pi.PDUItem]:
    """The user information sub-items of *neg* as pynetdicom items, in ``sub_item_order``."""
    info = neg.rq.user
    items: list[pi.PDUItem] = []
    max_length = pi.MaximumLengthSubItem()
    max_length.maximum_length_received = info.max_pdu_length
    items.append(max_length)
    class_uid = pi.ImplementationClassUIDSubItem()
    class_uid.implementation_class_uid = info.implementation_class_uid
    items.append(class_uid)
    if info.async_ops is not None:
        window = pi.AsynchronousOperationsWindowSubItem()
        window.maximum_number_operations_invoked = info.async_ops[0]
        window.maximum_number_operations_performed = info.async_ops[1]
        items.append(window)
    for role in info.roles:
        item = pi.SCP_SCU_RoleSelectionSubItem()
        item.sop_class_uid = role.sop_class_uid
        item.scu_role = role.scu_role
        item.scp_role = role.scp_role
        items.append(item)
    if info.implementation_version_name:
        version = pi.ImplementationVersionNameSubItem()
        version.implementation_version_name = info.implementation_version_name
        items.append(version)
    for value in neg.unmodelled:
        items.append(_unmodelled_item(value))
    return [items[i] for i in neg.sub_item_order]


def _unmodelled_item(value: S.Unmodelled) -> pi.PDUItem:
    if isinstance(value, S.ExtendedNegotiation):
        ext = pi.SOPClassExtendedNegotiationSubItem()
        ext.sop_class_uid = value.sop_class_uid
        ext.service_class_application_information = value.application_information
        return ext
    if isinstance(value, S.CommonExtendedNegotiation):
        common = pi.SOPClassCommonExtendedNegotiationSubItem()
        common.sop_class_uid = value.sop_class_uid
        common.service_class_uid = value.service_class_uid
        common.related_general_sop_class_identification = list(value.related_general)
        return common
    if isinstance(value, S.UserIdentityRQ):
        identity = pi.UserIdentitySubItemRQ()
        identity.user_identity_type = value.identity_type
        identity.positive_response_requested = int(value.positive_response_requested)
        identity.primary_field = value.primary
        identity.secondary_field = value.secondary
        return identity
    response = pi.UserIdentitySubItemAC()
    response.server_response = value.server_response
    return response


def _pynetdicom_negotiation(neg: S.Negotiation) -> bytes:
    """Encode *neg* with pynetdicom's A_ASSOCIATE_RQ / A_ASSOCIATE_AC."""
    rq = neg.rq
    app = pi.ApplicationContextItem()
    app.application_context_name = rq.application_context
    user = pi.UserInformationItem()
    user.user_data = _uid_sub_items(neg)  # type: ignore[assignment]
    contexts: list[pi.PDUItem] = []
    pdu: pn.A_ASSOCIATE_RQ | pn.A_ASSOCIATE_AC
    if isinstance(rq, P.AssociateRQ):
        pdu = pn.A_ASSOCIATE_RQ()
        pdu.called_ae_title = rq.called_ae
        pdu.calling_ae_title = rq.calling_ae
        for ctx in rq.contexts:
            item = pi.PresentationContextItemRQ()
            item.presentation_context_id = ctx.context_id
            abstract = pi.AbstractSyntaxSubItem()
            abstract.abstract_syntax_name = ctx.abstract_syntax
            subs: list[pi.PDUItem] = [abstract]
            for uid in ctx.transfer_syntaxes:
                syntax = pi.TransferSyntaxSubItem()
                syntax.transfer_syntax_name = uid
                subs.append(syntax)
            item.abstract_transfer_syntax_sub_items = subs  # type: ignore[assignment]
            contexts.append(item)
    else:
        pdu = pn.A_ASSOCIATE_AC()
        pdu.reserved_aet = rq.called_ae
        pdu.reserved_aec = rq.calling_ae
        for ctx_ac in rq.contexts:
            item_ac = pi.PresentationContextItemAC()
            item_ac.presentation_context_id = ctx_ac.context_id
            item_ac.result_reason = ctx_ac.result
            if ctx_ac.transfer_syntax:
                syntax = pi.TransferSyntaxSubItem()
                syntax.transfer_syntax_name = ctx_ac.transfer_syntax
                item_ac.transfer_syntax_sub_item = [syntax]
            contexts.append(item_ac)
    pdu.protocol_version = rq.protocol_version
    pdu.variable_items = [app, *contexts, user]  # type: ignore[list-item]
    return pdu.encode()


def _expected_after_reorder(neg: S.Negotiation) -> P.AssociateRQ | P.AssociateAC:
    """What ctnode must decode from pynetdicom's bytes: the generated value, AE titles without
    their insignificant spaces, roles and raw sub-items in the order they were laid out."""
    info = neg.rq.user
    slots: list[object] = ["max", "uid"]
    if info.async_ops is not None:
        slots.append("async")
    slots += list(info.roles)
    if info.implementation_version_name:
        slots.append("version")
    slots += list(info.other)
    laid_out = [slots[i] for i in neg.sub_item_order]
    user = dataclasses.replace(
        info,
        roles=[s for s in laid_out if isinstance(s, P.RoleSelection)],
        other=[s for s in laid_out if isinstance(s, tuple)],
    )
    return dataclasses.replace(
        neg.rq, called_ae=neg.rq.called_ae.strip(), calling_ae=neg.rq.calling_ae.strip(), user=user
    )


def _in_ctnode_order(neg: S.Negotiation) -> S.Negotiation:
    """*neg* with its sub-items laid out as ctnode lays them out (PS3.8 9.3.2.3 listing order),
    so the two encoders must produce the same bytes."""
    return dataclasses.replace(neg, sub_item_order=sorted(neg.sub_item_order))


def _body(encoded: bytes, pdu_type: int) -> bytes:
    """The body of one encoded PDU, after checking its header (PS3.8 9.3.1)."""
    assert P.parse_header(encoded[:6]) == (pdu_type, len(encoded) - 6)
    return encoded[6:]


# -------------------------------------------------- pynetdicom-side checks


def _check_user_information(
    user: pi.UserInformationItem | None, info: P.UserInformation, unmodelled: Sequence[S.Unmodelled]
) -> None:
    assert user is not None
    assert user.maximum_length == info.max_pdu_length
    assert user.implementation_class_uid == info.implementation_class_uid
    assert user.implementation_version_name == (info.implementation_version_name or None)
    window = user.async_ops_window
    if info.async_ops is None:
        assert window is None
    else:
        assert window is not None
        assert (
            window.maximum_number_operations_invoked,
            window.maximum_number_operations_performed,
        ) == info.async_ops
    roles = [i for i in user.user_data if isinstance(i, pi.SCP_SCU_RoleSelectionSubItem)]
    assert [(r.sop_class_uid, bool(r.scu_role), bool(r.scp_role)) for r in roles] == [
        (r.sop_class_uid, r.scu_role, r.scp_role) for r in info.roles
    ]
    assert [(e.sop_class_uid, e.service_class_application_information) for e in user.ext_neg] == [
        (u.sop_class_uid, u.application_information)
        for u in unmodelled
        if isinstance(u, S.ExtendedNegotiation)
    ]
    assert [
        (c.sop_class_uid, c.service_class_uid, tuple(c.related_general_sop_class_identification))
        for c in user.common_ext_neg
    ] == [
        (u.sop_class_uid, u.service_class_uid, u.related_general)
        for u in unmodelled
        if isinstance(u, S.CommonExtendedNegotiation)
    ]
    identity = user.user_identity
    wanted = [u for u in unmodelled if isinstance(u, S.UserIdentityRQ | S.UserIdentityAC)]
    if not wanted:
        assert identity is None
    elif isinstance(wanted[0], S.UserIdentityRQ):
        assert isinstance(identity, pi.UserIdentitySubItemRQ)
        assert (
            identity.user_identity_type,
            bool(identity.positive_response_requested),
            identity.primary_field,
            identity.secondary_field or b"",
        ) == (
            wanted[0].identity_type,
            wanted[0].positive_response_requested,
            wanted[0].primary,
            wanted[0].secondary,
        )
    else:
        assert isinstance(identity, pi.UserIdentitySubItemAC)
        assert identity.server_response == wanted[0].server_response


# ------------------------------------------------------------ A-ASSOCIATE-RQ


@pytest.mark.slow
@S.budget(300)
@given(S.associate_rqs())
def test_associate_rq_pynetdicom_to_ctnode(neg: S.Negotiation) -> None:
    """An A-ASSOCIATE-RQ encoded by pynetdicom, with every user information sub-item in any
    order, decodes in ctnode to the generated values; the sub-items ctnode does not model
    (PS3.7 D.3.3.5-D.3.3.7) are kept raw, not refused (PS3.8 9.3.2, 9.3.2.3)."""
    body = _body(_pynetdicom_negotiation(neg), P.A_ASSOCIATE_RQ)
    assert P.decode_associate_rq(body) == _expected_after_reorder(neg)


@pytest.mark.slow
@S.budget(300)
@given(S.associate_rqs())
def test_associate_rq_ctnode_to_pynetdicom(neg: S.Negotiation) -> None:
    """An A-ASSOCIATE-RQ encoded by ctnode is byte for byte what pynetdicom encodes from the same
    values, and decodes in pynetdicom to the generated values, presentation contexts, roles and
    raw sub-items included (PS3.8 9.3.2)."""
    rq = neg.rq
    assert isinstance(rq, P.AssociateRQ)
    encoded = P.encode_associate_rq(rq)
    assert encoded == _pynetdicom_negotiation(_in_ctnode_order(neg))
    pdu = pn.A_ASSOCIATE_RQ()
    pdu.decode(encoded)
    assert pdu.protocol_version == rq.protocol_version
    assert (pdu.called_ae_title, pdu.calling_ae_title) == (
        rq.called_ae.strip(),
        rq.calling_ae.strip(),
    )
    assert pdu.application_context_name == rq.application_context
    assert [
        (c.context_id, c.abstract_syntax, tuple(c.transfer_syntax))
        for c in pdu.presentation_context
    ] == [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts]
    _check_user_information(pdu.user_information, rq.user, neg.unmodelled)


# ------------------------------------------------------------ A-ASSOCIATE-AC


@pytest.mark.slow
@S.budget(200)
@given(S.associate_acs())
def test_associate_ac_pynetdicom_to_ctnode(neg: S.Negotiation) -> None:
    """An A-ASSOCIATE-AC encoded by pynetdicom (results 0-4, every sub-item, any order) decodes
    in ctnode to the generated values (PS3.8 9.3.3, 9.3.3.2)."""
    body = _body(_pynetdicom_negotiation(neg), P.A_ASSOCIATE_AC)
    assert P.decode_associate_ac(body) == _expected_after_reorder(neg)


@pytest.mark.slow
@S.budget(200)
@given(S.associate_acs())
def test_associate_ac_ctnode_to_pynetdicom(neg: S.Negotiation) -> None:
    """An A-ASSOCIATE-AC encoded by ctnode is byte for byte pynetdicom's encoding of the same
    values, and decodes in pynetdicom to the generated values: the echoed AE titles, each
    context's result and transfer syntax, every sub-item (PS3.8 9.3.3)."""
    ac = neg.rq
    assert isinstance(ac, P.AssociateAC)
    encoded = P.encode_associate_ac(ac)
    if all(c.transfer_syntax for c in ac.contexts):  # "" means no sub-item for pynetdicom
        assert encoded == _pynetdicom_negotiation(_in_ctnode_order(neg))
    pdu = pn.A_ASSOCIATE_AC()
    pdu.decode(encoded)
    assert pdu.protocol_version == ac.protocol_version
    assert (pdu.reserved_aet, pdu.reserved_aec) == (ac.called_ae.strip(), ac.calling_ae.strip())
    assert pdu.application_context_name == ac.application_context
    assert [
        (c.context_id, c.result, c.transfer_syntax or "") for c in pdu.presentation_context
    ] == [(c.context_id, c.result, c.transfer_syntax) for c in ac.contexts]
    _check_user_information(pdu.user_information, ac.user, neg.unmodelled)


# ------------------------------------------------------------ A-ASSOCIATE-RJ


@S.budget(50)
@given(S.associate_rjs)
def test_associate_rj_both_ways(rj: tuple[int, int, int]) -> None:
    """A-ASSOCIATE-RJ: every (result, source, reason) of PS3.8 Table 9-21 encodes to the same
    bytes in both codecs and decodes to the same values in each (PS3.8 9.3.4)."""
    result, source, reason = rj
    theirs = pn.A_ASSOCIATE_RJ()
    theirs.result, theirs.source, theirs.reason_diagnostic = rj
    ours = P.encode_associate_rj(result, source, reason)
    assert ours == theirs.encode()
    assert P.decode_associate_rj(_body(theirs.encode(), P.A_ASSOCIATE_RJ)) == P.AssociateRJ(*rj)
    decoded = pn.A_ASSOCIATE_RJ()
    decoded.decode(ours)
    assert (decoded.result, decoded.source, decoded.reason_diagnostic) == rj


# ----------------------------------------------------------------- A-ABORT


@S.budget(30)
@given(S.aborts)
def test_abort_both_ways(abort: tuple[int, int]) -> None:
    """A-ABORT: each (source, reason) of PS3.8 Table 9-26 encodes to the same bytes in both
    codecs and decodes to the same values in each (PS3.8 9.3.8)."""
    theirs = pn.A_ABORT_RQ()
    theirs.source, theirs.reason_diagnostic = abort
    ours = P.encode_abort(*abort)
    assert ours == theirs.encode()
    assert P.decode_abort(_body(theirs.encode(), P.A_ABORT)) == P.Abort(*abort)
    decoded = pn.A_ABORT_RQ()
    decoded.decode(ours)
    assert (decoded.source, decoded.reason_diagnostic) == abort


# ------------------------------------------------------ A-RELEASE-RQ / RP


def test_release_rq_and_rp_both_ways() -> None:
    """A-RELEASE-RQ and A-RELEASE-RP (no variable fields) are byte-identical in both codecs and
    each decodes the other's (PS3.8 9.3.6, 9.3.7)."""
    for ours, theirs_cls, pdu_type in (
        (P.encode_release_rq(), pn.A_RELEASE_RQ, P.A_RELEASE_RQ),
        (P.encode_release_rp(), pn.A_RELEASE_RP, P.A_RELEASE_RP),
    ):
        theirs = theirs_cls().encode()
        assert ours == theirs
        assert _body(theirs, pdu_type) == bytes(4)
        decoded = theirs_cls()
        decoded.decode(ours)
        assert decoded.pdu_type == pdu_type and decoded.pdu_length == 4


# ---------------------------------------------------------------- P-DATA-TF


def _control(is_command: bool, is_last: bool) -> int:
    return (1 if is_command else 0) | (2 if is_last else 0)


@S.budget(200)
@given(st.lists(S.pdvs, min_size=1, max_size=6))
def test_pdata_pynetdicom_to_ctnode(pdvs: list[tuple[int, bool, bool, bytes]]) -> None:
    """A P-DATA-TF of one or more PDVs encoded by pynetdicom splits in ctnode into the same
    (context ID, message control header, data) triples (PS3.8 9.3.5, Annex E.2)."""
    pdu = pn.P_DATA_TF()
    items = []
    for context_id, is_command, is_last, data in pdvs:
        item = pi.PresentationDataValueItem()
        item.presentation_context_id = context_id
        item.presentation_data_value = bytes([_control(is_command, is_last)]) + data
        items.append(item)
    pdu.presentation_data_value_items = items
    body = _body(pdu.encode(), P.P_DATA_TF)
    assert [(c, h, bytes(d)) for c, h, d in P.iter_pdvs(memoryview(body))] == [
        (c, _control(cmd, last), data) for c, cmd, last, data in pdvs
    ]


@S.budget(200)
@given(S.pdvs)
def test_pdata_ctnode_to_pynetdicom(pdv: tuple[int, bool, bool, bytes]) -> None:
    """A one-PDV P-DATA-TF as ctnode sends it (``pdata_header`` + data) decodes in pynetdicom
    to the same context ID, message control header and data (PS3.8 9.3.5, Annex E.2)."""
    context_id, is_command, is_last, data = pdv
    pdu = pn.P_DATA_TF()
    pdu.decode(P.pdata_header(context_id, is_command, is_last, len(data)) + data)
    assert [
        (i.presentation_context_id, i.presentation_data_value)
        for i in pdu.presentation_data_value_items
    ] == [(context_id, bytes([_control(is_command, is_last)]) + data)]
